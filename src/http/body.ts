/**
 * Request bodies of the git and hg POST endpoints: Content-Encoding decoded as a stream (git gzips
 * large upload-pack requests), the decoded size bounded (a gzip bomb stops at the limit, 413),
 * and, for upload-pack, a spill buffer that holds the whole request before git starts.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { PassThrough, Readable, Transform, Writable, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import type { IncomingMessage } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError } from '../errors.js'
import { DISCARD_LIMIT, discardRest } from './unread-body.js'

/** Counts bytes and fails with 413 once more than `limit` went by. */
export class ByteLimit extends Transform {
  bytes = 0
  constructor(private readonly limit: number) { super() }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length
    if (this.bytes > this.limit) return cb(new PayloadTooLargeError(this.limit))
    cb(null, chunk)
  }
}

export interface DecodedBody {
  /** the decoded bytes; its errors go through toClientError (400 bad gzip, 413 over the limit) */
  stream: Readable
  /** bytes read off the wire so far */
  wireBytes(): number
  /**
   * Stops feeding the decoder and discards what the client still sends, up to `limit` bytes,
   * so an early answer (401, 413) reaches a client that writes its whole body before reading;
   * past the bound the connection is closed.
   */
  abandon(limit: number): void
}

/**
 * Decodes the request body per Content-Encoding with a bound on the decoded size. Throws 415
 * for an encoding git never sends, 413 at once when Content-Length already exceeds the bound.
 * The socket's request stream is never handed to `pipeline` (which would destroy the socket
 * on error and with it the chance to answer); it is piped into a buffer stage instead.
 */
export function decodeBody(raw: IncomingMessage, limit: number): DecodedBody {
  const encoding = String(raw.headers['content-encoding'] ?? 'identity').trim().toLowerCase()
  const gzip = encoding === 'gzip' || encoding === 'x-gzip'
  if (!gzip && encoding !== 'identity' && encoding !== '') throw new UnsupportedMediaTypeError(`unsupported Content-Encoding: ${encoding.slice(0, 40)}`)
  const declared = Number(raw.headers['content-length'])
  if (!gzip && Number.isFinite(declared) && declared > limit) throw new PayloadTooLargeError(limit)
  let wire = 0
  const count = (c: Buffer): void => { wire += c.length }
  raw.on('data', count)
  const src = new PassThrough()
  const onAbort = (): void => { src.destroy(new BadRequestError('client closed the request body early')) }
  raw.once('aborted', onAbort)
  raw.pipe(src)
  // aborted before its handler came to read it (the client gone while the request was authorized)
  if (raw.aborted || (raw.destroyed && !raw.complete)) onAbort()
  const out = new ByteLimit(limit)
  const stages: NodeJS.ReadWriteStream[] = gzip ? [createGunzip()] : []
  // Errors reach the consumer through `out`; it maps them with toClientError.
  pipeline([src, ...stages, out] as unknown as [PassThrough, PassThrough]).catch(() => {})
  return {
    stream: out,
    wireBytes: () => wire,
    abandon(max: number) {
      raw.unpipe(src)
      raw.off('aborted', onAbort)
      if (!raw.complete) discardRest(raw, max)
    },
  }
}

/** zlib and socket errors become one-line client errors; our own errors pass through. */
export function toClientError(err: unknown): Error {
  const e = err as NodeJS.ErrnoException
  if (typeof e?.code === 'string' && e.code.startsWith('Z_')) return new BadRequestError('request body is not valid gzip', { cause: err })
  if (e?.code === 'ERR_STREAM_PREMATURE_CLOSE' || e?.code === 'ECONNRESET') return new BadRequestError('client closed the request body early', { cause: err })
  return e instanceof Error ? e : new Error(String(err))
}

/** A whole request body held in memory up to a threshold, past it in a temp file. */
export class SpillBuffer extends Writable {
  private chunks: Buffer[] = []
  private size = 0
  private file: string | undefined
  private fileStream: WriteStream | undefined
  constructor(private readonly memLimit: number, private readonly tmpDir: string) { super() }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.size += chunk.length
    if (!this.fileStream && this.size <= this.memLimit) {
      this.chunks.push(chunk)
      return cb()
    }
    if (!this.fileStream) {
      this.file = path.join(this.tmpDir, `body-${randomBytes(8).toString('hex')}`)
      this.fileStream = createWriteStream(this.file, { mode: 0o600 })
      this.fileStream.on('error', (err) => this.destroy(err))
      for (const c of this.chunks) this.fileStream.write(c)
      this.chunks = []
    }
    if (this.fileStream.write(chunk)) cb()
    else this.fileStream.once('drain', () => cb())
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.fileStream) return cb()
    this.fileStream.end(() => cb())
  }

  /** The buffered bytes as a fresh stream. */
  reader(): Readable {
    return this.file ? createReadStream(this.file) : Readable.from(this.chunks)
  }

  get bytes(): number { return this.size }

  /** Removes the temp file, if one was needed. */
  async dispose(): Promise<void> {
    this.chunks = []
    this.fileStream?.destroy()
    if (this.file) await rm(this.file, { force: true })
  }
}

/** Bodies up to this size stay in memory while spilled; larger ones go to a temp file. */
const SPILL_MEMORY = 1024 * 1024

/**
 * Reads a whole request body (decoded, bounded by `limit`, through `stages`) into a spill
 * buffer before a child starts. On failure the buffer is gone, the rest of the body is read and
 * dropped up to DISCARD_LIMIT (or the connection closes) and the error is the client's (400/413).
 */
export async function spillRequestBody(
  req: FastifyRequest,
  reply: FastifyReply,
  opts: { limit: number; tmpDir: string; stages?: Transform[] },
): Promise<SpillBuffer> {
  const body = decodeBody(req.raw, opts.limit)
  req.accessRecord.countIn = body.wireBytes
  const spill = new SpillBuffer(SPILL_MEMORY, opts.tmpDir)
  try {
    await pipeline([body.stream, ...(opts.stages ?? []), spill])
  } catch (err) {
    await spill.dispose()
    body.abandon(DISCARD_LIMIT)
    reply.header('connection', 'close')
    throw toClientError(err)
  }
  return spill
}
