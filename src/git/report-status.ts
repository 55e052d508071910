/**
 * Rewrites git receive-pack's report-status so a ref refused by our update hook reaches the
 * client with our reason: git itself can only say `ng <ref> hook declined`
 * (Documentation/technical/pack-protocol.txt, "Report Status"; githooks(5), "update"). With
 * side-band-64k the report travels inside band-1 packets and may be split across them, so the
 * inner pkt-lines are reassembled before they are rewritten and re-framed.
 */
import { Transform, type TransformCallback } from 'node:stream'
import { pkt } from './pktline.js'

const MAX_BAND_PAYLOAD = 65515

/** `reasons(ref)` gives the reason to show for a declined ref, if we declined it. */
export class ReportRewriter extends Transform {
  private outer: Buffer = Buffer.alloc(0)
  private inner: Buffer = Buffer.alloc(0)
  private sideband: boolean | undefined
  private done = false

  constructor(private readonly reasonFor: (ref: string) => string | undefined) { super() }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.done) return cb(null, chunk)
    this.outer = this.outer.length ? Buffer.concat([this.outer, chunk]) : chunk
    const out: Buffer[] = []
    while (this.outer.length >= 4 && !this.done) {
      const len = parseInt(this.outer.subarray(0, 4).toString('latin1'), 16)
      if (Number.isNaN(len)) { this.done = true; break } // not pkt-lines: pass the rest as is
      const size = len < 4 ? 4 : len
      if (this.outer.length < size) break
      const packet = this.outer.subarray(0, size)
      this.outer = this.outer.subarray(size)
      if (len < 4) { out.push(packet); continue }
      this.sideband ??= packet[4]! <= 3
      if (!this.sideband) {
        out.push(this.rewrite(packet))
      } else if (packet[4] === 1) {
        out.push(...this.rewriteBand(packet.subarray(5)))
      } else {
        out.push(packet)
      }
    }
    if (this.done) { out.push(this.outer); this.outer = Buffer.alloc(0) }
    cb(null, Buffer.concat(out))
  }

  override _flush(cb: TransformCallback): void {
    const rest = [this.outer]
    if (this.inner.length) rest.unshift(this.frameBand(this.inner))
    cb(null, Buffer.concat(rest))
  }

  /** Reassembles band-1 bytes into inner pkt-lines and re-frames the rewritten ones. */
  private rewriteBand(payload: Buffer): Buffer[] {
    this.inner = this.inner.length ? Buffer.concat([this.inner, payload]) : payload
    const lines: Buffer[] = []
    while (this.inner.length >= 4) {
      const len = parseInt(this.inner.subarray(0, 4).toString('latin1'), 16)
      if (Number.isNaN(len)) break
      const size = len < 4 ? 4 : len
      if (this.inner.length < size) break
      lines.push(this.rewrite(this.inner.subarray(0, size)))
      this.inner = this.inner.subarray(size)
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
    const text = line.subarray(4).toString('utf8')
    const m = /^ng (\S+) hook declined\n?$/.exec(text)
    if (!m) return line
    const reason = this.reasonFor(m[1]!)
    return reason ? pkt(`ng ${m[1]} ${reason.replace(/[\r\n]+/g, ' ')}\n`) : line
  }
}
