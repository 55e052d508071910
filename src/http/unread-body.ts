/**
 * Request bodies nobody will read: a refused request's, drained so the client reads the answer
 * and the keep-alive connection stays usable, within a bound.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'

/** How much of a refused request's body is read and thrown away to keep the connection usable. */
export const DISCARD_LIMIT = 16 * 1024 * 1024

/**
 * A request refused before its body was read (401, 403, 404, 413): a client that writes its
 * whole body before reading (git, hg, curl) must still get the answer, not a reset, and a
 * keep-alive connection must not be left in the middle of a body. So the body is read and
 * discarded up to DISCARD_LIMIT; one that is longer, or of unknown length, also gets
 * `Connection: close`, and past the limit the connection is cut.
 */
export function settleUnreadBody(req: FastifyRequest, reply: FastifyReply, limit = DISCARD_LIMIT): void {
  const raw = req.raw
  if (raw.complete || raw.readableFlowing !== null) return // read to the end, or someone reads it
  const declared = Number(raw.headers['content-length'] ?? 0)
  const chunked = raw.headers['transfer-encoding'] !== undefined
  if (!chunked && !(declared > 0)) return
  if (chunked || declared > limit) reply.header('connection', 'close')
  discardRest(raw, limit)
}

/** Reads and throws away what is left of a request body; past `limit` bytes, cuts the connection. */
export function discardRest(raw: FastifyRequest['raw'], limit: number): void {
  let seen = 0
  raw.on('data', (c: Buffer) => {
    seen += c.length
    if (seen > limit) raw.socket?.destroy()
  })
  raw.on('error', () => {})
  raw.resume()
}
