/**
 * Starts a pool on one machine: N worker processes sharing one repos dir and one data dir
 * (so one auth store), a stand-in for the web application, and HAProxy in front with the
 * configuration of haproxy-config.ts. `npm run pool`, the pool tests and bench:pool use it. Stops
 * only what it started, by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import net from 'node:net'
import { createWriteStream, readFileSync, mkdirSync, openSync, closeSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { haproxyConfig, type PoolSpec } from './haproxy-config.js'
import { listenOn } from '../../src/http/listen.js'

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js')

export interface PoolOptions {
  spec: PoolSpec
  reposDir: string
  /** the data dir every worker shares (auth store, temp files) */
  dataDir: string
  /** where haproxy.cfg and the logs go */
  runDir: string
  /** more `serve` flags for every worker */
  workerArgs?: string[]
  /** more `serve` flags for worker i only */
  argsOf?: (i: number) => string[]
  haproxyBin?: string
}

/** One row of HAProxy's `show stat`, the columns we use. */
export interface StatRow {
  pxname: string
  svname: string
  status: string
  /** sessions: current, total, per second over the last second */
  scur: number
  stot: number
  rate: number
  weight: number
  check_status: string
  agent_status: string
  hrsp_5xx: number
}

const hostPort = (a: string): { host: string; port: number } => {
  const i = a.lastIndexOf(':')
  return { host: a.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(a.slice(i + 1)) }
}

/** Sends one command to HAProxy's admin socket and returns the answer. */
export function adminCommand(socketPath: string, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath, () => s.end(`${command}\n`))
    let out = ''
    s.setTimeout(timeoutMs, () => s.destroy(new Error(`admin socket: no answer to ${command}`)))
    s.on('data', (c: Buffer) => { out += c.toString() })
    s.on('end', () => resolve(out))
    s.on('error', reject)
  })
}

/** `show stat` as rows. */
export async function showStat(socketPath: string): Promise<StatRow[]> {
  const lines = (await adminCommand(socketPath, 'show stat')).split('\n').filter(Boolean)
  const header = lines.shift()?.replace(/^# /, '').split(',') ?? []
  return lines.map((line) => {
    const cells = line.split(',')
    const get = (name: string) => cells[header.indexOf(name)] ?? ''
    const num = (name: string) => Number(get(name) || 0)
    return {
      pxname: get('pxname'), svname: get('svname'), status: get('status'),
      scur: num('scur'), stot: num('stot'), rate: num('rate'), weight: num('weight'),
      check_status: get('check_status'), agent_status: get('agent_status'), hrsp_5xx: num('hrsp_5xx'),
    }
  })
}

/** A free loopback port from the OS (for HAProxy's own listeners, which cannot report one). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

/** The worker's own one-line reason (`vcs-worker: cannot listen on ...`) from its log file. */
function workerError(logFile: string): string | undefined {
  try {
    return readFileSync(logFile, 'utf8').split('\n').filter((l) => l.startsWith('vcs-worker: ')).pop()?.slice('vcs-worker: '.length)
  } catch {
    return undefined
  }
}

/** Thrown by a check of `until` when waiting longer cannot help (the process exited). */
class GaveUp extends Error {}

async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    try {
      if (await check()) return
    } catch (err) {
      if (err instanceof GaveUp) throw err
      /* not yet: the socket is not there */
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}

/** Waits for a process we started to exit; SIGKILL after `graceMs`. Resolves with its exit code. */
export function stopChild(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode)
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs)
    proc.once('exit', (code) => { clearTimeout(timer); resolve(code) })
    proc.kill(signal)
  })
}

export class Pool {
  readonly workers: (ChildProcess | undefined)[] = []
  haproxy: ChildProcess | undefined
  private web: http.Server | undefined
  /** requests the web stand-in answered */
  webHits = 0

  private constructor(readonly opts: PoolOptions) {}

  static async start(opts: PoolOptions): Promise<Pool> {
    const pool = new Pool(opts)
    try {
      mkdirSync(opts.runDir, { recursive: true })
      mkdirSync(path.dirname(opts.spec.adminSocket), { recursive: true })
      await pool.startWeb()
      await Promise.all(opts.spec.workers.map((_, i) => pool.startWorker(i)))
      await pool.startHaproxy()
    } catch (err) {
      await pool.stop()
      throw err
    }
    return pool
  }

  get url(): string {
    return `http://${this.opts.spec.frontend}`
  }

  /** The web application's stand-in: a page for every URL; counts what it served. */
  async startWeb(): Promise<void> {
    const { host, port } = hostPort(this.opts.spec.web)
    const server = http.createServer((req, res) => {
      this.webHits++
      req.resume()
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!doctype html><title>web</title><p>the web application (stand-in)</p>\n')
    })
    await listenOn(server, host, port)
    this.web = server
  }

  async stopWeb(): Promise<void> {
    const server = this.web
    this.web = undefined
    if (!server) return
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
  }

  /** Starts worker `i` (again) and waits for it to listen. */
  async startWorker(i: number): Promise<ChildProcess> {
    const w = this.opts.spec.workers[i]!
    const { host, port } = hostPort(w.address)
    const logFile = path.join(this.opts.runDir, `${w.name}.log`)
    const log = openSync(logFile, 'a')
    const proc = spawn(process.execPath, [CLI, 'serve', '--host', host, '--port', String(port), '--agent-port', String(w.agentPort),
      ...(w.healthPort !== undefined ? ['--health-port', String(w.healthPort)] : []),
      '--repos', this.opts.reposDir, '--data', this.opts.dataDir, '--trusted-proxies', '127.0.0.1', ...(this.opts.workerArgs ?? []), ...(this.opts.argsOf?.(i) ?? [])],
    // its own process group: Ctrl-C at a terminal reaches the pool, which stops the workers in order
    { stdio: ['ignore', 'pipe', log], detached: true })
    closeSync(log)
    // stdout (its log lines) goes to the log file; only the start-up lines are kept to read
    const logStream = createWriteStream(logFile, { flags: 'a' })
    let out = ''
    proc.stdout!.on('data', (c: Buffer) => {
      logStream.write(c)
      if (out.length < 4096) out += c.toString()
    })
    proc.once('exit', () => logStream.end())
    this.workers[i] = proc
    await until(() => {
      if (proc.exitCode !== null) throw new GaveUp(`worker ${w.name} exited: ${workerError(logFile) ?? out.trim().split('\n').pop()}`)
      return out.includes('agent-check on') // the last start-up line
    }, 20_000, `worker ${w.name} to listen`).catch((err: unknown) => {
      proc.kill('SIGKILL')
      if (err instanceof GaveUp) throw err // its own reason says it
      let tail = ''
      try { tail = readFileSync(logFile, 'utf8').slice(-1500) } catch { /* no log */ }
      throw new Error(`${(err as Error).message}; its output: ${out.slice(-500)} ${tail}`)
    })
    // A worker asked for port 0 tells which ports it got: the pool (and HAProxy's config) uses them.
    const listening = /listening on http:\/\/\S+:(\d+)\//.exec(out)
    const agent = /agent-check on \S+:(\d+)/.exec(out)
    const health = /health checks on http:\/\/\S+:(\d+)\//.exec(out)
    if (port === 0 && listening) w.address = `${host}:${listening[1]}`
    if (w.agentPort === 0 && agent) w.agentPort = Number(agent[1])
    if (w.healthPort === 0 && health) w.healthPort = Number(health[1])
    return proc
  }

  /** Signals worker `i` and waits for its exit; resolves with its exit code. */
  async stopWorker(i: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const proc = this.workers[i]
    if (!proc) return null
    const code = await stopChild(proc, signal, signal === 'SIGKILL' ? 0 : 600_000)
    this.workers[i] = undefined
    return code
  }

  private async startHaproxy(): Promise<void> {
    const cfg = path.join(this.opts.runDir, 'haproxy.cfg')
    writeFileSync(cfg, haproxyConfig(this.opts.spec))
    const log = openSync(path.join(this.opts.runDir, 'haproxy.log'), 'a')
    this.haproxy = spawn(this.opts.haproxyBin ?? 'haproxy', ['-db', '-f', cfg], { stdio: ['ignore', log, log], detached: true })
    closeSync(log)
    const proc = this.haproxy
    const logFile = path.join(this.opts.runDir, 'haproxy.log')
    await until(() => {
      if (proc.exitCode !== null) {
        // HAProxy's own reason (`Starting frontend vcs: cannot bind socket (Address already in use) [127.0.0.1:8000]`)
        let alerts: string[] = []
        try { alerts = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes('[ALERT]')).map((l) => l.replace(/^.*?\[ALERT\]\s*(\(\d+\)\s*)?:?\s*/, '')) } catch { /* no log */ }
        throw new GaveUp(`haproxy exited (${proc.exitCode})${alerts.length ? `: ${alerts.slice(0, 3).join('; ')}` : ''}; see ${logFile}`)
      }
      return this.allUp()
    }, 30_000, 'every server of the pool to be UP')
  }

  /** true when every worker is UP in servers-git and servers-hg, and the web server too. */
  async allUp(): Promise<boolean> {
    const rows = await showStat(this.opts.spec.adminSocket)
    const servers = rows.filter((r) => r.svname !== 'FRONTEND' && r.svname !== 'BACKEND' && r.pxname.startsWith('servers-'))
    return servers.length === 2 * this.opts.spec.workers.length + 1 && servers.every((r) => r.status.startsWith('UP'))
  }

  /** HAProxy's status of one server in one backend (UP, DOWN, DRAIN, NOLB, MAINT...). */
  async status(backend: string, server: string): Promise<string> {
    const row = (await showStat(this.opts.spec.adminSocket)).find((r) => r.pxname === backend && r.svname === server)
    return row?.status ?? 'missing'
  }

  async stats(): Promise<StatRow[]> {
    return showStat(this.opts.spec.adminSocket)
  }

  /** Stops HAProxy, the workers (SIGTERM; SIGKILL after 15 s) and the web stand-in. */
  async stop(): Promise<void> {
    if (this.haproxy) await stopChild(this.haproxy, 'SIGTERM', 5000)
    await Promise.all(this.workers.map((p) => (p ? stopChild(p, 'SIGINT', 15_000) : null)))
    this.workers.length = 0
    await this.stopWeb()
  }
}
