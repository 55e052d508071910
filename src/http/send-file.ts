/**
 * A file as the response, with what a download that resumes needs: `Range` (206, 416),
 * `ETag`/`Last-Modified` and their conditional requests, through @fastify/send (fastify's own
 * implementation of them, the one @fastify/static uses). The file is named by the caller, never
 * by the URL. send decides the status, the headers and the byte range; the bytes themselves are
 * read into pooled buffers (pooled-read.ts) and written straight to the client: a 31 MB clone
 * bundle through send's stream cost the worker 140-180 ms of CPU between other work, most of it
 * major GCs that its fresh buffers set off.
 *
 * A file of FILE_RELAY_MIN bytes or more, on a plain TCP connection, goes out through the relay
 * (src/process/relay.ts, `pack-relay --file`) instead, as nginx serves a static file (32 KiB
 * reads and writes, outside any event loop); the connection then closes after it. The spawn
 * helper keeps relays started ahead (`--wait`), so a download does not wait for a fork.
 */
import { open } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import type { Socket } from 'node:net'
import path from 'node:path'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type SendFn from '@fastify/send'
import { RepoNotFoundError, ServiceUnavailableError } from '../errors.js'
import { feedResponse, pooledFile, FILE_POOL, type ChunkSource } from '../process/pooled-read.js'
import { spawnChild } from '../process/child.js'
import type { Config } from '../config/load.js'
import { PACK_RELAY, RELAY_CLOSE_GRACE_MS, relayableSocket, relayHead, relayOutcome } from '../process/relay.js'
import { answerInstead, awaitOutcome, countOut, relayDelivered, startChunks } from './deliver.js'

/** Below this a file goes through the worker: the relay's spawn would cost more than the copy. */
export const FILE_RELAY_MIN = 1024 * 1024

/** How a file goes out, as the config says (`packRelay` turns both relays on and off; the minimum rate applies either way). */
export function fileSending(config: Config): FileSending {
  const pace = { minRate: config.transferMinRate, windowMs: config.transferGraceMs }
  return { pace, relay: config.packRelay ? { idleMs: config.idleTimeoutMs, killGraceMs: config.killGraceMs, viaHelper: config.spawnHelper, pace } : undefined }
}

/**
 * The slowest a download may go: fewer than `minRate` bytes per second over a window of
 * `windowMs` (the first window is its grace) and it is ended. 0: no minimum.
 */
export interface Pace {
  minRate: number
  windowMs: number
}

export interface FileSending {
  pace: Pace
  relay?: FileRelay
}

/** How to run the relay for a file (from the config: `packRelay`, `idleTimeoutMs`, `killGraceMs`, `spawnHelper`). */
export interface FileRelay {
  idleMs: number
  killGraceMs: number
  viaHelper: boolean
  pace: Pace
}

/** loaded on the first download: a worker that never serves one (git only) never loads it and its MIME table */
let sendModule: Promise<{ default: typeof SendFn }> | undefined

export async function sendFile(req: FastifyRequest, reply: FastifyReply, file: string, contentType: string, sending: FileSending): Promise<FastifyReply> {
  const { relay, pace } = sending
  // root and name apart: send checks the name (no dot files, no `..`); the root may hold `.hg`
  const send = (await (sendModule ??= import('@fastify/send') as Promise<{ default: typeof SendFn }>)).default
  // the file can be replaced (renamed over) between send's stat and our open: then once more
  for (let attempt = 0; ; attempt++) {
    const { statusCode, headers, stream, type, metadata } = await send(req.raw, `/${path.basename(file)}`, { root: path.dirname(file), cacheControl: false, index: false })
    if (type === 'error' && statusCode === 404) throw new RepoNotFoundError()
    reply.code(statusCode).headers(headers)
    if (type !== 'file' || statusCode >= 300 || req.method !== 'GET') return reply.send(stream) // 304, 412, 416 and errors: no body of ours
    const start = (stream as unknown as { start?: number }).start ?? 0
    const length = Number(headers['Content-Length'] ?? 0)
    stream.destroy()
    const fh = await open(file, 'r')
    const st = await fh.stat()
    const seen = (metadata as { stat: Stats }).stat
    if (st.ino !== seen.ino || st.size !== seen.size || st.mtimeMs !== seen.mtimeMs) {
      await fh.close()
      if (attempt) throw new ServiceUnavailableError('the file is being replaced; try again', 1)
      continue
    }
    reply.type(contentType)
    if (relay && length >= FILE_RELAY_MIN) {
      const relayed = await relayFile(req, reply, file, st.ino, start, length, relay)
      if (relayed) {
        await fh.close()
        return relayed
      }
    }
    countOut(req, length)
    const source = pooledFile(fh, start, length, FILE_POOL)
    return sendChunks(reply, source, pace).finally(() => fh.close())
  }
}

/** The reply's status and headers, then `source`'s chunks, each buffer given back once written. */
function sendChunks(reply: FastifyReply, source: ChunkSource, pace: Pace): Promise<FastifyReply> {
  const res = startChunks(reply)
  // the connection closed already (the client left while a relay was tried): nothing to send,
  // and no 'close' will come to end this answer
  if (!res) {
    source.destroy()
    return new Promise((resolve) => resolve(reply))
  }
  const stopWatch = watchPace(res.socket, pace, () => {
    reply.log.info({ min_rate: pace.minRate, window_ms: pace.windowMs }, 'file download: slower than transferMinRate, ended')
    res.socket?.resetAndDestroy() // what the kernel still holds for it is dropped too
  })
  return new Promise((resolve) => {
    res.once('close', () => {
      stopWatch()
      resolve(reply)
    })
    const write = feedResponse(res, source)
    source.start({
      data: write,
      end(err) {
        if (err) {
          reply.log.error({ err }, 'file download failed')
          res.destroy()
        } else res.end()
      },
    })
  })
}

/**
 * Calls `onSlow` when `socket` took fewer than `pace.minRate` bytes per second over a window of
 * `pace.windowMs` (what the kernel took from us: a client that stopped reading stops it once the
 * socket buffers are full). Returns the function that stops watching.
 */
function watchPace(socket: Socket | null, pace: Pace, onSlow: () => void): () => void {
  if (!socket || pace.minRate <= 0) return () => {}
  let last = socket.bytesWritten
  const stop = (): void => {
    clearInterval(timer)
    socket.off('close', stop)
  }
  const timer = setInterval(() => {
    if (socket.destroyed) return stop()
    const now = socket.bytesWritten
    if (now - last < (pace.minRate * pace.windowMs) / 1000) {
      stop()
      onSlow()
    }
    last = now
  }, pace.windowMs)
  timer.unref()
  socket.once('close', stop)
  return stop
}

/**
 * The file's bytes through the relay: undefined when it wrote nothing (not a plain TCP
 * connection, a header it cannot pass, the file replaced meanwhile), the worker then sends the
 * file itself. Else the answer is the relay's: the access line waits for its report.
 */
async function relayFile(req: FastifyRequest, reply: FastifyReply, file: string, ino: number, start: number, length: number, relay: FileRelay): Promise<FastifyReply | undefined> {
  const socket = relayableSocket(req)
  const head = socket && relayHead(reply, { length: true })
  if (!socket || !head) return undefined
  const limits = relay.pace.minRate > 0 ? `${relay.idleMs},${relay.pace.minRate},${relay.pace.windowMs}` : String(relay.idleMs)
  const argv = [limits, head, '--file', file, String(ino), String(start), String(length)]
  const base = { env: {}, killGraceMs: relay.killGraceMs }
  // through the helper, a relay it started ahead may serve the download
  const child = relay.viaHelper
    ? spawnChild(PACK_RELAY, argv, { ...base, viaHelper: true, stdout: { socket, prestart: true } })
    : spawnChild(PACK_RELAY, argv, { ...base, stdout: { socket } })
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) setTimeout(() => child.kill(), RELAY_CLOSE_GRACE_MS).unref()
  })
  socket.setTimeout(0) // the relay watches the connection's idleness itself
  const outcome = relayOutcome(child)
  awaitOutcome(req, outcome)
  const { status, report } = await outcome
  if (report && !report.head) {
    // nothing went out: the worker sends the file
    answerInstead(reply, socket, relay.idleMs)
    if (status.error) req.log.warn({ err: status.error }, 'the file relay could not start; sending through the worker')
    return undefined
  }
  relayDelivered(req, reply, { bytes: report?.sent ?? 0, completed: report?.closed === true })
  if (report?.slow) req.log.info({ bytes_out: report.sent, min_rate: relay.pace.minRate, window_ms: relay.pace.windowMs }, 'file download: slower than transferMinRate, ended')
  else if (report?.idle) req.log.info({ bytes_out: report.sent }, `file download: no progress for ${relay.idleMs} ms, ended`)
  else if (!report?.closed && !report?.gone) req.log.error({ bytes_out: report?.sent, exit: status.code ?? status.signal }, 'file download cut: the relay stopped before the end')
  // the relay ended the connection, or the answer is cut: only a cut is honest; a reader too slow
  // is reset, so what the kernel still holds for it is dropped too, not trickled out for minutes
  if (report?.slow) socket.resetAndDestroy()
  else socket.destroy()
  return reply
}
