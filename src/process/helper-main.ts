/**
 * The spawn helper: a small process the worker forks once, which starts git for it. Node's
 * `child_process.spawn` forks the calling process and waits for the exec: 6-11 ms of a blocked
 * event loop in a worker of 100 MB (bench:health). Here that cost falls on this process. git's
 * stdin, stdout and stderr are unix sockets connected to the worker's spawn socket (each first
 * tagged with the spawn's id and stream number), so no byte of git's passes through here.
 * A spawn with `stdoutFromWorker` gets as stdout a connection the worker opened to this
 * process's own socket instead (tagged with the id): a socket the worker connected can read
 * into pooled buffers (pooled-read.ts), one it accepted cannot. A spawn of the pack relay gets
 * as stdout the client's own connection, sent with the request over the IPC channel (SCM_RIGHTS),
 * and as fd 3 one more connection to the worker, for the relay's report.
 *
 * A spawn marked `prestart` (the file relay, `pack-relay --file`) is served by a process started
 * ahead of it when one is waiting (`pack-relay --wait`): the client's connection goes to it over
 * its IPC channel and its arguments on its stdin, and another is started for the next request.
 * A fork and exec from this process cost a download ~5-7 ms before its first byte; this <1 ms.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import net from 'node:net'
import { setPriority } from 'node:os'
import path from 'node:path'
import type { BareHandle } from './node-internals.js'
import { HELPER_PROTOCOL, MAX_TAG, parseStdoutTag, streamTag, type HelperMessage, type SpawnRequest, type StreamNumber } from './helper-protocol.js'
import { sendHandle, spareSelfTest, tookIt } from './relay-spare.js'


/** the worker's spawn socket, in Linux's abstract namespace (the worker passes the name without its NUL) */
const SOCKET = `\0${process.argv[2]!}`

/** To the worker; once it is gone (the channel can close between the check and the write) there is no one to tell. */
const send = (msg: HelperMessage): void => {
  if (process.connected) process.send!(msg, undefined, undefined, () => { /* EPIPE: the worker is gone */ })
}

/** One connection to the worker, tagged; paused so this process never reads a byte of it. */
function connect(id: number, n: StreamNumber): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(SOCKET)
    s.pause()
    s.once('error', reject)
    s.once('connect', () => s.write(streamTag(id, n), () => resolve(s)))
  })
}

/** where the worker connects stdout for spawns that ask (`<name>-stdout`) */
const STDOUT_SOCKET = `${SOCKET}-stdout`
/** a worker's connection waits this long for its spawn request, and a request this long for the connection */
const MATCH_MS = 10_000

/** stdout connections by spawn id: the connection and the request can come in either order */
const stdoutWaits = new Map<number, { socket?: net.Socket; take?: (s: net.Socket) => void; timer: NodeJS.Timeout }>()

function stdoutEntry(id: number, onTimeout: () => void): { socket?: net.Socket; take?: (s: net.Socket) => void; timer: NodeJS.Timeout } {
  let e = stdoutWaits.get(id)
  if (!e) {
    e = { timer: setTimeout(() => { stdoutWaits.delete(id); onTimeout() }, MATCH_MS) }
    stdoutWaits.set(id, e)
  }
  return e
}

/** The connection the worker opened for spawn `id`'s stdout. */
function workerStdout(id: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const e = stdoutEntry(id, () => reject(new Error('the worker never connected stdout')))
    if (e.socket) {
      clearTimeout(e.timer)
      stdoutWaits.delete(id)
      resolve(e.socket)
    } else e.take = resolve
  })
}

// The worker writes only its tag on these connections (git's output flows the other way), so
// reading up to the newline takes nothing that belongs to git.
const stdoutServer = net.createServer({ pauseOnConnect: true }, (s) => {
  s.on('error', () => {})
  let head = ''
  const onData = (chunk: Buffer): void => {
    head += chunk.toString('latin1')
    const nl = head.indexOf('\n')
    if (nl < 0) {
      if (head.length > MAX_TAG) s.destroy()
      return
    }
    s.off('data', onData)
    s.pause()
    const id = parseStdoutTag(head.slice(0, nl))
    if (id === undefined || nl !== head.length - 1) return void s.destroy()
    const e = stdoutEntry(id, () => s.destroy())
    if (e.take) {
      clearTimeout(e.timer)
      stdoutWaits.delete(id)
      e.take(s)
    } else e.socket = s
  }
  s.on('data', onData)
  s.resume()
})

/** pids of the children still running (each leads its own process group) */
const running = new Set<number>()

/** A connection's bare handle, as Node passes one sent without its net.Socket (node-internals.ts). */
type Handle = BareHandle

/** processes started ahead (`bin --wait`) by bin, at most SPARES each, none until a request asked for one */
const spares = new Map<string, ChildProcess[]>()
const SPARES = 2

/** per bin, whether its spares passed the start-up self-test (run once, at the first request that could use one) */
const spareChecks = new Map<string, Promise<boolean>>()

/**
 * Keeps SPARES of `bin --wait` waiting, once a self-test showed that one serves a connection
 * handed over on this runtime; after a failed test the spares stay off (one warning to the
 * worker) and every download spawns its relay, as it would without spares.
 */
function startSpares(bin: string): void {
  let check = spareChecks.get(bin)
  if (!check) {
    check = spareSelfTest(bin).then(() => true, (err: Error) => {
      send({ warning: `relay spares are off: ${path.basename(bin)} --wait failed its self-test on Node ${process.version} (${err.message}); each download starts its own relay` })
      return false
    })
    spareChecks.set(bin, check)
  }
  void check.then((ok) => { if (ok) fillSpares(bin) })
}

function fillSpares(bin: string): void {
  const list = spares.get(bin) ?? []
  spares.set(bin, list)
  while (list.length < SPARES) {
    const child = spawn(bin, ['--wait'], { env: {}, cwd: '/', detached: true, stdio: ['pipe', 'ignore', 'pipe', 'pipe', 'ipc'], serialization: 'json' })
    const drop = (): void => { const i = list.indexOf(child); if (i >= 0) list.splice(i, 1) }
    child.once('error', drop)
    child.once('exit', drop)
    child.stdin!.on('error', () => {})
    if (child.pid === undefined) return // cannot start (the error event says why): spawns go the usual way
    list.push(child)
  }
}

/**
 * Request `m` served by a spare: the client's connection sent, the arguments written, and its
 * stderr and report passed on to the worker (they are pipes to this process: connecting to
 * the worker first would cost the download ~1.5 ms before its first byte). The spare, or
 * undefined when none was waiting or it went away before it took the connection (it wrote
 * nothing to the client: the caller spawns as usual, with the same socket).
 */
async function useSpare(m: SpawnRequest, sent: Handle): Promise<ChildProcess | undefined> {
  const child = spares.get(m.bin)?.shift()
  const refill = (): undefined => void setImmediate(() => startSpares(m.bin))
  if (!child) return refill()
  try {
    const took = tookIt(child)
    took.catch(() => {}) // awaited below; a failed send rejects first
    await sendHandle(child, sent)
    await took // until then it wrote nothing: a spare gone now leaves the request to a spawn
  } catch {
    child.kill('SIGKILL') // waiting, not relaying: it wrote nothing
    return refill()
  }
  child.stdin!.end(m.args.map((a) => `${a}\0`).join(''))
  // The spare closes the channel itself once it acknowledged the handle (a disconnect from
  // this side before the acknowledgement leaves Node's channel bookkeeping waiting forever).
  //
  // Its replacement starts once it is done: a fork and exec here during the transfer took a
  // CPU from it and from its client on 2 cores (the other spare serves a download meanwhile).
  child.once('exit', refill)
  Promise.all([connect(m.id, 2), connect(m.id, 3)]).then(([stderr, report]) => {
    child.stdio[2]!.pipe(stderr)
    child.stdio[3]!.pipe(report)
  }, (err: Error) => {
    child.kill('SIGKILL')
    send({ id: m.id, error: err.message })
  })
  return child
}

/** Tells the worker that `child` runs for request `id`, and when it exits. */
function track(id: number, child: ChildProcess, nice?: number): void {
  if (nice) {
    try { setPriority(child.pid!, nice) } catch { /* gone already, or not permitted */ }
  }
  send({ id, pid: child.pid! }) // track is called only for a child that started
  running.add(child.pid!)
  const exited = (code: number | null, signal: NodeJS.Signals | null): void => {
    running.delete(child.pid!)
    send({ id, code, signal })
  }
  if (child.exitCode !== null || child.signalCode !== null) exited(child.exitCode, child.signalCode)
  else child.once('exit', exited)
}

process.on('message', (m: SpawnRequest, sent?: Handle) => {
  void (async () => {
    let sockets: net.Socket[] = []
    try {
      if (m.stdoutSent && !sent) throw new Error('the socket for stdout did not arrive')
      if (m.prestart && sent && m.report) {
        const spare = await useSpare(m, sent)
        if (spare) {
          sent.close() // never shut down: the worker and the relay share the connection
          return track(m.id, spare, m.nice)
        }
      }
      const streams: StreamNumber[] = m.report ? [0, 1, 2, 3] : [0, 1, 2]
      const got = await Promise.allSettled(streams.map((n) => {
        if (n === 1 && sent) return Promise.resolve(sent as unknown as net.Socket) // spawn takes a bare handle as stdio
        return n === 1 && m.stdoutFromWorker ? workerStdout(m.id) : connect(m.id, n)
      }))
      sockets = got.flatMap((g) => (g.status === 'fulfilled' ? [g.value] : []))
      const failed = got.find((g) => g.status === 'rejected')
      if (failed) throw failed.reason
      const child = spawn(m.bin, m.args, { env: m.env, cwd: m.cwd, detached: true, stdio: sockets })
      for (const s of sockets) {
        if (s === (sent as unknown)) sent!.close() // never shut down: the worker and the child share the connection
        else s.destroy() // git has them now; this process keeps no copy
      }
      if (child.pid === undefined) {
        child.once('error', (err) => send({ id: m.id, error: err.message }))
        return
      }
      track(m.id, child, m.nice)
    } catch (err) {
      for (const s of sockets) if (s !== (sent as unknown)) s.destroy()
      try { sent?.close() } catch { /* closed already */ }
      send({ id: m.id, error: (err as Error).message })
    }
  })()
})

stdoutServer.listen(STDOUT_SOCKET, () => send({ listening: true, protocol: HELPER_PROTOCOL }))
stdoutServer.once('error', (err) => send({ listening: false, error: err.message }))

// The worker is gone (exit or kill -9): children lose their reader and writer with it and end
// on EOF or EPIPE, but one that waits on something else (a receive-pack whose repository hook
// sleeps) would not notice. SIGTERM to each group ends them now; git removes a push's
// quarantine on SIGTERM (tmp-objdir.c), which it cannot on SIGKILL.
process.on('disconnect', () => {
  for (const list of spares.values()) for (const child of list) child.kill('SIGKILL')
  for (const pid of running) {
    try { process.kill(-pid, 'SIGTERM') } catch { /* gone already */ }
  }
  process.exit(0)
})
