/**
 * A file as the response, with what a download that resumes needs: `Range` (206, 416),
 * `ETag`/`Last-Modified` and their conditional requests, through @fastify/send (fastify's own
 * implementation of them, the one @fastify/static uses). The file is named by the caller, never
 * by the URL.
 */
import path from 'node:path'
import send from '@fastify/send'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { RepoNotFoundError } from '../errors.js'

export async function sendFile(req: FastifyRequest, reply: FastifyReply, file: string, contentType: string): Promise<FastifyReply> {
  // root and name apart: send checks the name (no dot files, no `..`); the root may hold `.hg`
  const { statusCode, headers, stream, type } = await send(req.raw, `/${path.basename(file)}`, { root: path.dirname(file), cacheControl: false, index: false })
  if (type === 'error' && statusCode === 404) throw new RepoNotFoundError()
  reply.code(statusCode).headers(headers)
  if (type === 'file') reply.type(contentType)
  const length = Number(headers['content-length'] ?? 0)
  if (statusCode < 300 && req.method === 'GET') req.accessRecord.bytesOut = length
  return reply.send(stream)
}
