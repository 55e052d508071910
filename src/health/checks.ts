/**
 * Deep health checks, run in the background on an unref'd timer with a timeout each; the
 * endpoints only read the cached results, so a hundred balancers probing every second cost
 * nothing and never spawn a process. A check turns red after two failures in a row (one slow
 * probe does not flap the worker) and green after one success; a stale result (staleAfterMs)
 * counts as failed. No check depends on another worker.
 */
import { statfs, writeFile, unlink, access, constants } from 'node:fs/promises'
import path from 'node:path'
import type { Config } from '../config/load.js'
import type { GitRunner } from '../git/spawn.js'
import type { HgServePool } from '../hg/serve-pool.js'
import type { Admission } from '../admission/admission.js'
import type { RequestStore } from '../auth/store.js'
import type { PackObjectsCache } from '../git/pack-cache.js'

export type CheckName = 'repos_dir' | 'disk' | 'git_binary' | 'git_canary' | 'hg_children' | 'auth_store' | 'pack_cache' | 'draining' | 'saturation'

export interface CheckResult {
  status: 'ok' | 'fail'
  last_run: string | null
  duration_ms: number
  message: string
}

interface CheckState {
  run: () => Promise<string>
  ok: boolean
  failures: number
  lastRun: number
  durationMs: number
  message: string
}

export const GIT_CHECKS: CheckName[] = ['repos_dir', 'disk', 'git_binary', 'git_canary', 'draining', 'saturation']
export const HG_CHECKS: CheckName[] = ['repos_dir', 'disk', 'hg_children', 'draining', 'saturation']
/**
 * What decides whether the worker can serve (the agent without a protocol uses these);
 * `/health/ready` adds the auth store, and the pack-objects cache, which is never red: a cache
 * that cannot be used is degraded (said in its message), clones are served without it. It is not in the git and hg sets: every worker of a pool
 * shares one store, so taking workers out of rotation when it fails would remove them all and
 * help no one; anonymous clones of public repos and cached credentials keep working.
 */
export const SERVING_CHECKS: CheckName[] = [...new Set([...GIT_CHECKS, ...HG_CHECKS])]
export const ALL_CHECKS: CheckName[] = [...SERVING_CHECKS, 'auth_store', 'pack_cache']

/**
 * Everything an answer to a probe needs, as plain data: the endpoints, the agent and the probe
 * thread (probe-thread.ts) all answer from one of these, so they can never disagree.
 */
export interface HealthSnapshot {
  /** a check result older than this is stale (see staleAfterMs) */
  staleAfterMs: number
  draining: boolean
  /** why the worker refuses heavy work, when its slots and queue are full */
  saturated?: string
  load: { active: number; queued: number; heavyLimit: number; queueLimit: number }
  checks: Partial<Record<CheckName, { ok: boolean; lastRun: number; durationMs: number; message: string }>>
}

export interface HealthReport {
  ok: boolean
  checks: Record<string, CheckResult>
}

/**
 * The report of a snapshot for a set of checks at time `now`; `ok` only if every one is green
 * and fresh. A stale result counts as failed: a worker whose checks stopped running (a wedged
 * event loop) goes red on its own.
 */
export function reportOf(snap: HealthSnapshot, names: CheckName[], now: number): HealthReport {
  const checks: Record<string, CheckResult> = {}
  let ok = true
  for (const name of names) {
    if (name === 'draining' || name === 'saturation') {
      const failure = name === 'draining' ? (snap.draining ? 'draining' : undefined) : snap.saturated
      if (failure) ok = false
      checks[name] = { status: failure ? 'fail' : 'ok', last_run: new Date(now).toISOString(), duration_ms: 0, message: failure ?? 'accepting work' }
      continue
    }
    const c = snap.checks[name] ?? { ok: false, lastRun: 0, durationMs: 0, message: 'not run yet' }
    const stale = now - c.lastRun > snap.staleAfterMs
    const good = c.ok && !stale
    if (!good) ok = false
    checks[name] = {
      status: good ? 'ok' : 'fail',
      last_run: c.lastRun ? new Date(c.lastRun).toISOString() : null,
      duration_ms: c.durationMs,
      message: stale && c.lastRun ? `stale: last run ${((now - c.lastRun) / 1000).toFixed(1)} s ago` : c.message,
    }
  }
  return { ok, checks }
}

/** The checks an endpoint reports, by its path; undefined for a path that is not one. */
export const ENDPOINT_CHECKS: Record<string, CheckName[]> = { '/health/git': GIT_CHECKS, '/health/hg': HG_CHECKS, '/health/ready': ALL_CHECKS }

/** The status and JSON body of a health endpoint. */
export function endpointAnswer(snap: HealthSnapshot, names: CheckName[], now: number): { code: 200 | 503; body: { status: 'ok' | 'fail'; failing: string[]; checks: Record<string, CheckResult> } } {
  const { ok, checks } = reportOf(snap, names, now)
  const failing = Object.entries(checks).filter(([, c]) => c.status === 'fail').map(([n]) => n)
  return { code: ok ? 200 : 503, body: { status: ok ? 'ok' : 'fail', failing, checks } }
}

/**
 * How old a result may be: three intervals, or one interval plus the check's timeout when that
 * is longer (a check may rightly take its whole timeout before its next result arrives).
 */
export function staleAfterMs(intervalMs: number, timeoutMs: number): number {
  return Math.max(3 * intervalMs, intervalMs + timeoutMs)
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([p, new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms) })])
    .finally(() => clearTimeout(timer))
}

export class HealthChecker {
  private readonly checks = new Map<CheckName, CheckState>()
  private timer: NodeJS.Timeout | undefined
  private isDraining = false
  readonly names = ALL_CHECKS
  /** called when a result may have changed: after each round of checks and at a drain */
  onChange: (() => void) | undefined

  constructor(private readonly config: Config, git: GitRunner, private readonly pool: HgServePool | undefined, canaryDir: string, private readonly admission: Admission, store: RequestStore, packCache?: PackObjectsCache) {
    const add = (name: CheckName, run: () => Promise<string>): void => {
      this.checks.set(name, { run, ok: false, failures: 0, lastRun: 0, durationMs: 0, message: 'not run yet' })
    }
    add('repos_dir', async () => {
      // read and write where repos live: a probe file under a hidden name no URL can reach
      await access(config.reposDir, constants.R_OK | constants.W_OK | constants.X_OK)
      const probe = path.join(config.reposDir, `.vcs-worker-probe-${process.pid}`)
      await writeFile(probe, 'probe\n')
      await unlink(probe)
      return 'readable and writable'
    })
    add('disk', async () => {
      const s = await statfs(config.reposDir)
      const free = s.bavail * s.bsize
      if (free < config.diskFreeFloorBytes) throw new Error(`${free} bytes free, floor ${config.diskFreeFloorBytes}`)
      if (s.ffree < config.inodesFreeFloor) throw new Error(`${s.ffree} inodes free, floor ${config.inodesFreeFloor}`)
      return `${Math.floor(free / 1048576)} MiB and ${s.ffree} inodes free`
    })
    add('git_binary', async () => (await git.exec(['--version'])).trim())
    add('git_canary', async () => {
      const out = await git.exec(['upload-pack', '--stateless-rpc', '--advertise-refs', '--', canaryDir])
      if (!out.endsWith('0000')) throw new Error('canary advertisement is malformed')
      return 'ref advertisement of the canary repo'
    })
    add('hg_children', async () => {
      if (!pool) throw new Error('hg is disabled (hgProcesses = 0)')
      const ready = pool.readyCount()
      if (ready === 0) throw new Error(`0 of ${pool.children.length} hg serve children ready`)
      return `${ready} of ${pool.children.length} hg serve children ready`
    })
    add('pack_cache', async () => (packCache ? packCache.probe() : 'off (packCache false)'))
    add('auth_store', async () => {
      try {
        return await store.ping()
      } catch (err) {
        throw new Error((err as { detail?: string }).detail ?? (err as Error).message)
      }
    })
  }

  get draining(): boolean {
    return this.isDraining
  }

  set draining(on: boolean) {
    this.isDraining = on
    this.onChange?.()
  }

  /** Runs every check now, then on the interval. */
  async start(): Promise<void> {
    await this.runAll()
    this.timer = setInterval(() => { void this.runAll() }, this.config.healthIntervalMs)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
  }

  async runAll(): Promise<void> {
    await Promise.all([...this.checks.values()].map(async (c) => {
      const t0 = performance.now()
      try {
        c.message = await withTimeout(c.run(), this.config.healthTimeoutMs)
        c.ok = true
        c.failures = 0
      } catch (err) {
        c.failures++
        c.message = (err as Error).message.split('\n')[0]!.slice(0, 200)
        if (c.failures >= 2 || c.lastRun === 0) c.ok = false // hysteresis: two failures in a row
      }
      c.lastRun = Date.now()
      c.durationMs = Math.round((performance.now() - t0) * 10) / 10
    }))
    this.onChange?.()
  }

  /** The state now; draining and saturation are read from memory, so they show at once. */
  snapshot(): HealthSnapshot {
    const a = this.admission
    const checks: HealthSnapshot['checks'] = {}
    for (const [name, c] of this.checks) checks[name] = { ok: c.ok, lastRun: c.lastRun, durationMs: c.durationMs, message: c.message }
    return {
      staleAfterMs: staleAfterMs(this.config.healthIntervalMs, this.config.healthTimeoutMs),
      draining: this.isDraining,
      saturated: a.saturated ? `saturated: ${a.active} heavy requests running, ${a.queued} queued` : undefined,
      load: { active: a.active, queued: a.queued, heavyLimit: a.limits.heavyLimit, queueLimit: a.limits.queueLimit },
      checks,
    }
  }

  /** Cached results for a set of checks; `ok` only if every one is green and fresh. */
  report(names: CheckName[]): HealthReport {
    return reportOf(this.snapshot(), names, Date.now())
  }
}
