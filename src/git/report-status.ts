/**
 * Rewrites git receive-pack's report-status so a ref refused by our update hook reaches the
 * client with our reason: git itself can only say `ng <ref> hook declined`
 * (Documentation/technical/pack-protocol.txt, "Report Status"; githooks(5), "update"). With
 * side-band-64k the report travels inside band-1 packets and may be split across them, so the
 * inner pkt-lines are reassembled before they are rewritten and re-framed.
 */
import { Transform, type TransformCallback } from 'node:stream'
import { pkt, PktDecoder, PktFramingError } from './pktline.js'

const MAX_BAND_PAYLOAD = 65515

/** `reasons(ref)` gives the reason to show for a declined ref, if we declined it. */
export class ReportRewriter extends Transform {
  private readonly outer = new PktDecoder(true)
  private readonly inner = new PktDecoder(true)
  private sideband: boolean | undefined
  private done = false

  /** `onStatus(ref, result)` hears every ref's verdict (`ok` or the reason), and the unpack status as ref '' when it is not ok. */
  constructor(private readonly reasonFor: (ref: string) => string | undefined, private readonly onStatus?: (ref: string, result: string) => void) { super() }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.done) return cb(null, chunk)
    const out: Buffer[] = []
    try {
      this.outer.feed(chunk, ({ len, packet, first }) => {
        if (len < 4) return void out.push(packet!)
        this.sideband ??= first! <= 3
        if (!this.sideband) out.push(this.rewrite(packet!))
        else if (first === 1) out.push(...this.rewriteBand(packet!.subarray(5)))
        else out.push(packet!)
      })
    } catch (err) {
      if (!(err instanceof PktFramingError)) throw err
      this.done = true // not pkt-lines: the rest passes as it is
      out.push(this.outer.takeRest())
    }
    cb(null, Buffer.concat(out))
  }

  override _flush(cb: TransformCallback): void {
    const rest = [this.outer.takeRest()]
    const inner = this.inner.takeRest()
    if (inner.length) rest.unshift(this.frameBand(inner))
    cb(null, Buffer.concat(rest))
  }

  /** Reassembles band-1 bytes into inner pkt-lines and re-frames the rewritten ones. */
  private rewriteBand(payload: Buffer): Buffer[] {
    const lines: Buffer[] = []
    try {
      this.inner.feed(payload, ({ packet }) => { lines.push(this.rewrite(packet!)) })
    } catch (err) {
      if (!(err instanceof PktFramingError)) throw err
      lines.push(this.inner.takeRest()) // not pkt-lines inside the band: passed on as they are
    }
    if (!lines.length) return []
    return [this.frameBand(Buffer.concat(lines))]
  }

  private frameBand(data: Buffer): Buffer {
    const parts: Buffer[] = []
    for (let i = 0; i < data.length; i += MAX_BAND_PAYLOAD) {
      parts.push(pkt(Buffer.concat([Buffer.from([1]), data.subarray(i, i + MAX_BAND_PAYLOAD)])))
    }
    return Buffer.concat(parts)
  }

  /** `ng <ref> hook declined` → `ng <ref> <our reason>`; any other line unchanged. */
  private rewrite(line: Buffer): Buffer {
    if (line.length <= 4) return line
    const text = line.subarray(4).toString('utf8')
    const status = /^(ok|ng) (\S+)(?: (.*))?\n?$/.exec(text)
    const unpack = /^unpack (.*)\n?$/.exec(text)
    if (unpack && unpack[1] !== 'ok') this.onStatus?.('', unpack[1]!)
    if (!status) return line
    const declined = status[1] === 'ng' && status[3] === 'hook declined'
    const reason = declined ? this.reasonFor(status[2]!) : undefined
    this.onStatus?.(status[2]!, status[1] === 'ok' ? 'ok' : reason ?? status[3] ?? 'refused')
    return reason ? pkt(`ng ${status[2]} ${reason.replace(/[\r\n]+/g, ' ')}\n`) : line
  }
}
