/**
 * The `capabilities` answer of each hg repo, kept by the worker. Every hg command (clone, pull,
 * push) opens its session with it and an hg serve child spends ~25 ms of Python on each one
 * (bench:hg: a quarter of a clone's server CPU once the clone bundle is served). What it says
 * depends only on configuration: the repo's (`.hg/hgrc`, `.hg/requires`, `.hg/store/requires`)
 * and the worker's own (its hg config and extension, fixed for the worker's life). So an answer
 * is kept with the identity of those three files (inode, size, mtime in ns), checked with a
 * stat each time: an edited hgrc or an upgraded repo is asked of hg again. A config that
 * `%include`s another file is not followed: the cache is then cleared by a restart (documented).
 * Nothing per user is in it: hg answers every caller the same, and the worker authorizes each
 * request before it looks here.
 */
import { stat } from 'node:fs/promises'
import path from 'node:path'

/** what an hg capabilities answer may weigh to be kept */
export const MAX_KEPT = 64 * 1024

export interface CachedAnswer {
  /** hg's headers as the worker passed them on, and its reason phrase */
  headers: Record<string, string>
  statusMessage: string
  body: Buffer
}

export class CapabilitiesCache {
  private readonly entries = new Map<string, { fingerprint: string; answer: CachedAnswer }>()

  /** @param maxRepos answers kept at most; the oldest goes first */
  constructor(private readonly maxRepos = 1000) {}

  /** The identity of the files the answer depends on. */
  async fingerprint(repoDir: string): Promise<string> {
    const files = [path.join(repoDir, '.hg', 'hgrc'), path.join(repoDir, '.hg', 'requires'), path.join(repoDir, '.hg', 'store', 'requires')]
    const ids = await Promise.all(files.map(async (f) => {
      try {
        const s = await stat(f, { bigint: true })
        return `${s.ino}:${s.size}:${s.mtimeNs}`
      } catch {
        return '-'
      }
    }))
    return ids.join('/')
  }

  get(repoDir: string, fingerprint: string): CachedAnswer | undefined {
    const e = this.entries.get(repoDir)
    return e && e.fingerprint === fingerprint ? e.answer : undefined
  }

  /** Keeps hg's answer, if it is small enough to be a capabilities list. */
  set(repoDir: string, fingerprint: string, answer: CachedAnswer): void {
    if (answer.body.length > MAX_KEPT) return
    this.entries.delete(repoDir)
    this.entries.set(repoDir, { fingerprint, answer })
    if (this.entries.size > this.maxRepos) this.entries.delete(this.entries.keys().next().value!)
  }
}
