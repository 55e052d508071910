/**
 * HAProxy's agent-check (HAProxy configuration manual, "agent-check"): HAProxy connects to a
 * TCP port, optionally sends its `agent-send` string, and reads one ASCII line of words:
 *
 *   `up ready 60% maxconn:80`   healthy; weight falls as the heavy slots and queue fill, so
 *                               HAProxy sends less to a busy worker before it is full
 *   `drain`                     draining (SIGTERM): weight 0, in-flight sessions finish
 *   `down#git_canary,disk`      a deep check fails; the reason shows on HAProxy's stats page
 *
 * The protocol asked comes from `agent-send`: `git` or `hg` answers for that protocol's
 * checks, anything else (or nothing within AGENT_READ_MS) for both. `maxconn` is the heavy
 * limit plus the queue: what the worker accepts before it answers 503. The answer is built
 * from cached state only; nothing is spawned.
 */
import net from 'node:net'
import { listenOn } from '../http/listen.js'
import { GIT_CHECKS, HG_CHECKS, SERVING_CHECKS, reportOf, type CheckName, type HealthSnapshot } from './checks.js'

const AGENT_READ_MS = 100

/** The agent's answer for `protocol` ('git', 'hg' or anything else for both). */
export function agentLine(snap: HealthSnapshot, protocol: string, now: number): string {
  if (snap.draining) return 'drain\n'
  const names: CheckName[] = protocol === 'git' ? GIT_CHECKS : protocol === 'hg' ? HG_CHECKS : SERVING_CHECKS
  const { checks } = reportOf(snap, names.filter((n) => n !== 'saturation'), now)
  const failing = Object.entries(checks).filter(([, c]) => c.status === 'fail').map(([n]) => n)
  if (failing.length) return `down#${failing.join(',')}\n`
  const { active, queued, heavyLimit, queueLimit } = snap.load
  const load = (active + queued) / (heavyLimit + queueLimit)
  const weight = Math.max(1, Math.round(100 * (1 - Math.min(1, load))))
  return `up ready ${weight}% maxconn:${heavyLimit + queueLimit}\n`
}

export class AgentServer {
  private server: net.Server | undefined

  /** `state` gives the snapshot to answer from at the moment of a probe */
  constructor(private readonly state: () => HealthSnapshot) {}

  /** Listens on host:port (0 = any free port); resolves with the port. */
  async start(host: string, port: number): Promise<number> {
    const server = net.createServer((socket) => this.answer(socket))
    server.maxConnections = 256
    this.server = server
    return listenOn(server, host, port)
  }

  async stop(): Promise<void> {
    const server = this.server
    if (!server) return
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private answer(socket: net.Socket): void {
    socket.on('error', () => {})
    socket.setTimeout(5_000, () => socket.destroy())
    let asked = ''
    let done = false
    const reply = (): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.end(agentLine(this.state(), asked.trim().split(/\s+/)[0]!.toLowerCase(), Date.now()))
    }
    const timer = setTimeout(reply, AGENT_READ_MS)
    socket.on('data', (chunk: Buffer) => {
      asked += chunk.toString('latin1')
      if (asked.includes('\n') || asked.length > 64) reply()
    })
    socket.on('end', reply)
  }
}
