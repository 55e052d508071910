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

/** Splits a whole buffer of pkt-lines into its packets (each with its length header); throws on bad framing. */
export function splitPackets(buf: Buffer): Buffer[] {
  const out: Buffer[] = []
  let at = 0
  while (at < buf.length) {
    const len = buf.length - at >= 4 ? hexLength(buf, at) : -1
    if (len < 0 || (len > 2 && len < 4) || at + Math.max(len, 4) > buf.length) throw new Error('malformed pkt-line framing')
    const end = at + Math.max(len, 4)
    out.push(buf.subarray(at, end))
    at = end
  }
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
  private pending: Buffer = Buffer.alloc(0)
  private checking = true
  /** payload bytes still to skip in the current packet */
  private skip = 0
  private sawPacket = false
  private onlyFlush = true
  constructor(private readonly opts: PktCheckOptions) {
    super()
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
    if (this.checking && (this.pending.length > 0 || this.skip > 0)) return cb(new BadRequestError('truncated pkt-line in request body'))
    if (this.opts.mode === 'commands' && this.checking && this.sawPacket) return cb(new BadRequestError('request body ends before the flush packet of its command list'))
    if (!this.sawPacket) return cb(new BadRequestError('empty request body'))
    cb()
  }

  private scan(chunk: Buffer): Error | undefined {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk
    let at = 0
    while (this.checking) {
      if (this.skip > 0) {
        const take = Math.min(this.skip, buf.length - at)
        this.skip -= take
        at += take
        if (this.skip > 0) break
        continue
      }
      if (buf.length - at < 4) break
      const len = hexLength(buf, at)
      if (len < 0) return new BadRequestError('bad pkt-line: length is not hexadecimal')
      this.sawPacket = true
      if (len <= 2) {
        at += 4
        if (len === 0 && this.opts.mode === 'commands') this.checking = false
        continue
      }
      if (len < 4 || len > MAX_PKT) return new BadRequestError(`bad pkt-line length ${len}`)
      this.onlyFlush = false
      if (this.opts.onPacket) {
        if (buf.length - at < len) break // wait for the whole packet
        const refused = this.opts.onPacket(buf.subarray(at + 4, at + len))
        if (refused) return refused
        at += len
      } else {
        at += 4
        this.skip = len - 4
      }
    }
    buf = buf.subarray(at)
    this.pending = this.checking ? Buffer.from(buf) : Buffer.alloc(0)
    return undefined
  }
}
