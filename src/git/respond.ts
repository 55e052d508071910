/**
 * git's stdout as the response body. Fastify defers the status line until the first byte
 * (reply.js sendStream uses setHeader), so a git that fails before writing anything still
 * becomes a one-line HTTP error; after the first byte the response can only be cut, which a
 * git client reports as an early EOF instead of silently taking a truncated pack.
 */
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ChildFailedError, ServiceUnavailableError, oneLine } from '../errors.js'
import { describeExit, type Child, type ExitStatus } from '../process.js'

/** Passes git's output through, counts it, and ends only once git exited, failing if git failed. */
class ChildOutput extends Transform {
  bytes = 0
  constructor(
    private readonly child: Child,
    private readonly onExit: (s: ExitStatus) => Error | undefined,
    private prefix: Buffer | undefined,
  ) { super() }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.emitPrefix()
    this.bytes += chunk.length
    cb(null, chunk)
  }
  override _flush(cb: TransformCallback): void {
    this.child.exited.then((status) => {
      const err = this.onExit(status)
      if (!err) this.emitPrefix()
      cb(err)
    }, cb)
  }
  /** The prefix goes out with git's first byte, so a git that fails first is still an HTTP error. */
  private emitPrefix(): void {
    if (!this.prefix) return
    this.bytes += this.prefix.length
    this.push(this.prefix)
    this.prefix = undefined
  }
}

export interface StreamChildOptions {
  /** what to say when git fails before its first byte */
  what: string
  /** bytes the response starts with, sent only once git produced output or succeeded */
  prefix?: Buffer
  /** a transform git's output goes through first (report-status rewriting) */
  rewrite?: Transform
}

/**
 * Ties a git child to the request: killed when the client goes away, its exit awaited, its
 * stderr logged, its output streamed with backpressure. Returns the stream to `reply.send`.
 */
export function streamChild(req: FastifyRequest, reply: FastifyReply, child: Child, opts: StreamChildOptions): Transform {
  const access = req.access
  access.pid = child.pid
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) {
      access.aborted = true
      child.kill()
    }
  })
  const out = new ChildOutput(child, (status) => {
    access.exitCode = status.code ?? (status.signal ? `${status.signal}` : null)
    access.bytesOut = out.bytes
    const stderr = child.stderr()
    if (status.code === 0) {
      if (stderr) req.log.debug({ child_pid: child.pid, stderr }, 'git stderr')
      return undefined
    }
    const level = child.killed ? 'info' : 'error'
    req.log[level]({ child_pid: child.pid, exit_code: access.exitCode, stderr, bytes_out: out.bytes }, `${opts.what} ended: ${describeExit(status)}`)
    if (status.error) return new ServiceUnavailableError('git is not available on this worker')
    const last = stderr.split('\n').filter(Boolean).pop()
    return new ChildFailedError(oneLine(`${opts.what} failed${last ? `: ${last.replace(/^fatal: /, '')}` : ''}`))
  }, opts.prefix)
  const stages = opts.rewrite ? [child.proc.stdout, opts.rewrite, out] : [child.proc.stdout, out]
  pipeline(stages, () => { /* errors surface through `out` */ })
  return out
}
