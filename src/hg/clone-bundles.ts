/**
 * Clone bundles for hg: each repo keeps a stream bundle (store files as they
 * are: the fastest clone, for clients that support the repo's requirements) and a zstd bundle2
 * (for the rest), in REPO/.hg/clonebundles/, beside the repo on the shared storage, so every
 * worker of a pool lists and serves the same files. The children run Mercurial's clonebundles
 * extension, which advertises the capability; the worker answers the manifest itself (the
 * bundles that exist, at URLs under the repo's own URL as the client reached it), and serves the
 * files through its route table with the repo's own authorization (routes.ts). A clone applies
 * the bundle and pulls only what was pushed since.
 *
 * Made again after pushes: debounced (`hgCloneBundleDelayMs`), off the request path, at the
 * children's lower priority, one generation at a time in this worker, never below the disk
 * floor, at most one generation per repo at a time (in this process, and
 * across hosts through a lock file naming host and pid: one whose process is gone from this
 * host, or older than an hour, was left by a killed worker), skipped when the changelog and phases did not change. Each
 * file is written beside its final name and renamed over it: a download in progress keeps
 * reading the file it opened, and a listed file never disappears.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import path from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/load.js'
import { describeExit, processAlive, runToCompletion, spawnChild, type Child } from '../process/child.js'
import { hgEnv } from './spawn.js'
import { readRestricted } from './read-rules.js'

/** The files a repo's clone bundles may have: what the file route serves, and nothing else. */
export const BUNDLE_NAMES = ['stream-v2.hg', 'zstd-v2.hg'] as const
export type BundleName = (typeof BUNDLE_NAMES)[number]
export const isBundleName = (name: string): name is BundleName => (BUNDLE_NAMES as readonly string[]).includes(name)

const DIR = path.join('.hg', 'clonebundles')
const META = 'meta.json'
const LOCK = '.generating'
/** a generation lock older than this was left by a killed worker */
const LOCK_STALE_MS = 60 * 60_000

interface Meta {
  /** what the repo looked like when the bundles were made: changelog, phase roots and obsolescence markers (size and mtime) */
  state: string
  /** `heads`: the heads of what the bundle holds; it may be served only while each is (not stripped, secret or hidden) */
  bundles: { name: BundleName; spec: string; size: number; heads: string[] }[]
  generatedAt: number
}

/** A bundle as the manifest lists it. */
export type ListedBundle = Meta['bundles'][number]

/** how many repos' "still served?" answers are kept (one state each) */
const SERVED_CHECKS_KEPT = 1000

export interface CloneBundleStats {
  generations: number
  skipped: number
  failures: number
}

export class CloneBundles {
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly running = new Map<string, Promise<void>>()
  /** repos whose delay is over, waiting for the one generation this worker runs at a time */
  private readonly queue: string[] = []
  private readonly again = new Set<string>()
  private stopped = false
  /** repos whose bundles are made again even if the repo did not change (one was missing or cut) */
  private readonly remake = new Set<string>()
  /** per repo, the last state whose bundles were checked against what the repo serves, and the names that passed */
  private readonly servedChecks = new Map<string, { state: string; passed: Promise<Set<BundleName>> }>()
  /** the hg processes of the generations running, killed on stop (a partial bundle is never renamed into place) */
  private readonly children = new Set<Child>()
  readonly stats: CloneBundleStats = { generations: 0, skipped: 0, failures: 0 }

  constructor(private readonly config: Config, private readonly log: FastifyBaseLogger) {}

  /**
   * The bundles a repo may hand out now, for its manifest and its downloads: only files that are
   * there whole (one removed or cut by hand would make hg abort the clone, not fall back), and
   * only bundles that hold nothing the repo would not serve now. A bundle made before the repo
   * last changed is checked once per state: still listed after a push (a clone applies it and
   * pulls the rest), withdrawn after a strip, a rollback, a phase made secret or a changeset
   * hidden by an obsolescence marker, until it is made again. None yet, one missing, or the repo
   * changed since: a generation is scheduled.
   */
  async list(repoDir: string): Promise<ListedBundle[]> {
    const dir = path.join(repoDir, DIR)
    let meta: Meta
    try {
      meta = JSON.parse(await readFile(path.join(dir, META), 'utf8')) as Meta
    } catch {
      this.schedule(repoDir)
      return []
    }
    const whole = await Promise.all(meta.bundles.map(async (b) => isBundleName(b.name) && Array.isArray(b.heads) && (await stat(path.join(dir, b.name)).catch(() => undefined))?.size === b.size))
    if (whole.includes(false)) {
      this.log.warn({ repo_dir: repoDir }, 'hg clone bundles: a listed bundle is missing, has the wrong size or an old record; made again')
      this.remake.add(repoDir) // so the next generation does not skip an unchanged repo
      this.schedule(repoDir)
    }
    const present = meta.bundles.filter((_, i) => whole[i])
    const state = await repoState(repoDir)
    if (state === meta.state) return present
    this.schedule(repoDir) // the repo changed since (an empty one got its first changeset too): made again, later
    if (!present.length) return present
    const passed = await this.stillServed(repoDir, state, present)
    return present.filter((b) => passed.has(b.name))
  }

  /** The bundles whose heads the repo still serves in `state` (hg asked once per repo and state). */
  private stillServed(repoDir: string, state: string, bundles: ListedBundle[]): Promise<Set<BundleName>> {
    const known = this.servedChecks.get(repoDir)
    if (known?.state === state) return known.passed
    const heads = [...new Set(bundles.flatMap((b) => b.heads))]
    const passed = (heads.length ? this.servedAmong(repoDir, heads) : Promise.resolve(new Set<string>())).then(
      (served) => new Set(bundles.filter((b) => b.heads.every((h) => served.has(h))).map((b) => b.name)),
      (err: unknown) => {
        this.servedChecks.delete(repoDir) // asked again next time
        this.log.warn({ err, repo_dir: repoDir }, 'hg clone bundles: cannot tell what the repo serves; none listed')
        return new Set<BundleName>()
      },
    )
    this.servedChecks.delete(repoDir)
    this.servedChecks.set(repoDir, { state, passed })
    for (const oldest of this.servedChecks.keys()) {
      if (this.servedChecks.size <= SERVED_CHECKS_KEPT) break
      this.servedChecks.delete(oldest)
    }
    return passed
  }

  /**
   * Which of `nodes` the repo serves: present, visible (not hidden by obsolescence markers) and
   * not secret. A served changeset's ancestors are all served too (phases and visibility are
   * inherited that way), so a bundle is safe to hand out when each of its heads is.
   */
  private async servedAmong(repoDir: string, nodes: string[]): Promise<Set<string>> {
    const revset = `(${nodes.map((n) => `id(${n})`).join(' + ')}) - secret()`
    return new Set((await this.hg(repoDir, ['log', '-r', revset, '-T', '{node}\n'])).split('\n').filter(Boolean))
  }

  /** The manifest Mercurial's clonebundles command answers: one line per bundle, `URL BUNDLESPEC=...`. */
  async manifest(repoDir: string, repoUrl: string): Promise<string> {
    if (await readRestricted(repoDir)) return '' // hg judges who may read such a repo: the worker hands out no bundle of it
    return (await this.list(repoDir)).map((b) => `${repoUrl}/.hg/clonebundles/${b.name} BUNDLESPEC=${b.spec}\n`).join('')
  }

  /** The file of a bundle, when the repo may hand it out now (`list`); undefined when not. */
  async file(repoDir: string, name: BundleName): Promise<string | undefined> {
    if (await readRestricted(repoDir)) return undefined
    return (await this.list(repoDir)).some((b) => b.name === name) ? path.join(repoDir, DIR, name) : undefined
  }

  /** Makes the repo's bundles again after `hgCloneBundleDelayMs`; calls meanwhile are the same generation. */
  schedule(repoDir: string): void {
    if (this.stopped || this.timers.has(repoDir) || this.queue.includes(repoDir)) return
    if (this.running.has(repoDir)) {
      this.again.add(repoDir) // a push during a generation: once more after it
      return
    }
    const timer = setTimeout(() => {
      this.timers.delete(repoDir)
      this.queue.push(repoDir)
      this.pump()
    }, this.config.hgCloneBundleDelayMs)
    timer.unref()
    this.timers.set(repoDir, timer)
  }

  /**
   * Runs the queue one generation at a time: bundling costs a repo's size in CPU and disk, and
   * however many repos ask (a clone of each of a thousand repos schedules a thousand), this
   * worker makes one set of bundles at a time. Each repo is in the timers or the queue at most once.
   */
  private pump(): void {
    if (this.stopped || this.running.size > 0) return
    const repoDir = this.queue.shift()
    if (repoDir === undefined) return
    const run = this.generate(repoDir).catch((err: unknown) => {
      if (this.stopped) return // killed by stop()
      this.stats.failures++
      this.log.warn({ err, repo_dir: repoDir }, 'hg clone bundles: generation failed')
    }).finally(() => {
      this.running.delete(repoDir)
      if (this.again.delete(repoDir)) this.schedule(repoDir)
      this.pump()
    })
    this.running.set(repoDir, run)
  }

  /** Drops what is scheduled and stops what is running (its temp files removed). */
  async stop(): Promise<void> {
    this.stopped = true
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
    this.queue.length = 0
    for (const c of this.children) c.kill()
    await Promise.all(this.running.values())
  }

  private async generate(repoDir: string): Promise<void> {
    const dir = path.join(repoDir, DIR)
    await mkdir(dir, { recursive: true })
    const state = await repoState(repoDir)
    const previous = await readFile(path.join(dir, META), 'utf8').then((t) => JSON.parse(t) as Meta, () => undefined)
    const forced = this.remake.delete(repoDir)
    if (previous?.state === state && !forced) {
      this.stats.skipped++
      return
    }
    // bundles take about twice the repo's size: never below the disk floor the health checks keep
    const fs = await statfs(dir)
    if (fs.bavail * fs.bsize < this.config.diskFreeFloorBytes) {
      this.stats.skipped++
      this.log.warn({ repo_dir: repoDir, free_bytes: fs.bavail * fs.bsize }, 'hg clone bundles: not made, free disk space is under diskFreeFloorBytes')
      return
    }
    const lock = path.join(dir, LOCK)
    if (!(await takeLock(lock))) {
      this.log.info({ repo_dir: repoDir }, 'hg clone bundles: another worker is making them')
      return
    }
    const tmp = (name: string) => path.join(dir, `${name}.tmp-${process.pid}`)
    try {
      // what a generation killed midway left (the lock is ours: nobody else writes here now)
      for (const n of await readdir(dir)) if (n.includes('.tmp-')) await rm(path.join(dir, n), { force: true })
      const t0 = performance.now()
      const bundles: Meta['bundles'] = []
      // what each bundle holds: a stream bundle the store as it is (secret and hidden changesets
      // too), so it is made only when the store holds nothing else than what is served; a zstd
      // bundle what `hg bundle --all` sends, the served changesets
      const lines = (out: string) => out.split('\n').filter(Boolean).sort()
      const served = lines(await this.hg(repoDir, ['log', '-r', 'heads(not secret())', '-T', '{node}\n']))
      const stored = lines(await this.hg(repoDir, ['log', '--hidden', '-r', 'heads(all())', '-T', '{node}\n']))
      const wholeStoreServed = stored.join() === served.join() && (await this.hg(repoDir, ['log', '--hidden', '-r', 'secret()', '-l', '1', '-T', 'x'])) === ''
      for (const [name, type] of [['stream-v2.hg', 'none-v2;stream=v2'], ['zstd-v2.hg', 'zstd-v2']] as [BundleName, string][]) {
        if (name === 'stream-v2.hg' && !wholeStoreServed) continue
        if (!served.length) break // an empty repo (or all secret): nothing to bundle, and noted so (until a push)
        const out = tmp(name)
        // the served changesets only: `--all` would bundle the secret ones too
        await this.hg(repoDir, ['bundle', '--type', type, '--base', 'null', ...served.flatMap((h) => ['-r', h]), out])
        const spec = (await this.hg(repoDir, ['debugbundle', '--spec', out])).trim()
        bundles.push({ name, spec, size: (await stat(out)).size, heads: name === 'stream-v2.hg' ? stored : served })
      }
      // the repo changed while it was bundled (a strip, a phase change): these may not match it
      if ((await repoState(repoDir)) !== state) {
        this.again.add(repoDir)
        this.log.info({ repo_dir: repoDir }, 'hg clone bundles: the repo changed while they were made; made again')
        return
      }
      for (const b of bundles) await rename(tmp(b.name), path.join(dir, b.name))
      const meta: Meta = { state, bundles, generatedAt: Date.now() }
      await writeFile(tmp(META), JSON.stringify(meta))
      await rename(tmp(META), path.join(dir, META))
      this.stats.generations++
      this.log.info({ repo_dir: repoDir, bundles: bundles.map((b) => `${b.name} ${b.size}`), ms: Math.round(performance.now() - t0) }, 'hg clone bundles made')
    } finally {
      await Promise.all([...BUNDLE_NAMES, META].map((n) => rm(tmp(n), { force: true })))
      await rm(lock, { force: true })
    }
  }

  /** Runs hg on the repo at the children's priority; its stdout. */
  private async hg(repoDir: string, args: string[]): Promise<string> {
    if (this.stopped) throw new Error('stopping')
    const child = spawnChild(this.config.hgBin, ['-R', repoDir, ...args], { env: hgEnv(this.config), killGraceMs: this.config.killGraceMs, nice: this.config.childNice, viaHelper: this.config.spawnHelper })
    this.children.add(child)
    const { status, stdout } = await runToCompletion(child, { maxOutput: 64 * 1024 }).finally(() => this.children.delete(child))
    if (status.error || status.code !== 0) throw new Error(`hg ${args[0]} failed (${describeExit(status)}): ${child.stderr()}`)
    return stdout.toString('utf8')
  }
}

/** What decides the bundles' content, read without running hg: the changelog, the phase roots and the obsolescence markers. */
async function repoState(repoDir: string): Promise<string> {
  const size = async (p: string) => stat(path.join(repoDir, '.hg', p)).then((s) => `${s.ino}:${s.size}:${s.mtimeMs}`, () => '-')
  return (await Promise.all(['store/00changelog.i', 'store/00changelog.d', 'store/phaseroots', 'store/obsstore'].map(size))).join(' ')
}

/** Creates the lock file, or takes over one older than LOCK_STALE_MS; false when another generation holds it. */
async function takeLock(lock: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(lock, 'wx')
      await fh.writeFile(`${hostname()} ${process.pid} ${new Date().toISOString()}\n`)
      await fh.close()
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const [st, text] = await Promise.all([stat(lock).catch(() => undefined), readFile(lock, 'utf8').catch(() => '')])
      const [host, pid] = text.split(' ')
      // held by a process of this host that is gone, or by anyone for too long: left by a killed worker
      const deadHere = host === hostname() && pid !== undefined && !processAlive(Number(pid))
      if (st && !deadHere && Date.now() - st.mtimeMs < LOCK_STALE_MS) return false
      await rm(lock, { force: true })
    }
  }
  return false
}
