/**
 * A file as the response, with what a download that resumes needs: `Range` (206, 416),
 * `ETag`/`Last-Modified` and their conditional requests, through @fastify/send (fastify's own
 * implementation of them, the one @fastify/static uses). The file is named by the caller, never
 * by the URL. send decides the status, the headers and the byte range; the bytes themselves are
 * read into pooled buffers (pooled-read.ts) and written straight to the client: a 31 MB clone
 * bundle through send's stream cost the worker 140-180 ms of CPU between other work, most of it
 * major GCs that its fresh buffers set off.
 */
import { open } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import path from 'node:path'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type SendFn from '@fastify/send'
import { RepoNotFoundError, ServiceUnavailableError } from '../errors.js'
import { feedResponse, pooledFile, FILE_POOL, type ChunkSource } from '../process/pooled-read.js'

/** loaded on the first download: a worker that never serves one (git only) never loads it and its MIME table */
let sendModule: Promise<{ default: typeof SendFn }> | undefined

export async function sendFile(req: FastifyRequest, reply: FastifyReply, file: string, contentType: string): Promise<FastifyReply> {
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
    req.accessRecord.bytesOut = length
    const source = pooledFile(fh, start, length, FILE_POOL)
    return sendChunks(reply, source).finally(() => fh.close())
  }
}

/** Hijacks the reply, writes its status and headers, then `source`'s chunks, each buffer given back once written. */
function sendChunks(reply: FastifyReply, source: ChunkSource): Promise<FastifyReply> {
  const res = reply.raw
  reply.hijack()
  for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v)
  res.writeHead(reply.statusCode)
  return new Promise((resolve) => {
    res.once('close', () => resolve(reply))
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
