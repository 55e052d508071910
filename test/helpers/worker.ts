/**
 * Test helpers: a real worker on 127.0.0.1:0 over a temp copy of repos-fixture/, real git
 * and hg clients with a private HOME and fixed dates, and process accounting.
 */
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { randomBytes } from 'node:crypto'
import { spawn, type ChildProcess } from 'node:child_process'
import { Writable } from 'node:stream'
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config/load.js'
import { loggerOptions } from '../../src/log.js'
import { openStore } from '../../src/auth/open.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { hashPassword } from '../../src/auth/password.js'
import type { AuthStore, Level } from '../../src/auth/store.js'

/** the checkout root (tests run from dist/test/...) */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
export const FIXTURES = path.join(ROOT, 'repos-fixture')
export const CLI = path.join(ROOT, 'dist/src/cli/main.js')
/**
 * scrypt at a cost for tests of something else than the KDF: the parameters are stored with
 * each hash, so these users verify in about a millisecond instead of 0.7 s (production,
 * N=2^17). test/auth/access.test.ts keeps users at production cost where the cost is the point.
 */
export const TEST_SCRYPT = { N: 2 ** 10, r: 8, p: 1 }
/** the CLI's environment in tests: password hashes (and the unknown-user hash) at TEST_SCRYPT's cost */
export const CLI_ENV: NodeJS.ProcessEnv = { PATH: process.env.PATH, VCS_WORKER_KDF_COST: '10' }

/** The subset of tap's Test the helpers need. */
export interface T {
  testdir(fixture?: unknown): string
  teardown(fn: () => unknown): void
}

export interface Worker {
  url: string
  /** the URL with credentials in it, as a user would paste it */
  urlAs(user: string, secret: string): string
  store: AuthStore
  /** adds a user with a password and grants (repo name → level) */
  addUser(name: string, password: string, grants?: Record<string, Level>): Promise<void>
  port: number
  app: FastifyInstance
  config: Config
  reposDir: string
  dir: string
  /** log lines written so far, parsed */
  logs(): Record<string, unknown>[]
  /** raw log text written so far */
  logText(): string
}

/** Copies the fixtures into a fresh temp dir and returns its paths. */
export async function fixtureDir(t: T): Promise<{ dir: string; reposDir: string; dataDir: string }> {
  // Our own temp dir, removed by a teardown registered before the worker's: tap runs teardowns
  // last-registered first, so the worker is closed before its dir goes (tap's testdir() is
  // removed before any teardown, while a worker may still write its health probe file there).
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vcsw-t-'))
  t.teardown(() => rm(dir, { recursive: true, force: true, maxRetries: 3 }))
  const reposDir = path.join(dir, 'repos')
  const dataDir = path.join(dir, 'data')
  await cp(FIXTURES, reposDir, { recursive: true })
  for (const sub of ['home', 'tmp']) await mkdir(path.join(dataDir, sub), { recursive: true })
  // an install's store, as `npm start` leaves it: admin commands refuse a data dir without one
  openSqliteStore(path.join(dataDir, 'auth.sqlite')).close()
  await mkdir(path.join(dir, 'client-home'), { recursive: true })
  return { dir, reposDir, dataDir }
}

/** The fixture repos, as the auth store names them. */
export const FIXTURE_REPOS: [string, 'git' | 'hg'][] = [['demo.git', 'git'], ['team/project.git', 'git'], ['empty.git', 'git'], ['demo-hg', 'hg']]

/**
 * Starts the app in-process on 127.0.0.1:0 with config flags on top of the defaults. The
 * fixture repos are public unless `opts.private`.
 */
export async function startWorker(t: T, flags: Record<string, string | boolean> = {}, opts: { private?: boolean; reposDir?: string } = {}): Promise<Worker> {
  const { dir, reposDir: ownRepos, dataDir } = await fixtureDir(t)
  const reposDir = opts.reposDir ?? ownRepos
  const config = loadConfig({ flags: { repos: reposDir, data: dataDir, port: '0', 'log-level': 'debug', 'hg-processes': '0', 'kdf-cost': '10', ...flags }, env: { PATH: process.env.PATH } })
  // the store the config names (SQLite in the data dir, or a PostgreSQL URL from flags)
  const store = await openStore(config)
  for (const [name, kind] of FIXTURE_REPOS) await store.setRepo(name, kind, !opts.private)
  let text = ''
  const sink = new Writable({ write(chunk, _e, cb) { text += chunk.toString(); cb() } })
  const logger = pino(loggerOptions(config.logLevel), sink)
  const app = await buildApp(config, { logger, store })
  await app.listen({ host: '127.0.0.1', port: 0, backlog: 2048 })
  t.teardown(async () => {
    await app.close()
    await store.close()
  })
  const port = (app.server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port}`,
    urlAs: (user, secret) => `http://${encodeURIComponent(user)}:${encodeURIComponent(secret)}@127.0.0.1:${port}`,
    store,
    async addUser(name, password, grants = {}) {
      await store.addUser(name, await hashPassword(password, TEST_SCRYPT))
      for (const [repo, level] of Object.entries(grants)) await store.setGrant(name, repo, level)
    },
    port,
    app,
    config,
    reposDir,
    dir,
    logText: () => text,
    logs: () => text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>),
  }
}

export interface RunResult {
  code: number | null
  stdout: string
  stderr: string
}

/** The environment of a user's git: private HOME, no prompts, fixed identity and dates. */
export function clientEnv(home: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    LC_ALL: 'C',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_TERMINAL_PROMPT: '0',
    GIT_AUTHOR_NAME: 'Test User', GIT_AUTHOR_EMAIL: 'test@example.invalid',
    GIT_COMMITTER_NAME: 'Test User', GIT_COMMITTER_EMAIL: 'test@example.invalid',
    GIT_AUTHOR_DATE: '2025-01-01T00:00:00Z', GIT_COMMITTER_DATE: '2025-01-01T00:00:00Z',
    HGPLAIN: '1',
    HGUSER: 'Test User <test@example.invalid>',
    ...extra,
  }
}

/** Runs a command to completion and collects its output (never throws on a non-zero exit). */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => { stdout += c })
    child.stderr.on('data', (c) => { stderr += c })
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${cmd} ${args.join(' ')} timed out`)) }, opts.timeoutMs ?? 120_000)
    child.on('error', (err) => { clearTimeout(timer); reject(err) })
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input)
  })
}

/** A git client bound to a test dir's HOME. */
export function gitClient(dir: string, extra: Record<string, string> = {}) {
  const env = clientEnv(path.join(dir, 'client-home'), extra)
  return (args: string[], cwd = dir, opts: { timeoutMs?: number; input?: string } = {}) => run('git', args, { cwd, env, ...opts })
}

/** Processes whose command line or working dir contains `marker` (e.g. a test's temp dir), with their state. */
export async function processesMatching(marker: string): Promise<{ pid: number; state: string; cmd: string }[]> {
  const found: { pid: number; state: string; cmd: string }[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const cmd = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0').join(' ')
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => '')
      if ((cmd.includes(marker) || cwd.startsWith(marker)) && Number(entry) !== process.pid) found.push({ pid: Number(entry), state, cmd })
      else if (state === 'Z' && stat.includes('(git') && Number(stat.slice(stat.lastIndexOf(')') + 4).split(' ')[0]) === process.pid) {
        found.push({ pid: Number(entry), state, cmd: stat }) // a git child of ours nobody reaped
      }
    } catch { /* gone */ }
  }
  return found
}

/** Adds `big.git` to the repos dir: one commit of `mib` MiB of random bytes; returns the commit id. */
export async function addBigRepo(dir: string, reposDir: string, mib = 40): Promise<string> {
  const git = gitClient(dir)
  const src = path.join(dir, 'big-src')
  await git(['init', '-q', '-b', 'main', src])
  await writeFile(path.join(src, 'blob.bin'), randomBytes(mib * 1024 * 1024))
  await git(['add', 'blob.bin'], src)
  await git(['commit', '-q', '-m', 'big'], src)
  const r = await git(['clone', '-q', '--bare', src, path.join(reposDir, 'big.git')])
  if (r.code !== 0) throw new Error(`making big.git failed: ${r.stderr}`)
  await rm(src, { recursive: true, force: true })
  return (await git(['rev-parse', 'HEAD'], path.join(reposDir, 'big.git'))).stdout.trim()
}

/** Polls `check` until it returns true or the deadline passes. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}

/** Starts `vcs-worker serve` as its own process and waits for its listening line. */
export async function spawnWorker(t: T, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ url: string; proc: ChildProcess; output: () => string }> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--port', '0', ...args], { env: { ...CLI_ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  proc.stderr!.on('data', (c) => { out += c })
  t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
  await waitFor(() => /listening on (http:\/\/\S+?)\/ /.test(out) || proc.exitCode !== null, 15_000, 'worker to listen')
  const m = /listening on (http:\/\/\S+?)\/ /.exec(out)
  if (!m) throw new Error(`worker did not start: ${out}`)
  return { url: m[1]!, proc, output: () => out }
}

export interface RawResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

/** An HTTP request with the path exactly as given (fetch would normalise `..` and `%2e`). */
export function rawRequest(port: number, method: string, rawPath: string, headers: Record<string, string> = {}, body?: Buffer | string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: rawPath, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** The script of a git that just runs the real one; tests remove and rewrite it to break git. */
export const PASS_THROUGH_GIT = '#!/bin/sh\nexec git "$@"\n'

/**
 * Writes a pass-through git wrapper into a temp dir outside the test dir (startWorker wipes
 * the test dir) and returns its path; the dir goes away with the test.
 */
export async function gitWrapper(t: T, script = PASS_THROUGH_GIT): Promise<string> {
  const bin = await mkdtemp(path.join(os.tmpdir(), 'vcsw-git-'))
  t.teardown(() => rm(bin, { recursive: true, force: true }))
  const wrapper = path.join(bin, 'git-wrapper')
  await writeFile(wrapper, script.replaceAll('@DIR@', bin))
  await chmod(wrapper, 0o755)
  return wrapper
}

export interface Gate {
  /** the git wrapper to pass as --git-bin */
  bin: string
  /** while closed, the held git processes wait before they start; pushes only with `pushes` */
  close(opts?: { pushes?: boolean }): Promise<void>
  open(): Promise<void>
}

/**
 * A git wrapper that holds, while its gate file exists, every protocol v0 upload-pack RPC
 * (a v0 clone or fetch: no GIT_PROTOCOL), and with the push gate every receive-pack RPC,
 * before git starts. Ref
 * advertisements, health checks and protocol v2 requests pass at once. Tests use it to keep
 * work in flight for as long as they need, without timing guesses.
 */
export async function gateWrapper(t: T): Promise<Gate> {
  const bin = await gitWrapper(t, `#!/bin/sh
case " $* " in
  *" --advertise-refs "*) ;;
  *" receive-pack "*) while [ -e @DIR@/push-gate ]; do sleep 0.05; done ;;
  *" upload-pack "*) [ -z "$GIT_PROTOCOL" ] && while [ -e @DIR@/gate ]; do sleep 0.05; done ;;
esac
exec git "$@"
`)
  const gate = path.join(path.dirname(bin), 'gate')
  const pushGate = path.join(path.dirname(bin), 'push-gate')
  return {
    bin,
    close: async (opts = {}) => {
      await writeFile(gate, '')
      if (opts.pushes) await writeFile(pushGate, '')
    },
    open: async () => {
      await rm(gate, { force: true })
      await rm(pushGate, { force: true })
    },
  }
}

/** One value of a metric line in Prometheus text, e.g. metric(text, 'vcs_queue_length'); 0 when absent. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[4])
  }
  return sum
}

/** Mounts a tmpfs of `size` (`3m`) on `dir` (created; tests run as root) for the test's life: a disk that fills. */
export async function smallFilesystem(t: T, dir: string, size: string): Promise<void> {
  await mkdir(dir, { recursive: true })
  const mounted = await run('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir])
  if (mounted.code !== 0) throw new Error(`mounting a ${size} filesystem on ${dir} (tests run as root): ${mounted.stderr}`)
  t.teardown(() => run('umount', ['-l', dir]))
}
