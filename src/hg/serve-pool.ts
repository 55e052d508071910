/**
 * The supervised pool of `hg serve` children. One hg process is bound by Python's GIL, so N
 * children are how a worker uses its cores. Each child is a small state machine
 * (starting → ready → draining → stopped), logged at every transition with its pid; it gets
 * traffic only after a real request to it succeeded; a child that exits is restarted with
 * backoff, and a crash loop opens a breaker instead of spinning. Children serve every repo
 * under the repos dir through one generated hgweb config, and carry a per-child secret that
 * our extension (vcsworker_ext.py) demands on every request.
 */
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/load.js'
import { spawnChild, type Child } from '../process/child.js'
import { hgEnv } from './spawn.js'
import { HandoffLine } from './handoff.js'
import { handoffWorks } from './handoff-check.js'

export type HgState = 'starting' | 'ready' | 'draining' | 'stopped'

export const EXTENSION = fileURLToPath(new URL('../../../src/hg/vcsworker_ext.py', import.meta.url))
const CRASH_WINDOW_MS = 60_000
const MAX_CRASHES = 5
const BREAKER_MS = 30_000

export interface HgChild {
  readonly id: number
  state: HgState
  pid?: number
  url?: URL
  secret: string
  inflight: number
  agent: http.Agent
  proc?: Child
  /** the IPC channel bundle downloads are handed over on (config hgHandoff) */
  handoff?: HandoffLine
  readyAt: number
  probeFailures: number
}

export class HgServePool {
  readonly children: HgChild[] = []
  private readonly crashes: number[] = []
  private probeTimer: NodeJS.Timeout | undefined
  private stopping = false
  restarts = 0
  /** bundle downloads may be handed over: hgHandoff is on and the start-up self-test passed */
  handoffVerified = false
  /** children started, and their exits by code or signal (for metrics) */
  spawns = 0
  readonly exits = new Map<string, number>()
  private readonly webConf: string

  constructor(private readonly config: Config, private readonly log: FastifyBaseLogger) {
    const dir = path.join(config.dataDir, 'hg')
    mkdirSync(dir, { recursive: true })
    this.webConf = path.join(dir, `web-${process.pid}.conf`)
    // `**` serves every repo below the dir, found again on each index refresh, so repos
    // created later are served without a restart.
    writeFileSync(this.webConf, `[paths]\n/ = ${config.reposDir}/**\n[web]\nrefreshinterval = 1\n`)
  }

  /** Starts every child; resolves when each is ready or has failed its first start. */
  async start(): Promise<void> {
    for (let id = 0; id < this.config.hgProcesses; id++) {
      this.children.push({ id, state: 'stopped', secret: '', inflight: 0, agent: new http.Agent({ keepAlive: true }), readyAt: 0, probeFailures: 0 })
    }
    const [verified] = await Promise.all([
      this.config.hgHandoff ? handoffWorks(this.config, EXTENSION, this.log) : false,
      ...this.children.map((c) => this.launch(c)),
    ])
    this.handoffVerified = verified === true
    this.probeTimer = setInterval(() => { void this.probeAll() }, this.config.hgProbeIntervalMs)
    this.probeTimer.unref()
  }

  /**
   * Probes every ready child with a real request; two failures in a row take it out of
   * rotation and replace it. A child just (re)started is left alone for one interval (cool-off).
   */
  private async probeAll(): Promise<void> {
    const now = Date.now()
    await Promise.all(this.children.map(async (c) => {
      if (c.state !== 'ready' || now - c.readyAt < this.config.hgProbeIntervalMs) return
      const status = await probe(c, Math.max(100, Math.min(3000, this.config.hgProbeIntervalMs - 50)))
      if (status === 200) {
        c.probeFailures = 0
        return
      }
      c.probeFailures++
      this.log.warn({ hg_child: c.id, child_pid: c.pid, status, failures: c.probeFailures }, 'hg child failed its probe')
      if (c.probeFailures >= 2) this.recycle(c, 'failed its probe twice')
    }))
  }

  /** The ready child with the fewest requests in flight. */
  pick(): HgChild | undefined {
    let best: HgChild | undefined
    for (const c of this.children) {
      // a closed channel is a dead child whose exit is not reported yet
      if (c.state !== 'ready' || (c.handoff && !c.handoff.usable)) continue
      if (!best || c.inflight < best.inflight) best = c
    }
    return best
  }

  /** Takes a stuck child out of rotation and kills it; its exit brings a fresh one. */
  recycle(c: HgChild, reason: string): void {
    if (c.state !== 'ready') return
    this.transition(c, 'draining', { reason })
    c.proc?.kill()
  }

  readyCount(): number {
    return this.children.filter((c) => c.state === 'ready').length
  }

  /** Drains and stops every child: out of rotation first, then SIGTERM, SIGKILL after the grace. */
  async stop(): Promise<void> {
    this.stopping = true
    if (this.probeTimer) clearInterval(this.probeTimer)
    await Promise.all(this.children.map(async (c) => {
      this.transition(c, 'draining')
      // downloads handed over are the child's to finish: the server's close did not wait for them
      await c.handoff?.idle()
      c.proc?.kill()
      await c.proc?.exited
      c.agent.destroy()
      this.transition(c, 'stopped')
    }))
  }

  /** A child's state change: debug when expected (start, stop), warn for an exit nobody asked for. */
  private transition(c: HgChild, state: HgState, detail: Record<string, unknown> = {}, level: 'debug' | 'warn' = 'debug'): void {
    if (c.state === state) return
    this.log[level]({ hg_child: c.id, child_pid: c.pid, from: c.state, to: state, ...detail }, 'hg child state')
    c.state = state
  }

  private async launch(c: HgChild): Promise<void> {
    if (this.stopping) return
    c.secret = randomBytes(32).toString('hex')
    const proc = spawnChild(this.config.hgBin, [
      'serve', '--web-conf', this.webConf, '--address', '127.0.0.1', '--port', '0', '--print-url',
      '-A', '/dev/null', '-E', '-', // the error log on stderr (ui.ferr), which the worker logs; /dev/stderr is a socket here (ENXIO)
      '--config', `extensions.vcsworker=${EXTENSION}`,
      '--config', 'web.push_ssl=false', '--config', 'web.allow-push=*',
      // Python's http.server refuses more than 100 headers (431); with hg's default 1 KiB per
      // X-HgArg header a discovery of many heads exceeds that. Advertising 16 KiB headers
      // (capability httpheader) makes clients send 16x fewer.
      '--config', 'server.maxhttpheaderlen=16384',
    ], {
      env: hgEnv(this.config, {
        VCS_WORKER_CHILD_SECRET: c.secret,
        VCS_WORKER_PID: String(process.pid),
        // the clonebundles capability (vcsworker_ext.py); the worker answers the command (clone-bundles.ts)
        ...(this.config.hgCloneBundles ? { VCS_WORKER_CLONEBUNDLES: '1' } : {}),
        // hg's lazy imports race between the threads of `hg serve` (hg 6.3: concurrent first
        // requests fail with "module 'mercurial.branchmap' has no attribute 'BranchMapCache'").
        HGDEMANDIMPORT: 'disable',
      }),
      killGraceMs: this.config.killGraceMs,
      nice: this.config.childNice,
      ipc: this.config.hgHandoff,
    })
    c.proc = proc
    c.pid = proc.pid
    c.handoff = proc.channel ? new HandoffLine(proc.channel, this.config.hgTimeoutMs, () => {
      // frozen with connections in hand: replaced, or (while stopping) just ended
      if (c.state === 'ready') this.recycle(c, 'silent on its channel past hgTimeoutMs')
      else proc.kill()
    }) : undefined
    c.url = undefined
    this.spawns++
    this.transition(c, 'starting')
    proc.proc.stdin.end()
    void proc.exited.then((status) => this.onExit(c, proc, status.code, status.signal))
    try {
      // Readiness comes from what `hg serve --print-url` prints, then a real request.
      const errorLog = this.errorLog(c, proc)
      proc.proc.stderr.on('data', errorLog)
      const url = await firstLine(proc, 15_000, errorLog)
      c.url = new URL(url.replace('//localhost:', '//127.0.0.1:'))
      const status = await probe(c)
      if (status !== 200) throw new Error(`probe answered ${status}`)
      if (c.proc === proc && c.state === 'starting') {
        c.readyAt = Date.now()
        c.probeFailures = 0
        this.transition(c, 'ready', { url: c.url.origin })
      }
    } catch (err) {
      this.log.error({ hg_child: c.id, child_pid: c.pid, err, stderr: proc.stderr() }, 'hg child failed to start')
      proc.kill()
    }
  }

  /**
   * The child's error log (`-E -`: its stdout after the URL line) into ours: what arrives
   * together (a traceback) is one entry, flushed after a quiet moment, at most 16 KiB.
   */
  private errorLog(c: HgChild, proc: Child): (text: string) => void {
    let pending = ''
    let timer: NodeJS.Timeout | undefined
    const flush = (): void => {
      timer = undefined
      const output = pending.trim()
      pending = ''
      // hg's own word for the SIGTERM of a stop we asked for
      if (this.stopping && output === 'killed!') return
      if (output) this.log.warn({ hg_child: c.id, child_pid: proc.pid, output }, 'hg serve error log')
    }
    return (text) => {
      pending = (pending + text).slice(-16 * 1024)
      if (!timer) {
        timer = setTimeout(flush, 100)
        timer.unref()
      }
    }
  }

  private onExit(c: HgChild, proc: Child, code: number | null, signal: string | null): void {
    const how = String(code ?? signal ?? 'unknown')
    this.exits.set(how, (this.exits.get(how) ?? 0) + 1)
    if (c.proc !== proc) return
    this.transition(c, 'stopped', { exit_code: code, signal }, this.stopping ? 'debug' : 'warn')
    if (this.stopping) return
    const now = Date.now()
    this.crashes.push(now)
    while (this.crashes.length && this.crashes[0]! < now - CRASH_WINDOW_MS) this.crashes.shift()
    const recent = this.crashes.length
    const delay = recent > MAX_CRASHES * this.children.length ? BREAKER_MS : Math.min(5000, 100 * 2 ** Math.min(recent, 6))
    if (delay === BREAKER_MS) this.log.error({ hg_child: c.id, crashes: recent }, 'hg children crash-looping: breaker open')
    this.restarts++
    setTimeout(() => { void this.launch(c) }, delay).unref()
  }
}

/**
 * Resolves with the first stdout line of a child (its URL), or rejects; what the child writes
 * after it (its error log: tracebacks, failed requests) goes to `rest`.
 */
function firstLine(child: Child, timeoutMs: number, rest: (text: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => reject(new Error('hg serve printed no URL')), timeoutMs)
    const onData = (c: Buffer): void => {
      buf += c.toString('utf8')
      const nl = buf.indexOf('\n')
      if (nl >= 0) {
        clearTimeout(timer)
        child.proc.stdout.off('data', onData)
        child.proc.stdout.setEncoding('utf8')
        child.proc.stdout.on('data', rest)
        if (buf.length > nl + 1) rest(buf.slice(nl + 1))
        resolve(buf.slice(0, nl).trim())
      }
    }
    child.proc.stdout.on('data', onData)
    void child.exited.then(() => { clearTimeout(timer); reject(new Error('hg serve exited before it was ready')) })
  })
}

/** A real request to a child's hgweb index, with its secret. */
export function probe(c: HgChild, timeoutMs = 5000): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: c.url!.hostname, port: c.url!.port, path: '/', agent: c.agent, headers: { 'x-vcs-worker-secret': c.secret }, timeout: timeoutMs }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(0))
  })
}
