/**
 * The spawn helper: a small process the worker forks once, which starts git for it. Node's
 * `child_process.spawn` forks the calling process and waits for the exec: 6-11 ms of a blocked
 * event loop in a worker of 100 MB (bench:health). Here that cost falls on this process. git's
 * stdin, stdout and stderr are unix sockets connected to the worker's spawn socket (each first
 * tagged with the spawn's id and stream number), so no byte of git's passes through here.
 */
import { spawn } from 'node:child_process'
import net from 'node:net'
import { setPriority } from 'node:os'

interface SpawnRequest {
  id: number
  bin: string
  args: string[]
  env: Record<string, string>
  cwd?: string
  nice?: number
}

/** the worker's spawn socket, in Linux's abstract namespace (the worker passes the name without its NUL) */
const SOCKET = `\0${process.argv[2]!}`

/** To the worker; once it is gone (the channel can close between the check and the write) there is no one to tell. */
const send = (msg: object): void => {
  if (process.connected) process.send!(msg, undefined, undefined, () => { /* EPIPE: the worker is gone */ })
}

/** One connection to the worker, tagged; paused so this process never reads a byte of it. */
function connect(id: number, n: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(SOCKET)
    s.pause()
    s.once('error', reject)
    s.once('connect', () => s.write(`${id}:${n}\n`, () => resolve(s)))
  })
}

/** pids of the children still running (each leads its own process group) */
const running = new Set<number>()

process.on('message', (m: SpawnRequest) => {
  void (async () => {
    let sockets: net.Socket[] = []
    try {
      sockets = await Promise.all([0, 1, 2].map((n) => connect(m.id, n)))
      const child = spawn(m.bin, m.args, { env: m.env, cwd: m.cwd, detached: true, stdio: sockets })
      for (const s of sockets) s.destroy() // git has them now; this process keeps no copy
      if (child.pid === undefined) {
        child.once('error', (err) => send({ id: m.id, error: err.message }))
        return
      }
      if (m.nice) {
        try { setPriority(child.pid, m.nice) } catch { /* gone already, or not permitted */ }
      }
      send({ id: m.id, pid: child.pid })
      running.add(child.pid)
      child.once('exit', (code, signal) => {
        running.delete(child.pid!)
        send({ id: m.id, code, signal })
      })
    } catch (err) {
      for (const s of sockets) s.destroy()
      send({ id: m.id, error: (err as Error).message })
    }
  })()
})

// The worker is gone (exit or kill -9): children lose their reader and writer with it and end
// on EOF or EPIPE, but one that waits on something else (a receive-pack whose repository hook
// sleeps) would not notice. SIGTERM to each group ends them now; git removes a push's
// quarantine on SIGTERM (tmp-objdir.c), which it cannot on SIGKILL.
process.on('disconnect', () => {
  for (const pid of running) {
    try { process.kill(-pid, 'SIGTERM') } catch { /* gone already */ }
  }
  process.exit(0)
})
