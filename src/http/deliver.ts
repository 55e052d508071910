/**
 * How an answer leaves the worker, when it is not fastify's own `reply.send`. Handlers say what
 * to send; the ways out below say how it leaves, and only they take a reply over from fastify
 * (`reply.hijack()`) or write the access record's delivery fields (bytes out, whether it went
 * out whole, whether another process wrote it).
 *
 * The ways out, and who chooses each:
 * - a stream (git's stdout through stream stages, an hg child's answer, a kept answer): fastify's
 *   `reply.send(stream)`, which defers the status line to the first byte (`streamChild` below);
 * - pooled chunks (upload-pack's stdout, a file's bytes) written straight to the socket, each
 *   buffer given back once written: `startChunks` here, at the first chunk (`sendChildChunks`
 *   below, http/send-file.ts);
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
import { PassThrough, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream'
import { ChildFailedError, ServiceUnavailableError, oneLine } from '../errors.js'
import { describeExit, type Child, type ExitStatus } from '../process/child.js'
import { feedResponse, type ChunkSource } from '../process/pooled-read.js'
import { errPkt, pkt, PktDecoder } from '../git/pktline.js'

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

/*
 * A child's stdout as the answer (git's, mostly). Fastify defers the status line until the first
 * byte (reply.js sendStream uses setHeader), so a child that fails before writing anything still
 * becomes a one-line HTTP error; after the first byte the answer can only be told the failure in
 * the protocol at a pkt-line boundary, or cut, which a git client reports as an early EOF
 * instead of silently taking a truncated pack.
 */

/** Passes git's output through, counts it, and ends only once git exited, failing if git failed. */
class ChildOutput extends Transform {
  bytes = 0
  private readonly frames = new PktFrames()
  constructor(
    private readonly child: Child,
    private readonly onExit: (s: ExitStatus) => Error | undefined,
    private prefix: Buffer | undefined,
    private readonly inBand: boolean,
    private readonly ours?: () => { error: Error; sideband: boolean } | undefined,
  ) { super() }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.emitPrefix()
    this.bytes += chunk.length
    if (this.inBand) this.frames.feed(chunk)
    cb(null, chunk)
  }
  override _flush(cb: TransformCallback): void {
    this.child.exited.then((status) => {
      const err = this.onExit(status)
      // a refusal of ours that ended git before it said anything: told inside the protocol, as
      // git prints only "HTTP 413" of an HTTP error and then "Everything up-to-date"
      const refusal = this.ours?.()
      if (refusal && this.bytes === 0) {
        this.push(inBandError(refusal.error.message, refusal.sideband))
        return cb()
      }
      if (!err) this.emitPrefix()
      // After the first byte the status line is gone: if git died between two packets, tell the
      // client inside the protocol (band 3 once side-band is on, else an ERR packet), which git
      // prints as "remote error: ..."; inside a packet the stream can only be cut.
      if (err && this.bytes > 0 && this.inBand && this.frames.atBoundary()) {
        this.push(this.frames.errorPacket(err.message))
        return cb()
      }
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

/** Follows pkt-line framing of git's output as it passes, to know where a packet ends. */
class PktFrames {
  private readonly decoder = new PktDecoder(false)
  private framed = true
  private sideband = false

  feed(chunk: Buffer): void {
    if (!this.framed) return
    try {
      this.decoder.feed(chunk, ({ first }) => {
        if (first === 1 || first === 2) this.sideband = true
      })
    } catch {
      this.framed = false // not pkt-lines: never at a boundary again
    }
  }

  atBoundary(): boolean {
    return this.framed && !this.decoder.midPacket
  }

  errorPacket(message: string): Buffer {
    return inBandError(message, this.sideband)
  }
}

/** git's failure told inside the protocol: band 3 once side-band is on, else an ERR packet. */
export function inBandError(message: string, sideband: boolean): Buffer {
  const text = message.slice(0, 1000)
  return sideband ? pkt(Buffer.concat([Buffer.from([3]), Buffer.from(`${text}\n`)])) : errPkt(text)
}

/**
 * Ties a git child to the request (killed when the client goes away) and returns what judges
 * its exit: logs it, records it for the access log, and turns a failure into the error to answer.
 * `ended` says a child was ended on purpose (logged at info, as one we killed). `closeGraceMs`:
 * how long a child may outlive the connection before it is killed (0: at once).
 */
export function attach(req: FastifyRequest, reply: FastifyReply, child: Child, what: string, bytes: () => number, ended?: () => boolean, closeGraceMs = 0, outlive?: Outlive): (s: ExitStatus) => Error | undefined {
  const access = req.accessRecord
  access.pid = child.pid
  access.spawned = true
  let outliving = false
  // a child that may outlive its client: the access line waits for its exit, and records it
  if (outlive) access.settled = child.exited.then((status) => { if (outliving) judge(status) })
  reply.raw.once('close', () => {
    if (reply.raw.writableFinished) return
    markAborted(req)
    if (outlive?.bodyIn()) {
      // the whole push is in: git may have moved refs already, and its post-receive must run
      req.log.info({ child_pid: child.pid }, `${what}: the client left after sending the whole request; running it to completion`)
      outlive.drain()
      outliving = true
      const timer = setTimeout(() => child.kill(), outlive.timeoutMs)
      timer.unref()
      void child.exited.then(() => clearTimeout(timer))
      return
    }
    if (closeGraceMs > 0) setTimeout(() => child.kill(), closeGraceMs).unref()
    else child.kill()
  })
  const judge = (status: ExitStatus): Error | undefined => {
    access.pid = child.pid // through the spawn helper the pid is known a moment after the spawn
    access.exitCode = status.code ?? (status.signal ? `${status.signal}` : null)
    countOut(req, bytes())
    const stderr = child.stderr()
    if (status.code === 0) {
      if (stderr) req.log.debug({ child_pid: child.pid, stderr }, 'git stderr')
      return undefined
    }
    // killed by us, or ended on purpose (`ended`: the pack relay giving up on an idle client): not git's fault
    const level = child.killed || ended?.() ? 'info' : 'error'
    req.log[level]({ child_pid: child.pid, exit_code: access.exitCode, stderr, bytes_out: bytes() }, `${what} ended: ${describeExit(status)}`)
    if (status.error) return new ServiceUnavailableError('git is not available on this worker')
    const last = stderr.split('\n').filter(Boolean).pop()
    return new ChildFailedError(oneLine(`${what} failed${last ? `: ${last.replace(/^fatal: /, '')}` : ''}`))
  }
  return judge
}

/**
 * upload-pack's answer when its stdout comes as pooled chunks (pooled-read.ts): each chunk
 * written straight to the client socket and its buffer given back once written, no stream
 * stages between. The contract is streamChild's with `inBand`: nothing goes out before git's
 * first byte, so a git that fails first rejects (a one-line HTTP error); after it, a failure
 * is told inside the protocol at a packet boundary, else the response is cut. The reply is
 * taken over at the first byte (deliver.ts): the status line and the headers set on it go out then.
 */
export function sendChildChunks(req: FastifyRequest, reply: FastifyReply, child: Child, source: ChunkSource, what: string): Promise<FastifyReply> {
  const res = reply.raw
  const frames = new PktFrames()
  let bytes = 0
  const judge = attach(req, reply, child, what, () => bytes)
  const write = feedResponse(res, source)
  return new Promise<FastifyReply>((resolve, reject) => {
    let headed = false
    const head = (): void => {
      if (headed) return
      headed = true
      startChunks(reply)
      resolve(reply)
    }
    source.start({
      data(chunk, release) {
        head()
        bytes += chunk.length
        frames.feed(chunk)
        return write(chunk, release)
      },
      end() {
        void child.exited.then((status) => {
          const err = judge(status)
          if (!headed) {
            if (err) return reject(err)
            head()
          }
          if (!err) res.end()
          else if (frames.atBoundary()) res.end(frames.errorPacket(err.message))
          else res.destroy()
        })
      },
    })
  })
}

/**
 * A child that outlives its client once the request body is whole (receive-pack: the refs may
 * have moved, and what follows them must run): `bodyIn` says the body is in, `drain` keeps its
 * output read (a closed pipe would kill it), `timeoutMs` bounds how long it may run on.
 */
export interface Outlive {
  bodyIn: () => boolean
  drain: () => void
  timeoutMs: number
}

export interface StreamChildOptions {
  /** what to say when git fails before its first byte */
  what: string
  /** bytes the response starts with, sent only once git produced output or succeeded */
  prefix?: Buffer
  /** a transform git's output goes through first (report-status rewriting) */
  rewrite?: Transform
  /** report a failure after the first byte inside the protocol (upload-pack responses) */
  inBand?: boolean
  /** run to completion after the client left, once its request body is whole (receive-pack) */
  outliveOnceBodyIn?: { bodyIn: () => boolean; timeoutMs: number }
  /** our own refusal that ended git (a push over maxPushBytes), told inside the protocol in place of git's exit */
  refusal?: () => { error: Error; sideband: boolean } | undefined
}

/**
 * Ties a git child to the request: killed when the client goes away, its exit awaited, its
 * stderr logged, its output streamed with backpressure. Returns the stream to `reply.send`.
 */
export function streamChild(req: FastifyRequest, reply: FastifyReply, child: Child, opts: StreamChildOptions): Transform {
  const stdout = child.proc.stdout
  // With outliveOnceBodyIn, git's stdout is piped (not pipelined) into the stages: a client
  // gone destroys the stages, never the pipe git writes to; it is then read into the void.
  const keep = opts.outliveOnceBodyIn
  const pass = keep ? new PassThrough() : undefined
  const outlive: Outlive | undefined = keep && pass && {
    ...keep,
    // after the pipe's own clean-up (which pauses git's stdout when its destination closes)
    drain: () => {
      const discard = (): void => {
        stdout.unpipe()
        stdout.on('data', () => {})
        stdout.resume()
      }
      if (pass.destroyed) discard()
      else pass.once('close', discard)
    },
  }
  const judge = attach(req, reply, child, opts.what, () => out.bytes, undefined, 0, outlive)
  const out = new ChildOutput(child, judge, opts.prefix, opts.inBand ?? false, opts.refusal)
  let first: NodeJS.ReadableStream = stdout
  if (pass) {
    stdout.pipe(pass)
    stdout.once('error', (err) => pass.destroy(err))
    first = pass
  }
  const stages = opts.rewrite ? [first, opts.rewrite, out] : [first, out]
  pipeline(stages, () => { /* errors surface through `out` */ })
  return out
}
