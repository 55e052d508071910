/**
 * Git LFS over the worker: the batch API and the basic transfer adapter, written to
 * git-lfs's docs/api/batch.md and basic-transfers.md, found by `git lfs` with no configuration
 * at `<repo>.git/info/lfs` (or `<repo>/info/lfs`). Authorization is the auth middleware's: the
 * route's pre-handler authorizes reading; an upload batch, an upload and a verify authorize
 * writing. The action hrefs point back at the URL the client came in on (its Host, the scheme a
 * trusted proxy names), so through HAProxy they reach the pool again, and carry the client's
 * own Authorization header, which the transfer requests need. Objects live in their repo
 * (store.ts). Errors are the API's JSON (`{"message": ...}`, errors.ts).
 */
import { statfs } from 'node:fs/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config/load.js'
import type { VcsAuth } from '../auth/plugin.js'
import type { Admission } from '../admission/admission.js'
import type { RepoRoute } from '../http/routes.js'
import { fileSending, sendFile } from '../http/send-file.js'
import { decodeBody, toClientError, type DecodedBody } from '../http/body.js'
import { DISCARD_LIMIT } from '../http/unread-body.js'
import { LfsError, PayloadTooLargeError } from '../errors.js'
import { isOid, LFS_UPLOAD_TEMPS, LfsObjectError, type FsLfsStore } from './store.js'
import { QuarantineSweeper } from '../git/quarantine.js'
import type { FastifyBaseLogger } from 'fastify'

export const LFS_TYPE = 'application/vnd.git-lfs+json'
/** objects in one batch at most; git-lfs sends 100 at a time */
export const MAX_BATCH_OBJECTS = 1000
/** a batch request body at most (1000 objects are ~150 KB) */
export const MAX_BATCH_BYTES = 1024 * 1024


export interface LfsDeps {
  config: Config
  store: FsLfsStore
  auth: VcsAuth
  admission: Admission
  log: FastifyBaseLogger
  /** the base of the URLs handed out (http/headers.ts publicBase) */
  baseOf: (req: FastifyRequest) => string | undefined
}

interface BatchObject { oid: string; size: number }

/**
 * Reads a JSON request body of at most `limit` bytes, through the body reader git's routes use
 * (decodeBody: gzip decoded, a client that closes early a 400, not a failure of ours).
 */
async function readJson(req: FastifyRequest, limit: number): Promise<unknown> {
  const tooLarge = (err: unknown): Error => (err instanceof PayloadTooLargeError ? new LfsError(413, `the request body is larger than ${limit} bytes`) : toClientError(err))
  let body: DecodedBody
  try {
    body = decodeBody(req.raw, limit)
  } catch (err) {
    throw tooLarge(err)
  }
  const parts: Buffer[] = []
  try {
    for await (const chunk of body.stream) parts.push(chunk as Buffer)
  } catch (err) {
    body.abandon(DISCARD_LIMIT)
    throw tooLarge(err)
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8'))
  } catch {
    throw new LfsError(422, 'the request body is not JSON')
  }
}

/** A JSON object request body of at most `limit` bytes (readJson); anything else is a 422. */
export async function readJsonObject(req: FastifyRequest, limit: number): Promise<Record<string, unknown>> {
  const body = await readJson(req, limit)
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new LfsError(422, 'the request body must be a JSON object')
  return body as Record<string, unknown>
}

/** An API answer: the media type exactly as the API names it (no charset parameter), the body as JSON. */
export function sendLfs(reply: FastifyReply, status: number, body: unknown): FastifyReply {
  return reply.code(status).type(LFS_TYPE).send(Buffer.from(JSON.stringify(body))) // a Buffer: fastify appends no charset
}

export function wantsLfsJson(req: FastifyRequest): void {
  const accept = String(req.headers.accept ?? '')
  if (!accept.split(',').some((a) => a.split(';')[0]!.trim() === LFS_TYPE)) throw new LfsError(406, `Accept must include ${LFS_TYPE}`)
}

/** The base URL of this repo's LFS endpoint (publicBase: never from an untrusted Host). */
function lfsBase(req: FastifyRequest, baseOf: LfsDeps['baseOf']): string {
  const base = baseOf(req)
  if (!base) throw new LfsError(400, 'the Host header cannot name this server')
  return `${base}/${req.repo.name}/info/lfs`
}

/** The size of an object, as the API allows it: a whole number, not negative, not past the limit. */
function sizeProblem(size: unknown, max: number): string | undefined {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return 'size must be a whole number of bytes, 0 or more'
  if (size > max) return `the object is larger than this server accepts (${max} bytes)`
  return undefined
}

export function lfsRoutes(deps: LfsDeps): RepoRoute[] {
  const { config, store, auth } = deps
  const maxObject = config.lfsMaxObjectBytes
  const sending = fileSending(config)
  // temp files of uploads a killed worker left (the push quarantines' rule: docs/lfs.md)
  const temps = new QuarantineSweeper(config.quarantineStaleMs, deps.log, LFS_UPLOAD_TEMPS)

  /** 507 when `bytes` more would take the repos' disk below diskFreeFloorBytes (the floor git and hg respect too) */
  async function roomFor(repoDir: string, bytes: number): Promise<void> {
    const fs = await statfs(repoDir)
    if (fs.bavail * fs.bsize - bytes < config.diskFreeFloorBytes) throw new LfsError(507, 'the server has no room for this upload; try again later')
  }

  async function batch(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    req.accessRecord.service = 'lfs-batch'
    wantsLfsJson(req)
    const body = await readJsonObject(req, MAX_BATCH_BYTES) as { operation?: unknown; objects?: unknown; transfers?: unknown; hash_algo?: unknown }
    const operation = body.operation
    if (operation !== 'download' && operation !== 'upload') throw new LfsError(422, 'operation must be "download" or "upload"')
    if (body.hash_algo !== undefined && body.hash_algo !== 'sha256') throw new LfsError(409, 'only the sha256 hash algorithm is supported')
    if (body.transfers !== undefined && (!Array.isArray(body.transfers) || !body.transfers.includes('basic'))) throw new LfsError(422, 'only the basic transfer adapter is supported')
    if (!Array.isArray(body.objects)) throw new LfsError(422, 'objects must be a list')
    if (body.objects.length > MAX_BATCH_OBJECTS) throw new LfsError(413, `at most ${MAX_BATCH_OBJECTS} objects in one batch`)
    if (operation === 'upload') {
      await auth.authorize(req, req.repo, 'write')
      await roomFor(req.repo.dir, 0)
    }
    const base = lfsBase(req, deps.baseOf)
    const header: Record<string, string> = req.headers.authorization ? { Authorization: req.headers.authorization } : {}
    const objects = await Promise.all((body.objects as unknown[]).map(async (o) => {
      const { oid, size } = (typeof o === 'object' && o !== null ? o : {}) as { oid?: unknown; size?: unknown }
      if (!isOid(oid)) return { oid: typeof oid === 'string' ? oid.slice(0, 100) : '', size, error: { code: 422, message: 'oid must be 64 lowercase hex digits (a SHA-256)' } }
      const problem = sizeProblem(size, maxObject)
      if (problem) return { oid, size, error: { code: 422, message: problem } }
      const stored = await store.size(req.repo.dir, oid)
      const href = `${base}/objects/${oid}`
      if (operation === 'download') {
        if (stored === undefined) return { oid, size, error: { code: 404, message: 'object not found' } }
        return { oid, size: stored, authenticated: true, actions: { download: { href, header } } }
      }
      if (stored === size) return { oid, size, authenticated: true } // already here: nothing to send
      return { oid, size, authenticated: true, actions: { upload: { href, header }, verify: { href: `${base}/verify`, header } } }
    }))
    return sendLfs(reply, 200, { transfer: 'basic', objects, hash_algo: 'sha256' })
  }

  function oidOf(req: FastifyRequest): string {
    const oid = req.urlParams.oid
    if (!isOid(oid)) throw new LfsError(422, 'oid must be 64 lowercase hex digits (a SHA-256)')
    req.accessRecord.oid = oid
    return oid
  }

  async function download(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const oid = oidOf(req)
    req.accessRecord.service = 'lfs-download'
    if ((await store.size(req.repo.dir, oid)) === undefined) throw new LfsError(404, 'object not found')
    const release = deps.admission.admitTransfer(req)
    reply.raw.once('close', release)
    return sendFile(req, reply, store.pathOf(req.repo.dir, oid), 'application/octet-stream', sending)
  }

  async function upload(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const oid = oidOf(req)
    req.accessRecord.service = 'lfs-upload'
    const declared = req.headers['content-length']
    if (declared === undefined || !/^\d+$/.test(declared)) throw new LfsError(411, 'an upload needs a Content-Length')
    const size = Number(declared)
    const problem = sizeProblem(size, maxObject)
    if (problem) throw new LfsError(size > maxObject ? 413 : 422, problem)
    await roomFor(req.repo.dir, size)
    temps.maybeSweep(req.repo.dir)
    const release = await deps.admission.admit(req, reply, 'incremental')
    try {
      if ((await store.size(req.repo.dir, oid)) === size) {
        req.raw.resume() // already stored: the bytes are read and dropped
        return await reply.code(200).send()
      }
      await store.put(req.repo.dir, oid, size, req.raw)
      req.accessRecord.bytesIn = size
      return await reply.code(200).send()
    } catch (err) {
      if (err instanceof LfsObjectError) throw new LfsError(422, err.message)
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOSPC' || code === 'EDQUOT') {
        req.log.warn({ err }, 'Git LFS upload: the disk is full')
        throw new LfsError(507, 'the server has no room for this upload; try again later')
      }
      throw toClientError(err) // the client went away or stopped sending: theirs, not a failure of ours
    } finally {
      release()
    }
  }

  async function verify(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    wantsLfsJson(req)
    req.accessRecord.service = 'lfs-verify'
    const body = await readJson(req, 64 * 1024) as Partial<BatchObject> | null
    const oid = body?.oid
    if (!isOid(oid)) throw new LfsError(422, 'oid must be 64 lowercase hex digits (a SHA-256)')
    const stored = await store.size(req.repo.dir, oid)
    if (stored === undefined) throw new LfsError(404, 'object not found')
    if (stored !== body?.size) throw new LfsError(422, `the object is ${stored} bytes, not ${String(body?.size)}`)
    return sendLfs(reply, 200, {})
  }

  return [
    { id: 'lfs_batch', methods: ['POST'], kind: 'git', access: 'read', handler: batch },
    { id: 'lfs_download', methods: ['GET'], kind: 'git', access: 'read', handler: download },
    { id: 'lfs_upload', methods: ['PUT'], kind: 'git', access: 'write', handler: upload },
    { id: 'lfs_verify', methods: ['POST'], kind: 'git', access: 'write', handler: verify },
  ]
}
