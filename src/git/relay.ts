/**
 * The pack relay (pack-relay.c, src/process/relay.ts): a fetch's answer goes from git to the
 * client's socket without crossing the worker. The worker authenticates, authorizes, admits and
 * reads the request as for any fetch, then starts `pack-relay IDLE_MS HEAD -- git upload-pack …`
 * with the client's connection as its stdout (through the spawn helper: the connection's handle
 * passed over the IPC channel, the worker keeping its own copy). The relay writes HEAD when git's
 * first byte is there and splices the rest, following the pkt-lines, and reports on its fd 3.
 * Profiled on an 81 MB clone: the copy through the worker's event loop
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
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Child } from '../process/child.js'
import { relayOutcome, RELAY_CLOSE_GRACE_MS, type RelayReport } from '../process/relay.js'
import { attach, inBandError } from '../http/deliver.js'
import { answerInstead, awaitOutcome, relayDelivered } from '../http/deliver.js'

/**
 * Waits for a relayed upload-pack and settles the answer: nothing went out, so the worker
 * answers (git's one-line error, or an empty 200); or the relay answered on the connection, which
 * the worker then ends (after an error packet, when git failed between two packets).
 */
export function finishRelayed(req: FastifyRequest, reply: FastifyReply, child: Child, socket: Socket, what: string, idleTimeoutMs: number): Promise<FastifyReply> {
  // The client may be done (the relay ended the connection) before the worker hears of git's
  // exit: the access line waits for the outcome.
  const done = settleRelayed(req, reply, child, socket, what, idleTimeoutMs)
  awaitOutcome(req, done)
  return done
}

async function settleRelayed(req: FastifyRequest, reply: FastifyReply, child: Child, socket: Socket, what: string, idleTimeoutMs: number): Promise<FastifyReply> {
  let report: RelayReport | undefined
  const judge = attach(req, reply, child, what, () => report?.sent ?? 0, () => report?.idle === true, RELAY_CLOSE_GRACE_MS)
  // the relay watches the connection's idleness itself; the worker sees none of its traffic
  socket.setTimeout(0)
  const outcome = await relayOutcome(child)
  let status = outcome.status
  report = outcome.report
  // git itself could not be started: as a spawn that failed (a 503), not as a git that failed
  if (report?.execErrno) status = { code: null, signal: null, error: new Error(`cannot run git (errno ${report.execErrno})`) }
  if (report?.idle) req.log.info({ child_pid: child.pid, bytes_out: report.sent }, `${what}: no progress for ${idleTimeoutMs} ms, ended`)
  const err = judge(status)
  if (report && !report.head) {
    // nothing went out: the worker answers (git's one-line error, or an empty answer)
    answerInstead(reply, socket, idleTimeoutMs)
    if (err) throw err
    return reply.send(Buffer.alloc(0))
  }
  relayDelivered(req, reply, { bytes: report?.sent ?? 0, completed: !err && report !== undefined && !report.gone && !report.idle })
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
