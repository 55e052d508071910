/**
 * Ref locks a killed git left behind. git takes `refs/heads/x.lock` (and `packed-refs.lock`)
 * only between preparing and committing a ref transaction; no hook of ours runs inside it, so a
 * lock lives for milliseconds. A receive-pack killed with SIGKILL in that window (the worker's
 * host lost power, kill -9 of its process group) leaves the file, and every later push of that
 * ref fails with git's "Unable to create '...lock': File exists", on every host sharing the repo.
 *
 * The rule: a lock is stale, and removed, when it is older than `staleMs` (default 10 minutes:
 * far beyond any transaction, and beyond the clock skew of hosts kept by NTP) and no process on
 * this host has it open (/proc). It is checked for the refs a push updates, from the pre-receive
 * step (ref-hooks.ts), before git locks them: the push that would have failed succeeds.
 */
import { lstat, unlink } from 'node:fs/promises'
import path from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import { pathsInUse } from './quarantine.js'

export class StaleRefLocks {
  constructor(private readonly staleMs: number, private readonly log: FastifyBaseLogger) {}

  /** Removes the stale locks of `refs` (and of packed-refs) in `repoDir`; resolves with those removed. Never throws. */
  async clear(repoDir: string, refs: string[]): Promise<string[]> {
    const locks = [...new Set([...refs.filter((r) => r.startsWith('refs/')), 'packed-refs'])].map((r) => path.join(repoDir, `${r}.lock`))
    const old: string[] = []
    for (const lock of locks) {
      const st = await lstat(lock).catch(() => undefined)
      if (st?.isFile() && Date.now() - st.mtimeMs > this.staleMs) old.push(lock)
    }
    if (!old.length) return []
    const held = new Set(await pathsInUse())
    const removed: string[] = []
    for (const lock of old) {
      if (held.has(lock)) continue
      try {
        await unlink(lock)
        removed.push(lock)
        this.log.warn({ repo_dir: repoDir, lock: path.relative(repoDir, lock) }, 'removed a stale ref lock left by a killed git')
      } catch (err) {
        this.log.warn({ err, repo_dir: repoDir }, 'could not remove a stale ref lock')
      }
    }
    return removed
  }
}
