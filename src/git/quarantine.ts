/**
 * Quarantine directories a killed push left behind. git receive-pack receives a push into
 * `objects/tmp_objdir-incoming-XXXXXX` and moves it into the repository only once the hooks
 * accepted it (git's receive.c, tmp-objdir.c); a receive-pack killed on the way (a kill -9 of
 * the worker) leaves the directory, and nothing else removes it (`git prune` only after two weeks).
 *
 * The rule, provable on this host: a quarantine is stale, and removed, when nothing in it has
 * changed for `staleMs` (default a day: a push in progress writes as its bytes arrive, and
 * idleTimeoutMs cuts one that goes silent) and no process on this host has a file open or its
 * working directory inside it (/proc). A repo is swept before a push, at most once per
 * `staleMs / 24` (an hour at the default), in the background.
 */
import { readdir, readlink, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import type { FastifyBaseLogger } from 'fastify'

const PREFIX = 'tmp_objdir-incoming-'
const MAX_TRACKED = 10_000

/** What a sweeper removes in a repo: the candidates' paths, and what its log line calls one. */
export interface SweptKind {
  candidates(repoDir: string): Promise<string[]>
  /** the log message for one removed */
  removed: string
  /** the log field naming it */
  field: string
}

/** git's push quarantines: `objects/tmp_objdir-incoming-*`. */
export const PUSH_QUARANTINES: SweptKind = {
  candidates: async (repoDir) => {
    const objects = path.join(repoDir, 'objects')
    return (await readdir(objects).catch(() => [] as string[])).filter((n) => n.startsWith(PREFIX)).map((n) => path.join(objects, n))
  },
  removed: 'removed a stale push quarantine',
  field: 'quarantine',
}

/**
 * Removes what a killed process left in a repo (a push quarantine, a Git LFS upload's temp
 * file) by the rule above: unchanged for `staleMs` and in use by no process on this host.
 */
export class QuarantineSweeper {
  private readonly lastSwept = new Map<string, number>()
  constructor(private readonly staleMs: number, private readonly log: FastifyBaseLogger, private readonly kind: SweptKind = PUSH_QUARANTINES) {}

  /** Starts a sweep of `repoDir` unless one ran recently; never throws. */
  maybeSweep(repoDir: string): void {
    const now = Date.now()
    if (now - (this.lastSwept.get(repoDir) ?? 0) < this.staleMs / 24) return
    if (this.lastSwept.size >= MAX_TRACKED) this.lastSwept.clear()
    this.lastSwept.set(repoDir, now)
    this.sweep(repoDir).catch((err: unknown) => this.log.warn({ err, repo_dir: repoDir }, `sweep failed: ${this.kind.removed}`))
  }

  /** Removes the stale quarantines of `repoDir`; resolves with the ones removed. */
  async sweep(repoDir: string): Promise<string[]> {
    const candidates = await this.kind.candidates(repoDir)
    const old: string[] = []
    for (const dir of candidates) if (Date.now() - (await newestChange(dir)) > this.staleMs) old.push(dir)
    if (!old.length) return []
    const held = await pathsInUse()
    const removed: string[] = []
    for (const dir of old) {
      if (held.some((p) => p === dir || p.startsWith(dir + path.sep))) continue
      await rm(dir, { recursive: true, force: true })
      removed.push(dir)
      this.log.warn({ repo_dir: repoDir, [this.kind.field]: path.basename(dir) }, this.kind.removed)
    }
    return removed
  }
}

/** The latest modification time of a directory and everything in it (ms): a push writes as its bytes arrive. */
async function newestChange(dir: string): Promise<number> {
  let newest = 0
  const walk = async (p: string): Promise<void> => {
    const st = await stat(p).catch(() => undefined)
    if (!st) return
    newest = Math.max(newest, st.mtimeMs)
    if (st.isDirectory()) for (const name of await readdir(p).catch(() => [] as string[])) await walk(path.join(p, name))
  }
  await walk(dir)
  return newest
}

/** Every file open and every working directory of every process on this host that we may see. */
export async function pathsInUse(): Promise<string[]> {
  const paths: string[] = []
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => undefined)
    if (cwd) paths.push(cwd)
    for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => undefined)
      if (target?.startsWith('/')) paths.push(target)
    }
  }
  return paths
}
