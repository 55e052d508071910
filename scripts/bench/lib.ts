/**
 * Shared benchmark plumbing: start our worker as its own process, time commands, sample RSS,
 * run wrk, and print a table of ratios. Every loop here is bounded in count and time, and all
 * traffic goes to 127.0.0.1.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
export const CLI = path.join(ROOT, 'dist/src/cli/main.js')

/** Runs a command, throws with its stderr on failure, returns stdout. */
export function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Buffer } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, input: opts.input, maxBuffer: 256 * 1024 * 1024 })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr?.toString().slice(-2000)}`)
  return r.stdout.toString()
}

export { freePort } from '../../tools/pool/launch.js'

/** Waits until a TCP port on 127.0.0.1 accepts an HTTP request. */
export async function waitHttp(url: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    try {
      await fetch(url)
      return
    } catch { await new Promise((r) => setTimeout(r, 100)) }
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms`)
}

export interface Started {
  url: string
  proc: ChildProcess
  /** what it printed on stdout so far (its start-up lines) */
  output(): string
  stop(): Promise<void>
}

/**
 * The command that runs `cmd args` on the given CPUs (taskset's list, e.g. '0'), when this
 * machine has taskset and more than one CPU; otherwise the command as it is. A process and
 * its load generator pinned to different cores no longer trade places on one core, which on
 * a 2-core machine is most of what a request-rate ratio's noise is.
 */
export function pinned(cpus: string | undefined, cmd: string, args: string[]): [string, string[]] {
  if (cpus === undefined || !canPin()) return [cmd, args]
  return ['taskset', ['-c', cpus, cmd, ...args]]
}
let pinnable: boolean | undefined
function canPin(): boolean {
  pinnable ??= os.cpus().length > 1 && spawnSync('taskset', ['-c', '0', 'true']).status === 0
  return pinnable
}

/** Starts `vcs-worker serve` on a free port and waits for its listening line; on `cpus` when given (see pinned). */
export async function startWorker(args: string[], env: NodeJS.ProcessEnv = {}, opts: { cpus?: string } = {}): Promise<Started> {
  const [cmd, argv] = pinned(opts.cpus, process.execPath, [CLI, 'serve', '--port', '0', '--log-level', 'warn', ...args])
  const proc = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  const until = Date.now() + 15_000
  while (!/listening on (http:\/\/\S+?)\/ /.test(out)) {
    if (Date.now() > until || proc.exitCode !== null) throw new Error(`worker did not start: ${out}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  const url = /listening on (http:\/\/\S+?)\/ /.exec(out)![1]!
  return { url, proc, output: () => out, stop: () => stopProcess(proc) }
}

/**
 * SIGTERM a process we started (and its process group, when it was spawned detached: fcgiwrap
 * and nginx fork workers), SIGKILL after 5 s, and wait for it, at most 10 s.
 */
export async function stopProcess(proc: ChildProcess): Promise<void> {
  const pid = proc.pid
  if (pid === undefined) return
  const signal = (s: NodeJS.Signals) => { try { process.kill(-pid, s) } catch { try { process.kill(pid, s) } catch { /* gone */ } } }
  const exited = proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once('exit', r))
  signal('SIGTERM')
  const t = setTimeout(() => signal('SIGKILL'), 5000)
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))])
  signal('SIGKILL') // whatever is left of the group
  clearTimeout(t)
}

/** Wall time of a command in ms; throws if it fails. */
export function timeIt(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): number {
  const t0 = process.hrtime.bigint()
  sh(cmd, args, opts)
  return Number(process.hrtime.bigint() - t0) / 1e6
}

/** Async wall time of a spawned command; with `stdout`, its last 4000 bytes of stdout too. */
export function timeAsync(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; stdout?: boolean } = {}): Promise<{ ms: number; code: number | null; stderr: string; stdout?: string }> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint()
    const p = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', opts.stdout ? 'pipe' : 'ignore', 'pipe'] })
    let stderr = ''
    let stdout = ''
    p.stderr!.on('data', (c) => { stderr = (stderr + c).slice(-4000) })
    p.stdout?.on('data', (c) => { stdout = (stdout + c).slice(-4000) })
    p.on('close', (code) => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, code, stderr, ...(opts.stdout ? { stdout } : {}) }))
  })
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** A process's CPU time so far (user + system), in clock ticks (100 Hz). */
export function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12])
}

/** Resident set size of a pid in bytes (0 when it is gone). */
export function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch { return 0 }
}

export interface WrkResult { rps: number; errors: number; p50Ms: number; p99Ms: number }

function wrkArgs(url: string, concurrency: number, seconds: number, headers: Record<string, string>): string[] {
  const args = ['-t', String(Math.min(2, concurrency)), '-c', String(concurrency), '-d', `${seconds}s`, '--timeout', '10s', '--latency']
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`)
  return [...args, url]
}

function parseWrk(out: string): WrkResult {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0)
  const errs = /Non-2xx or 3xx responses: (\d+)/.exec(out)
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const errors = Number(errs?.[1] ?? 0) + (sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0)
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out)
    if (!m) return NaN
    return Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 } as Record<string, number>)[m[2]!]!
  }
  return { rps, errors, p50Ms: pct('50'), p99Ms: pct('99') }
}

/** Requests per second, errors and latency percentiles (ms) from wrk at the given concurrency, bounded to `seconds`. */
export function wrk(url: string, concurrency: number, seconds: number, headers: Record<string, string> = {}, opts: { cpus?: string } = {}): WrkResult {
  return parseWrk(sh(...pinned(opts.cpus, 'wrk', wrkArgs(url, concurrency, seconds, headers))))
}

/** wrk without blocking this process's event loop (other work of the benchmark goes on meanwhile). */
export function wrkAsync(url: string, concurrency: number, seconds: number, headers: Record<string, string> = {}): Promise<WrkResult> {
  return new Promise((resolve, reject) => {
    const p = spawn('wrk', wrkArgs(url, concurrency, seconds, headers), { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    p.stdout!.on('data', (c) => { out += c })
    p.on('error', reject)
    p.on('close', (code) => (code === 0 ? resolve(parseWrk(out)) : reject(new Error(`wrk failed (${code})`))))
  })
}

/** Prints rows as an aligned table. */
export function table(rows: (string | number)[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)))
  return rows.map((r) => r.map((c, i) => String(c).padEnd(widths[i]!)).join('  ')).join('\n')
}

/** A deterministic large repo: thousands of commits, ~80 MB of incompressible pack. */
export function makeLargeRepo(dir: string): void {
  if (existsSync(path.join(dir, 'HEAD'))) return
  console.error('bench: generating the large repo (once)...')
  const tmp = `${dir}.tmp`
  rmSync(tmp, { recursive: true, force: true })
  sh('git', ['init', '-q', '--bare', tmp])
  let seed = 0x9e3779b9
  const rand = (n: number): Buffer => {
    const b = Buffer.allocUnsafe(n)
    for (let i = 0; i < n; i++) {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5
      b[i] = seed & 0xff
    }
    return b
  }
  const parts: Buffer[] = []
  const commits = 3000
  for (let c = 1; c <= commits; c++) {
    const blob = rand(24 * 1024 + (c % 7) * 1024)
    const msg = `commit ${c}\n`
    parts.push(Buffer.from(`commit refs/heads/main\ncommitter Bench <bench@example.invalid> ${1_700_000_000 + c * 60} +0000\ndata ${msg.length}\n${msg}`))
    if (c > 1) parts.push(Buffer.from(''))
    parts.push(Buffer.from(`M 100644 inline dir${c % 50}/file${c % 400}.bin\ndata ${blob.length}\n`), blob, Buffer.from('\n'))
    parts.push(Buffer.from(`M 100644 inline README\ndata ${`rev ${c}\n`.length}\nrev ${c}\n\n`))
  }
  sh('git', ['--git-dir', tmp, 'fast-import', '--quiet'], { input: Buffer.concat(parts) })
  sh('git', ['--git-dir', tmp, 'repack', '-adq'])
  sh('mv', [tmp, dir])
}


/**
 * Latency of GETs sent at a fixed rate (what balancers' probes are: paced, not a flood), over
 * keep-alive connections, for `seconds`. Percentiles in ms; a request that fails or answers
 * non-2xx counts as an error.
 */
export async function paced(url: string, perSecond: number, seconds: number): Promise<{ sent: number; errors: number; p50Ms: number; p99Ms: number; maxMs: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  const latencies: number[] = []
  let errors = 0
  const pending: Promise<void>[] = []
  const total = Math.round(perSecond * seconds)
  const t0 = performance.now()
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / perSecond
    const wait = due - performance.now()
    if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    pending.push(new Promise<void>((resolve) => {
      const start = performance.now()
      const req = http.get(url, { agent, timeout: 10_000 }, (res) => {
        res.resume()
        res.on('end', () => {
          if ((res.statusCode ?? 0) >= 300) errors++
          else latencies.push(performance.now() - start)
          resolve()
        })
      })
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.on('error', () => { errors++; resolve() })
    }))
  }
  await Promise.all(pending)
  agent.destroy()
  const s = latencies.sort((a, b) => a - b)
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN
  return { sent: total, errors, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: s[s.length - 1] ?? NaN }
}

/**
 * nginx in the foreground (its own process group, stopped by PID) with every file under `dir`,
 * listening on 127.0.0.1:port with `server` as the inside of its server block.
 */
export async function startNginx(dir: string, port: number, workers: number, server: string): Promise<{ url: string; stop(): Promise<void> }> {
  // as root, nginx's workers would run as nobody, who cannot enter the data dir (mode 0700): they
  // run as the user that owns the files they serve
  writeFileSync(path.join(dir, 'nginx.conf'), `${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; fastcgi_temp_path ${dir}/fcgi;
  proxy_temp_path ${dir}/proxy; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    ${server}
  }
}`)
  const nginx = spawn('nginx', ['-c', path.join(dir, 'nginx.conf'), '-p', dir], { stdio: 'inherit', detached: true })
  const url = `http://127.0.0.1:${port}`
  try {
    await waitHttp(url)
  } catch (err) {
    await stopProcess(nginx)
    throw err
  }
  return { url, stop: () => stopProcess(nginx) }
}

/**
 * The HTTP floor (http-floor.ts) on a free port; with `packHook`, its git runs pack-objects
 * through that hook (protected config from the environment, as `-c` would give).
 */
export async function startFloor(reposDir: string, packHook?: string): Promise<Started> {
  const env = packHook ? { ...process.env, GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'uploadpack.packObjectsHook', GIT_CONFIG_VALUE_0: packHook } : process.env
  const proc = spawn(process.execPath, [path.join(path.dirname(fileURLToPath(import.meta.url)), 'http-floor.js'), reposDir], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  const port = await new Promise<string>((resolve, reject) => {
    proc.stdout!.once('data', (c: Buffer) => resolve(c.toString().trim()))
    proc.once('exit', () => reject(new Error('the HTTP floor server did not start')))
  })
  return { url: `http://127.0.0.1:${port}`, proc, output: () => '', stop: () => stopProcess(proc) }
}

/** CPU ticks of a process and every live descendant, with what they reaped (cutime, cstime). */
export function treeTicks(pid: number): number {
  let total = 0
  const walk = (p: number): void => {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      total += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])
    } catch { return }
    for (const task of readdirSync(`/proc/${p}/task`)) {
      let kids = ''
      try { kids = readFileSync(`/proc/${p}/task/${task}/children`, 'utf8') } catch { /* gone */ }
      for (const k of kids.split(' ').filter(Boolean)) walk(Number(k))
    }
  }
  walk(pid)
  return total
}
