/**
 * Shared child-process helpers: spawn in an own process group, escalate SIGTERM to SIGKILL,
 * always await the exit, keep a bounded tail of stderr. Every child of the worker process is
 * started here (git/, hg/ and the relays build on it); the spawn helper (helper-main.ts, with
 * relay-spare.ts) runs the spawns it is asked for, and helper-client.ts forks that helper.
 */
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { setPriority } from 'node:os'
import type { Socket } from 'node:net'
import { PassThrough, Writable, type Readable } from 'node:stream'
import { spawnViaHelper } from './helper-client.js'
import type { BufferPool, ChunkSource } from './pooled-read.js'

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
  /** set when the process could not be started at all (e.g. ENOENT) */
  error?: Error
}

/** A child's standard streams. */
export interface ChildStreams {
  readonly stdin: Writable
  readonly stdout: Readable
  readonly stderr: Readable
}

export interface Child {
  readonly proc: ChildStreams
  /** the child's IPC channel (Node's `send`, which can pass sockets), when spawned with `ipc` */
  readonly channel?: ChildProcess
  /** undefined until known (through the helper: a moment after the spawn) or when it never started */
  readonly pid: number | undefined
  /** resolves once the process exited and its stdio closed; never rejects */
  readonly exited: Promise<ExitStatus>
  /** with `pooledStdout` through the helper: stdout as pooled chunks (`proc.stdout` is then empty) */
  readonly stdoutChunks?: ChunkSource
  /** with `report`: what the child writes to its fd 3 */
  readonly report?: Readable
  /** the last bytes the process wrote to stderr */
  stderr(): string
  /** SIGTERM the whole group, SIGKILL it after the grace period if it is still there */
  kill(): void
  readonly killed: boolean
}

interface SpawnBase {
  env: Record<string, string>
  cwd?: string
  killGraceMs: number
  stderrLimit?: number
  /**
   * niceness for the child (and what it forks later, such as pack-objects): below the worker's
   * own, so the event loop that answers health probes and light requests keeps its CPU when
   * git saturates the machine. 0 leaves the priority alone.
   */
  nice?: number
}

/**
 * stdout a pipe (`proc.stdout`). Through the spawn helper (`viaHelper`: the fork does not block
 * this process's event loop), or directly, where Node's IPC channel can be the child's fd 3
 * (`ipc`: `Child.channel`).
 */
export type PipeSpawn = SpawnBase & { stdout?: 'pipe' } & ({ viaHelper?: boolean; ipc?: false } | { viaHelper?: false; ipc: true })

/** stdout read into this pool's buffers (`Child.stdoutChunks`; `proc.stdout` is then empty): through the helper only. */
export type PooledSpawn = SpawnBase & { viaHelper: true; stdout: { pool: BufferPool } }

/**
 * stdout is this connection itself (a relay writes the answer); `proc.stdout` is then empty,
 * and fd 3 is open for the child's report (`Child.report`). `prestart`: a `bin --wait` the
 * helper started ahead may serve it (helper-main.ts; the file relay), through the helper only.
 */
export type SocketSpawn = SpawnBase & ({ viaHelper?: boolean; stdout: { socket: Socket; prestart?: false } } | { viaHelper: true; stdout: { socket: Socket; prestart: true } })

export type SpawnOptions = PipeSpawn | PooledSpawn | SocketSpawn

/**
 * Spawns `bin args` without a shell, in its own process group, with a bounded stderr buffer;
 * with `viaHelper`, through the spawn helper (helper-client.ts), so the fork does not block the
 * worker's event loop. Where stdout goes decides what the child has: pooled chunks, or a report.
 */
export function spawnChild(bin: string, args: string[], opts: PooledSpawn): Child & { readonly stdoutChunks: ChunkSource }
export function spawnChild(bin: string, args: string[], opts: SocketSpawn): Child & { readonly report: Readable }
export function spawnChild(bin: string, args: string[], opts: PipeSpawn): Child
export function spawnChild(bin: string, args: string[], opts: SpawnOptions): Child {
  const out = opts.stdout === undefined || opts.stdout === 'pipe' ? undefined : opts.stdout
  const pool = out && 'pool' in out ? out.pool : undefined
  const stdoutSocket = out && 'socket' in out ? out.socket : undefined
  const prestart = out && 'socket' in out ? out.prestart === true : false
  const ipc = 'ipc' in opts && opts.ipc === true
  const reportFd = stdoutSocket !== undefined
  const limit = opts.stderrLimit ?? 8192
  let tail = ''
  let done = false
  let killed = false
  let killTimer: NodeJS.Timeout | undefined
  let pid: number | undefined
  let proc: ChildStreams
  let stdoutChunks: ChunkSource | undefined
  let report: Readable | undefined
  let exited: Promise<ExitStatus>
  if (opts.viaHelper) {
    const remote = spawnViaHelper(bin, args, { env: opts.env, cwd: opts.cwd, nice: opts.nice, pooledStdout: pool, stdoutSocket, report: reportFd, prestart })
    stdoutChunks = remote.stdoutChunks
    report = remote.report
    proc = remote
    void remote.started.then((p) => {
      pid = p
      if (p !== undefined && killed && !done) signalGroup(p, 'SIGTERM') // killed before the helper answered
    })
    exited = remote.exited.then((status) => {
      done = true
      if (killTimer) clearTimeout(killTimer)
      return status
    })
  } else {
    const fd3 = ipc ? ['ipc' as const] : reportFd ? ['pipe' as const] : []
    const direct = spawn(bin, args, { env: opts.env, cwd: opts.cwd, detached: true, stdio: ['pipe', stdoutSocket ?? 'pipe', 'pipe', ...fd3] })
    if (stdoutSocket) {
      // the child writes to the connection itself: an empty stand-in for its stdout
      const none = new PassThrough()
      none.end()
      proc = { stdin: direct.stdin!, stdout: none, stderr: direct.stderr! }
    } else proc = direct as ChildProcessWithoutNullStreams // stdin, stdout and stderr are pipes either way
    if (reportFd) report = direct.stdio[3] as Readable
    pid = direct.pid
    // Set before the child had time to exec and fork: its children inherit the niceness.
    if (opts.nice && direct.pid !== undefined) {
      try { setPriority(direct.pid, opts.nice) } catch { /* gone already, or not permitted: run at normal priority */ }
    }
    // A child that never started emits 'error' and then maybe no 'close': settle on either.
    exited = new Promise<ExitStatus>((resolve) => {
      direct.once('error', (error) => {
        if (direct.pid === undefined) {
          done = true
          resolve({ code: null, signal: null, error })
        }
      })
      direct.once('close', (code, signal) => {
        done = true
        if (killTimer) clearTimeout(killTimer)
        resolve({ code, signal })
      })
    })
  }
  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', (s: string) => {
    tail = (tail + s).slice(-limit)
  })
  // Writes into a child that already exited fail with EPIPE; the exit status tells the story.
  proc.stdin.on('error', () => {})
  const child: Child = {
    proc,
    channel: ipc && !opts.viaHelper ? proc as ChildProcess : undefined,
    stdoutChunks,
    report,
    get pid() { return pid },
    exited,
    stderr: () => tail.trim(),
    get killed() { return killed },
    kill() {
      if (done || killed) return
      killed = true
      if (pid !== undefined) signalGroup(pid, 'SIGTERM') // else: as soon as the helper tells the pid
      killTimer = setTimeout(() => { if (!done && pid !== undefined) signalGroup(pid, 'SIGKILL') }, opts.killGraceMs)
      killTimer.unref()
    },
  }
  return child
}

/** What a child run to completion gave. */
export interface Completed {
  status: ExitStatus
  /** stdout, at most `maxOutput` bytes (`keep: 'tail'`: its last bytes) */
  stdout: Buffer
  /** stdout went past `maxOutput` (`keep: 'head'`: the child was killed for it) */
  overflowed: boolean
}

/**
 * Runs a started child to completion: `input` on its stdin, then EOF; stdout collected up to
 * `maxOutput` bytes. `keep: 'head'` (the default) kills a child whose output goes past the
 * bound; `keep: 'tail'` lets it run and keeps the last bytes. The one way the worker waits for a
 * command's answer; stderr's tail is always `child.stderr()`.
 */
export async function runToCompletion(child: Child, opts: { input?: string | Buffer; maxOutput?: number; keep?: 'head' | 'tail' } = {}): Promise<Completed> {
  const max = opts.maxOutput ?? 1024 * 1024
  const keepTail = opts.keep === 'tail'
  child.proc.stdin.on('error', () => { /* a child that exits without reading its input */ })
  child.proc.stdin.end(opts.input)
  let chunks: Buffer[] = []
  let size = 0
  let overflowed = false
  child.proc.stdout.on('data', (c: Buffer) => {
    size += c.length
    if (size <= max) return void chunks.push(c)
    overflowed = true
    if (!keepTail) return child.kill()
    chunks = [Buffer.concat([...chunks, c]).subarray(-max)]
    size = chunks[0]!.length
  })
  const status = await child.exited
  return { status, stdout: Buffer.concat(chunks), overflowed }
}

/** Signals a process group; a group that is already gone is not an error. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    try { process.kill(pid, signal) } catch { /* already gone */ }
  }
}

/** Describes an exit for logs and one-line errors. */
export function describeExit(status: ExitStatus): string {
  if (status.error) return status.error.message
  if (status.signal) return `killed by ${status.signal}`
  return `exit code ${status.code}`
}

/**
 * A Writable that feeds a child's stdin with backpressure and, once the child stops reading
 * (exited, EPIPE), swallows the rest: the request is still read to its end, so the client that
 * writes everything before reading gets the child's answer instead of a reset.
 */
export function stdinSink(child: Child): Writable {
  const stdin = child.proc.stdin
  let gone = false
  const markGone = (): void => { gone = true }
  stdin.once('error', markGone)
  stdin.once('close', markGone)
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (gone || stdin.destroyed) return cb()
      if (stdin.write(chunk)) return cb()
      const resume = (): void => { stdin.off('drain', resume); stdin.off('close', resume); cb() }
      stdin.on('drain', resume)
      stdin.on('close', resume)
    },
    final(cb) {
      // Wait until stdin has handed every byte to the pipe: this sink finishing lets the
      // pipeline end, and a stdin destroyed with bytes still queued would give git an early EOF.
      if (gone || stdin.destroyed) return cb()
      const done = (): void => { stdin.off('finish', done); stdin.off('close', done); cb() }
      stdin.on('finish', done)
      stdin.on('close', done)
      stdin.end()
    },
    destroy(err, cb) {
      // Only an aborted feed cuts git off; a finished one already closed stdin in final().
      if (err && !stdin.destroyed) stdin.destroy()
      cb(err)
    },
  })
}

/** True while a process of this pid exists on this host (EPERM: it exists, someone else's). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
