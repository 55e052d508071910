/**
 * The worker's side of the spawn helper (helper-main.ts): one helper per worker process,
 * forked on first use, and one unix socket (abstract namespace) its spawns' stdio connect to.
 * `spawnViaHelper` returns at once with stand-in streams that are joined to the real sockets
 * as they connect. While no spawn is pending the helper is unref'd, so a short CLI command
 * still exits on its own.
 */
import { fork, type ChildProcess } from 'node:child_process'
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import { PassThrough, type Readable, type Writable } from 'node:stream'
import { pooledSocket, type BufferPool, type ChunkSink, type ChunkSource } from './pooled-read.js'
import { bareHandle } from './node-internals.js'
import { HELPER_PROTOCOL, MAX_TAG, parseStreamTag, stdoutTag, type HelperMessage, type SpawnRequest } from './helper-protocol.js'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const HELPER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helper-main.js')

export interface RawExit {
  code: number | null
  signal: NodeJS.Signals | null
  error?: Error
}

/** A process spawned by the helper, as the worker sees it. */
export interface RemoteProcess {
  stdin: Writable
  stdout: Readable
  stderr: Readable
  /** resolves with the pid, or undefined when the process could not start */
  started: Promise<number | undefined>
  /** resolves once the process exited and its stdout and stderr closed */
  exited: Promise<RawExit>
  /** with `pooledStdout`: stdout as pooled chunks (`stdout` is then empty) */
  stdoutChunks?: ChunkSource
  /** with `report`: what the process wrote to its fd 3 */
  report?: Readable
}

/** A ChunkSource for a socket that exists only once the helper is up. */
class LaterSource implements ChunkSource {
  private real: ChunkSource | undefined
  private sink: ChunkSink | undefined
  private gone = false
  set(real: ChunkSource): void {
    this.real = real
    if (this.gone) real.destroy()
    else if (this.sink) real.start(this.sink)
  }
  start(sink: ChunkSink): void {
    this.sink = sink
    if (this.real) this.real.start(sink)
    else if (this.gone) sink.end()
  }
  resume(): void { this.real?.resume() }
  destroy(): void {
    if (this.gone) return
    this.gone = true
    if (this.real) this.real.destroy()
    else this.sink?.end()
  }
}

interface Pending {
  started(pid: number | undefined): void
  attach(n: number, socket: net.Socket): void
  exit(status: RawExit): void
}

const pending = new Map<number, Pending>()
let nextId = 0
let helper: ChildProcess | undefined
let server: net.Server | undefined
let ready: Promise<void> | undefined
/** the helper's socket for stdout connections the worker opens (helper-main.ts) */
let stdoutAddress = ''

let warn: (message: string) => void = (message) => process.emitWarning(message)

/** Where the helper's warnings go (a feature it turned off, with why): the worker's log. */
export function onSpawnHelperWarning(fn: (message: string) => void): void {
  warn = fn
}

/** The spawn socket and the helper, started once. */
function start(): Promise<void> {
  if (ready) return ready
  const name = `vcs-worker-spawn-${process.pid}-${randomBytes(6).toString('hex')}`
  const address = `\0${name}` // Linux abstract namespace: no file, no path-length limit
  stdoutAddress = `${address}-stdout`
  const srv = net.createServer((socket) => route(socket))
  srv.unref()
  server = srv
  ready = new Promise<void>((resolve, reject) => {
    srv.once('error', reject)
    srv.listen(address, () => {
      const h = fork(HELPER, [name], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' })
      h.on('message', (m: HelperMessage) => {
        if ('warning' in m) return void warn(m.warning)
        if ('listening' in m) {
          // its stdout socket is up (or could not be): only now can spawns be asked for
          if (pending.size === 0) h.channel?.unref()
          const problem = !m.listening ? m.error : m.protocol !== HELPER_PROTOCOL ? `it speaks protocol ${m.protocol}, this worker ${HELPER_PROTOCOL}` : undefined
          if (problem === undefined) resolve()
          else {
            reject(new Error(`spawn helper: ${problem}`))
            h.kill()
          }
          return
        }
        const p = pending.get(m.id)
        if (!p) return
        if ('error' in m) p.exit({ code: null, signal: null, error: new Error(m.error) })
        else if ('pid' in m) p.started(m.pid)
        else p.exit({ code: m.code ?? null, signal: m.signal ?? null })
      })
      // The helper died (it should not): pending spawns fail; the next spawn starts a new one.
      h.on('exit', () => {
        helper = undefined
        ready = undefined
        server?.close()
        reject(new Error('spawn helper exited')) // before it listened: nothing waits forever
        for (const p of pending.values()) p.exit({ code: null, signal: null, error: new Error('spawn helper exited') })
      })
      h.unref()
      helper = h
    })
  })
  return ready
}

/** A connection from a spawned process: `<id>:<stream>\n`, then the stream itself. */
function route(socket: net.Socket): void {
  let head = Buffer.alloc(0)
  socket.on('error', () => {})
  const onData = (chunk: Buffer): void => {
    head = Buffer.concat([head, chunk])
    const nl = head.indexOf(0x0a)
    if (nl < 0) {
      if (head.length > MAX_TAG) socket.destroy()
      return
    }
    socket.off('data', onData)
    socket.pause()
    const tag = parseStreamTag(head.subarray(0, nl).toString('latin1'))
    const rest = head.subarray(nl + 1)
    if (rest.length) socket.unshift(rest)
    const p = tag && pending.get(tag.id)
    if (!tag || !p) socket.destroy()
    else p.attach(tag.n, socket)
  }
  socket.on('data', onData)
}

function settle(id: number): void {
  pending.delete(id)
  if (pending.size === 0) helper?.channel?.unref()
}

/** Spawns `bin args` through the helper; see RemoteProcess. */
export function spawnViaHelper(bin: string, args: string[], opts: { env: Record<string, string>; cwd?: string; nice?: number; pooledStdout?: BufferPool; stdoutSocket?: net.Socket; report?: boolean; prestart?: boolean }): RemoteProcess {
  const id = ++nextId
  const stdin = new PassThrough()
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const report = opts.report ? new PassThrough() : undefined
  let resolvePid!: (pid: number | undefined) => void
  const started = new Promise<number | undefined>((r) => { resolvePid = r })
  let resolveExit!: (s: RawExit) => void
  const exited = new Promise<RawExit>((r) => { resolveExit = r })
  let status: RawExit | undefined
  // the connections still to close: stderr, stdout unless it is a client's socket, the report
  let open = 1 + (opts.stdoutSocket ? 0 : 1) + (report ? 1 : 0)
  const pool = opts.pooledStdout
  const chunks = pool && !opts.stdoutSocket ? new LaterSource() : undefined
  // git's output comes as chunks, or goes to the client's socket: this stand-in stays empty
  if (chunks || opts.stdoutSocket) stdout.end()
  const maybeDone = (): void => {
    if (status && open <= 0) {
      settle(id)
      resolveExit(status)
    }
  }
  pending.set(id, {
    started: (pid) => resolvePid(pid),
    attach(n, socket) {
      if (n === 0) {
        // the worker's writes reach git's stdin with backpressure; git gone: the stand-in goes too
        socket.resume() // only the tag came this way; nothing else will
        socket.once('close', () => { stdin.unpipe(socket); stdin.destroy() })
        stdin.pipe(socket)
        return
      }
      const out = n === 1 ? stdout : n === 2 ? stderr : report
      if (!out || (n === 1 && opts.stdoutSocket)) return void socket.destroy() // not asked for
      socket.once('close', () => {
        if (!out.writableEnded && !out.destroyed) out.end()
        open--
        maybeDone()
      })
      // Nobody reads a stand-in that was destroyed (a response cut short): the socket, unpiped
      // and paused, would never see git's EOF and the spawn would never settle. Close it.
      if (out.destroyed) socket.destroy()
      else {
        out.once('close', () => socket.destroy())
        socket.pipe(out)
      }
    },
    exit(s) {
      if (status) return
      status = s
      if (s.error) {
        // it never started: no more connections will come
        resolvePid(undefined)
        open = 0
        chunks?.destroy()
        stdin.destroy()
        stdout.end()
        stderr.end()
        report?.end()
      }
      maybeDone()
    },
  })
  start().then(() => {
    helper!.channel?.ref()
    if (chunks && pool) {
      chunks.set(pooledSocket(stdoutAddress, pool, {
        onConnect: (s) => s.write(stdoutTag(id)),
        onClose: () => { open--; maybeDone() },
      }))
    }
    const msg: SpawnRequest = { id, bin, args, env: opts.env, cwd: opts.cwd, nice: opts.nice, stdoutFromWorker: chunks !== undefined, stdoutSent: opts.stdoutSocket !== undefined, report: report !== undefined, prestart: opts.prestart }
    if (!opts.stdoutSocket) return void helper!.send(msg)
    // The socket's bare TCP handle, not the net.Socket (node-internals.ts). keepOpen: the worker
    // keeps its copy, to answer on when git fails before its first byte and to close it in the end.
    const handle = bareHandle(opts.stdoutSocket)
    if (!handle) return void pending.get(id)?.exit({ code: null, signal: null, error: new Error('the client connection is closed') })
    helper!.send(msg, handle as unknown as net.Socket, { keepOpen: true }, (err) => {
      if (err) pending.get(id)?.exit({ code: null, signal: null, error: err })
    })
  }, (err: unknown) => pending.get(id)?.exit({ code: null, signal: null, error: err as Error }))
  return { stdin, stdout, stderr, started, exited, stdoutChunks: chunks, report }
}
