/**
 * How an answer leaves the worker, when it is not fastify's own `reply.send`. Handlers say what
 * to send; the ways out below say how it leaves, and only they take a reply over from fastify
 * (`reply.hijack()`) or write the access record's delivery fields (bytes out, whether it went
 * out whole, whether another process wrote it).
 *
 * The ways out, and who chooses each:
 * - a stream (git's stdout through stream stages, an hg child's answer, a kept answer): fastify's
 *   `reply.send(stream)`, which defers the status line to the first byte (git/respond.ts
 *   `streamChild`);
 * - pooled chunks (upload-pack's stdout, a file's bytes) written straight to the socket, each
 *   buffer given back once written: `startChunks` here, at the first chunk (git/respond.ts
 *   `sendChildChunks`, http/send-file.ts);
 * - a relay that writes the head and the body on the client's connection itself (the pack relay
 *   for a fetch, the file relay for a download): `relayDelivered` once its report is in, or
 *   `answerInstead` when it wrote nothing (git/relay.ts, http/send-file.ts);
 * - the connection handed to an hg child, which answers on it: `handedOff` (hg/routes.ts).
 * git/routes.ts chooses among the first three for upload-pack (`git.serve`'s delivery option);
 * send-file.ts between chunks and the file relay; hg/routes.ts between a stream and the handoff.
 *
 * The contract every way keeps: nothing goes out before the first byte of the answer (a child
 * that fails first is still a one-line HTTP error); after it, a failure is told inside the
 * protocol at a packet boundary, else the answer is cut; a child outliving its client is ended
 * (at once, or after a close grace for relays); the access line is written once, when the
 * outcome is known.
 */
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyReply, FastifyRequest } from 'fastify'

/** What another process (a relay, an hg child) reported of an answer it wrote on the connection. */
export interface Delivered {
  /** the status it answered with, when the worker did not write the status line (an hg child) */
  status?: number
  /** body bytes it wrote */
  bytes: number
  /** the answer went out whole */
  completed: boolean
}

/**
 * Takes the reply over from fastify and writes its status line and headers now: the body follows
 * from the caller (pooled chunks). Undefined when the connection is closed already (nothing can
 * go out, and no 'close' will come to end the answer).
 */
export function startChunks(reply: FastifyReply): ServerResponse | undefined {
  reply.hijack()
  const res = reply.raw
  if (res.closed || res.destroyed) return undefined
  for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v)
  res.writeHead(reply.statusCode)
  return res
}

/** The body bytes the worker wrote itself (a chunked or streamed answer), for the access line. */
export function countOut(req: FastifyRequest, bytes: number): void {
  req.accessRecord.bytesOut = bytes
}

/** Adds to the body bytes of an answer streamed through the worker (counted per chunk). */
export function addOut(req: FastifyRequest, bytes: number): number {
  return (req.accessRecord.bytesOut += bytes)
}

/** The client left before the answer was whole. */
export function markAborted(req: FastifyRequest): void {
  req.accessRecord.aborted = true
}

/**
 * The access line waits for `outcome`: the answer is written by another process, whose result
 * the worker learns a moment after the connection closes (a relay's report, an hg child's
 * done message). Set before the connection can close.
 */
export function awaitOutcome(req: FastifyRequest, outcome: Promise<unknown>): void {
  req.accessRecord.settled = outcome
}

/** A relay answered on the connection (its head went out): the reply is the relay's, the record its report's. */
export function relayDelivered(req: FastifyRequest, reply: FastifyReply, d: Delivered): void {
  reply.hijack()
  record(req, reply, d)
}

/**
 * A relay wrote nothing (its process could not start, git failed before its first byte, the file
 * was replaced): the worker answers on its own copy of the connection, which closes after it
 * (a spawn without the helper stopped Node reading it, so no next request would be seen).
 */
export function answerInstead(reply: FastifyReply, socket: Socket, idleTimeoutMs: number): void {
  socket.setTimeout(idleTimeoutMs)
  reply.header('connection', 'close')
}

/**
 * The connection handed to another process that answers on it (an hg child): the reply is
 * taken over now, and the access line waits for `outcome`, whose report becomes the record.
 */
export function handedOff(req: FastifyRequest, reply: FastifyReply, outcome: Promise<Delivered>): Promise<FastifyReply> {
  reply.hijack()
  // The connection is the child's now: Node never tells this response it closed, so the record
  // ends when the child's report is in.
  const recorded = outcome.then((d) => {
    record(req, reply, d)
    req.accessRecord.finish?.()
  })
  awaitOutcome(req, recorded)
  return recorded.then(() => reply)
}

function record(req: FastifyRequest, reply: FastifyReply, d: Delivered): void {
  const access = req.accessRecord
  access.handedOver = true
  access.bytesOut = d.bytes
  access.completed = d.completed
  if (d.status !== undefined) reply.raw.statusCode = d.status
}
