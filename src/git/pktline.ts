/**
 * pkt-line framing (git's Documentation/technical/protocol-common.txt): four hex digits of
 * length including themselves, then the payload; `0000` flush, `0001` delim, `0002`
 * response-end. Payloads are at most 65516 bytes (LARGE_PACKET_MAX 65520 with the header).
 */
import { Transform, type TransformCallback } from 'node:stream'
import { BadRequestError } from '../errors.js'

export const FLUSH = Buffer.from('0000')
const MAX_PKT = 65520

/** Frames one pkt-line. */
export function pkt(data: string | Buffer): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data) : data
  if (body.length + 4 > MAX_PKT) throw new RangeError('pkt-line payload too long')
  return Buffer.concat([Buffer.from((body.length + 4).toString(16).padStart(4, '0')), body])
}

/** An `ERR` pkt-line: how upload-pack reports a fatal error inside the protocol. */
export function errPkt(message: string): Buffer {
  return pkt(`ERR ${message}\n`)
}

function hexLength(buf: Buffer, at: number): number {
  let n = 0
  for (let i = at; i < at + 4; i++) {
    const c = buf[i]!
    const v = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1
    if (v < 0) return -1
    n = n * 16 + v
  }
  return n
}

/** Bytes that are not pkt-line framing. */
export class PktFramingError extends Error {
  override name = 'PktFramingError'
}

/**
 * One packet as the decoder saw it: `len` is the header's value (0 flush, 1 delim, 2
 * response-end, else the packet's length with its header); `packet` the whole packet with its
 * header, when the decoder assembles packets; `first` the first payload byte, when it is known.
 */
export interface Packet {
  len: number
  packet?: Buffer
  first?: number
}

/**
 * The one pkt-line decoder: bytes go in as they arrive, packets come out in order. It either
 * assembles whole packets (`whole`: for reading their payloads; at most 65520 bytes each are
 * held) or only follows the framing, skipping payloads without copying them (for watching a
 * pack stream go by). A bad header is a PktFramingError.
 */
export class PktDecoder {
  private pending: Buffer = Buffer.alloc(0)
  /** payload bytes still to skip (framing-only mode) */
  private skip = 0
  constructor(private readonly whole: boolean) {}

  /** True when the bytes fed so far end inside a packet. */
  get midPacket(): boolean {
    return this.pending.length > 0 || this.skip > 0
  }

  /** Takes back the bytes held but not yet given out as packets (after a consumer stopped reading). */
  takeRest(): Buffer {
    const rest = this.pending
    this.pending = Buffer.alloc(0)
    return rest
  }

  /** Feeds `chunk`, calling `onPacket` for each packet completed; it returns true to stop decoding (the rest stays held). */
  feed(chunk: Buffer, onPacket: (p: Packet) => boolean | void): void {
    const buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk
    let at = 0
    let stopped = false
    while (!stopped) {
      if (this.skip > 0) {
        const take = Math.min(this.skip, buf.length - at)
        this.skip -= take
        at += take
        if (this.skip > 0) break
        continue
      }
      if (buf.length - at < 4) break
      const len = hexLength(buf, at)
      if (len < 0 || len === 3 || len > MAX_PKT) {
        this.pending = Buffer.from(buf.subarray(at)) // held from the bad header on, for takeRest()
        throw new PktFramingError(len < 0 ? 'bad pkt-line: length is not hexadecimal' : `bad pkt-line length ${len}`)
      }
      const size = Math.max(len, 4)
      if (this.whole) {
        if (buf.length - at < size) break // wait for the whole packet
        stopped = onPacket({ len, packet: buf.subarray(at, at + size), first: len > 4 ? buf[at + 4] : undefined }) === true
        at += size
      } else {
        stopped = onPacket({ len, first: len > 4 && at + 4 < buf.length ? buf[at + 4] : undefined }) === true
        at += 4
        this.skip = size - 4
      }
    }
    this.pending = at < buf.length ? Buffer.from(buf.subarray(at)) : Buffer.alloc(0)
  }
}

/** Splits a whole buffer of pkt-lines into its packets (each with its length header); throws on bad framing. */
export function splitPackets(buf: Buffer): Buffer[] {
  const out: Buffer[] = []
  const decoder = new PktDecoder(true)
  decoder.feed(buf, (p) => { out.push(p.packet!) })
  if (decoder.midPacket) throw new PktFramingError('truncated pkt-line')
  return out
}

export interface PktCheckOptions {
  /** 'all': the whole body is pkt-lines (upload-pack); 'commands': only up to the first flush (receive-pack, then the pack follows) */
  mode: 'all' | 'commands'
  /** called with each payload of the checked section (bounded by the caller's body limit); an Error it returns fails the stream */
  onPacket?: (payload: Buffer) => Error | undefined
}

/**
 * A pass-through that checks pkt-line framing as the bytes go by and fails the stream with a
 * 400 on the first malformed or truncated packet, so git is never fed garbage and the client
 * gets a one-line reason instead of a broken pipe.
 */
export class PktLineChecker extends Transform {
  private readonly decoder: PktDecoder
  private checking = true
  private sawPacket = false
  private onlyFlush = true
  constructor(private readonly opts: PktCheckOptions) {
    super()
    this.decoder = new PktDecoder(opts.onPacket !== undefined)
  }

  /** True when the body was nothing but one flush packet: git's probe before a chunked POST. */
  get isFlushProbe(): boolean {
    return this.sawPacket && this.onlyFlush
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.checking) {
      const err = this.scan(chunk)
      if (err) return cb(err)
    }
    cb(null, chunk)
  }

  override _flush(cb: TransformCallback): void {
    if (this.checking && this.decoder.midPacket) return cb(new BadRequestError('truncated pkt-line in request body'))
    if (this.opts.mode === 'commands' && this.checking && this.sawPacket) return cb(new BadRequestError('request body ends before the flush packet of its command list'))
    if (!this.sawPacket) return cb(new BadRequestError('empty request body'))
    cb()
  }

  private scan(chunk: Buffer): Error | undefined {
    let refused: Error | undefined
    try {
      this.decoder.feed(chunk, ({ len, packet }) => {
        this.sawPacket = true
        if (len <= 2) {
          if (len === 0 && this.opts.mode === 'commands') this.checking = false // the pack follows
          return !this.checking
        }
        this.onlyFlush = false
        refused = packet && this.opts.onPacket?.(packet.subarray(4))
        return refused !== undefined
      })
    } catch (err) {
      return new BadRequestError((err as Error).message)
    }
    if (!this.checking) this.decoder.takeRest()
    return refused
  }
}
