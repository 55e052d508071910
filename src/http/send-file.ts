/**
 * A file as the response, with what a download that resumes needs: `Range` (206, 416),
 * `ETag`/`Last-Modified` and their conditional requests, through @fastify/send (fastify's own
 * implementation of them, the one @fastify/static uses). The file is named by the caller, never
 * by the URL.
 */
import path from 'node:path'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type SendFn from '@fastify/send'
import { RepoNotFoundError } from '../errors.js'

/**
 * Read in chunks of READ_CHUNK: with fs's default 64 KiB, a 31 MB bundle cost the worker ~145 ms
 * of CPU in syscalls on these machines. One chunk per download in flight, and downloads are
 * admitted: the memory is bounded by heavyLimit.
 */
const READ_CHUNK = 1024 * 1024

/** loaded on the first download: a worker that never serves one (git only) never loads it and its MIME table */
let sendModule: Promise<{ default: typeof SendFn }> | undefined

export async function sendFile(req: FastifyRequest, reply: FastifyReply, file: string, contentType: string): Promise<FastifyReply> {
  // root and name apart: send checks the name (no dot files, no `..`); the root may hold `.hg`
  const send = (await (sendModule ??= import('@fastify/send') as Promise<{ default: typeof SendFn }>)).default
  const { statusCode, headers, stream, type } = await send(req.raw, `/${path.basename(file)}`, { root: path.dirname(file), cacheControl: false, index: false, highWaterMark: READ_CHUNK })
  if (type === 'error' && statusCode === 404) throw new RepoNotFoundError()
  reply.code(statusCode).headers(headers)
  if (type === 'file') reply.type(contentType)
  const length = Number(headers['content-length'] ?? 0)
  if (statusCode < 300 && req.method === 'GET') req.accessRecord.bytesOut = length
  return reply.send(stream)
}
