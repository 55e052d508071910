/**
 * Deep health checks, run in the background on an unref'd timer with a timeout each; the
 * endpoints only read the cached results, so a hundred balancers probing every second cost
 * nothing and never spawn a process. A check turns red after two failures in a row (one slow
 * probe does not flap the worker) and green after one success; a result older than three
 * intervals counts as failed. No check depends on another worker.
 */
import { statfs, writeFile, unlink, access, constants } from 'node:fs/promises'
import path from 'node:path'
import type { Config } from '../config.js'
import type { GitRunner } from '../git/spawn.js'
import type { HgPool } from '../hg/pool.js'
import type { Admission } from '../admission.js'

export type CheckName = 'repos_dir' | 'disk' | 'git_binary' | 'git_canary' | 'hg_children' | 'draining' | 'saturation'

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
export const ALL_CHECKS: CheckName[] = [...new Set([...GIT_CHECKS, ...HG_CHECKS])]

/** A check read at the moment of the probe from in-memory state: a message when it fails. */
type LiveCheck = () => string | undefined

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([p, new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms) })])
    .finally(() => clearTimeout(timer))
}

export class HealthChecker {
  private readonly checks = new Map<CheckName, CheckState>()
  private readonly live = new Map<CheckName, LiveCheck>()
  private timer: NodeJS.Timeout | undefined
  draining = false
  readonly names = ALL_CHECKS

  constructor(private readonly config: Config, git: GitRunner, private readonly pool: HgPool | undefined, canaryDir: string, admission: Admission) {
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
    // In-memory state, read at probe time: a drain or a full queue shows at once.
    this.live.set('draining', () => (this.draining ? 'draining' : undefined))
    this.live.set('saturation', () => (admission.saturated
      ? `saturated: ${admission.active} heavy requests running, ${admission.queued} queued`
      : undefined))
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
  }

  /** Cached results for a set of checks; `ok` only if every one is green and fresh. */
  report(names: CheckName[]): { ok: boolean; checks: Record<string, CheckResult> } {
    const now = Date.now()
    const checks: Record<string, CheckResult> = {}
    let ok = true
    for (const name of names) {
      const live = this.live.get(name)
      if (live) {
        const failure = live()
        if (failure) ok = false
        checks[name] = { status: failure ? 'fail' : 'ok', last_run: new Date(now).toISOString(), duration_ms: 0, message: failure ?? 'accepting work' }
        continue
      }
      const c = this.checks.get(name)!
      const stale = now - c.lastRun > 3 * this.config.healthIntervalMs
      const good = c.ok && !stale
      if (!good) ok = false
      checks[name] = {
        status: good ? 'ok' : 'fail',
        last_run: c.lastRun ? new Date(c.lastRun).toISOString() : null,
        duration_ms: c.durationMs,
        message: stale ? `stale: last run ${Math.round((now - c.lastRun) / 1000)} s ago` : c.message,
      }
    }
    return { ok, checks }
  }
}
