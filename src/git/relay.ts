/**
 * The pack relay (pack-relay.c, built into dist/bin): a fetch's answer goes from git to the
 * client's socket without crossing the worker. The worker authenticates, authorizes, admits and
 * reads the request as for any fetch, then starts `pack-relay IDLE_MS HEAD -- git upload-pack …`
 * with the client's connection as its stdout (through the spawn helper: the connection's handle
 * passed over the IPC channel, the worker keeping its own copy). The relay writes HEAD when git's
 * first byte is there and splices the rest, following the pkt-lines, and reports on its fd 3.
 * Profiled on an 81 MB clone (issue #15 point 10): the copy through the worker's event loop
 * cost the server ~230 ms of CPU a clone, the relay ~60 ms over git writing to the socket itself.
 *
 * What the worker keeps, from the report and git's exit: a git that fails before its first byte
 * is still a one-line HTTP error (the relay wrote nothing; the worker answers on its copy); one
 * that fails between two packets is told inside the protocol (the worker writes the error packet
 * once the relay is gone); the access log's byte count. What it gives up: keep-alive on that
 * connection (the answer ends with it, `Connection: close`), which costs a fetch nothing, being
 * the last request of a clone.
 */
import type { Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Child } from '../process/child.js'
import { attach, inBandError } from './respond.js'

/** The relay binary, built by `npm run build` (scripts/build-native.sh). */
export const PACK_RELAY = fileURLToPath(new URL('../../bin/pack-relay', import.meta.url))

/** How long a relay may run on after its connection closed (see settleRelayed). */
const RELAY_CLOSE_GRACE_MS = 1000

/** What the relay tells once done (pack-relay.c). */
export interface RelayReport {
  /** bytes written after the head */
  sent: number
  /** the head went out: the connection carries this answer */
  head: boolean
  /** the answer stopped between two packets (an error packet can follow) */
  boundary: boolean
  sideband: boolean
  /** ended for no progress either way for the idle timeout */
  idle: boolean
  /** the client went away */
  gone: boolean
  /** why git could not be started (its errno), 0 when it was */
  execErrno: number
  /** the answer was whole and git succeeded: the relay ended the connection itself */
  closed: boolean
}

const REPORT = /^sent=(\d+) head=([01]) boundary=([01]) sideband=([01]) idle=([01]) gone=([01]) exec=(\d+) closed=([01])\n$/

/** The relay's report line, or undefined when there is none (the relay was killed, or crashed). */
export function parseReport(text: string): RelayReport | undefined {
  const m = REPORT.exec(text)
  if (!m) return undefined
  return { sent: Number(m[1]), head: m[2] === '1', boundary: m[3] === '1', sideband: m[4] === '1', idle: m[5] === '1', gone: m[6] === '1', execErrno: Number(m[7]), closed: m[8] === '1' }
}

/**
 * The status line and headers the relay writes: the reply's own headers, and `Connection:
 * close`, since the body ends with the connection. Undefined when a header cannot be passed
 * as it is (a line break in a value): the answer then goes through the worker as usual.
 */
export function relayHead(reply: FastifyReply): string | undefined {
  let head = `HTTP/1.1 200 OK\r\nDate: ${new Date().toUTCString()}\r\n`
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value === undefined || /^(connection|content-length|transfer-encoding|date)$/i.test(name)) continue
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      if (/[\r\n\0]/.test(name) || /[\r\n\0]/.test(v)) return undefined
      head += `${name}: ${v}\r\n`
    }
  }
  return `${head}Connection: close\r\n\r\n`
}

/**
 * The client's connection, when the relay can write to it: plain TCP (TLS is encrypted by this
 * process, so it must stay in the byte path) with nothing of ours still queued on it.
 */
export function relayableSocket(req: FastifyRequest): Socket | undefined {
  const socket = req.raw.socket
  if ((socket as { encrypted?: boolean }).encrypted || socket.destroyed || !socket.writable || socket.writableLength > 0) return undefined
  if (!(socket as unknown as { _handle?: { fd?: number } | null })._handle) return undefined
  return socket
}

/**
 * Waits for a relayed upload-pack and settles the answer: nothing went out, so the worker
 * answers (git's one-line error, or an empty 200); or the relay answered on the connection, which
 * the worker then ends (after an error packet, when git failed between two packets).
 */
export function finishRelayed(req: FastifyRequest, reply: FastifyReply, child: Child, socket: Socket, what: string, idleTimeoutMs: number): Promise<FastifyReply> {
  // The client may be done (the relay ended the connection) before the worker hears of git's
  // exit: the access line waits for the outcome.
  const done = settleRelayed(req, reply, child, socket, what, idleTimeoutMs)
  req.accessRecord.settled = done
  return done
}

async function settleRelayed(req: FastifyRequest, reply: FastifyReply, child: Child, socket: Socket, what: string, idleTimeoutMs: number): Promise<FastifyReply> {
  let report: RelayReport | undefined
  // The connection closing is no sign the client left early: the relay ends it itself after a
  // whole answer, and a client may hang up once it has read the final flush, both while the relay
  // and git are still exiting. A relay whose client did leave sees it at its next write; one
  // still running after the grace (git thinking, with nothing to write) is ended then.
  const judge = attach(req, reply, child, what, () => report?.sent ?? 0, () => report?.idle === true, RELAY_CLOSE_GRACE_MS)
  // the relay watches the connection's idleness itself; the worker sees none of its traffic
  socket.setTimeout(0)
  let text = ''
  child.report?.setEncoding('latin1').on('data', (s: string) => { if (text.length < 256) text += s })
  let status = await child.exited
  report = parseReport(text)
  // git itself could not be started: as a spawn that failed (a 503), not as a git that failed
  if (report?.execErrno) status = { code: null, signal: null, error: new Error(`cannot run git (errno ${report.execErrno})`) }
  if (report?.idle) req.log.info({ child_pid: child.pid, bytes_out: report.sent }, `${what}: no progress for ${idleTimeoutMs} ms, ended`)
  const err = judge(status)
  if (report && !report.head) {
    // nothing went out: the worker answers, and closes the connection after it (a spawn without
    // the helper stopped Node reading it: no next request would be seen)
    socket.setTimeout(idleTimeoutMs)
    reply.header('connection', 'close')
    if (err) throw err
    return reply.send(Buffer.alloc(0))
  }
  reply.hijack()
  const access = req.accessRecord
  access.handedOver = true
  access.completed = !err && report !== undefined && !report.gone && !report.idle
  if (!report || report.gone || report.idle || report.closed || (err && !report.boundary)) {
    // gone; cut inside a packet (only a cut is honest); or ended by the relay already
    socket.destroy()
    return reply
  }
  // The answer's end (after git's error, told inside the protocol), then the connection's. Once
  // our end is sent, the socket is closed without waiting for the client's: Node may not be
  // reading it (a spawn without the helper stops that), so it would never see the client's.
  if (err) socket.end(inBandError(err.message, report.sideband))
  else socket.end()
  socket.once('finish', () => socket.destroy())
  return reply
}
