/**
 * Answers to hg's light read commands, kept by the worker: `capabilities`, `heads`, `known`,
 * `branchmap`, `listkeys`, `lookup`, a `batch` of those, and a `getbundle` with nothing to send
 * (every head asked for is already common: what a clone pulls after applying a clone bundle).
 * An hg serve child spends ~20-25 ms of Python on each (it opens the repo for every request);
 * a clone served from a clone bundle is otherwise three of them (bench:hg).
 *
 * What such an answer says is a function of the request and of the repo's state, and nothing
 * per user (hg answers every caller the same; the worker authorizes each request before it
 * looks here). So an answer is kept with the identity (inode, size, mtime in ns, checked with a
 * stat each time) of every file that state is read from:
 * - configuration: `.hg/hgrc`, `.hg/requires`, `.hg/store/requires` (the worker's own hg config
 *   and extension are fixed for its life);
 * - the served view of the history: the changelog (`00changelog.i`, `.d`, and its nodemap
 *   docket `.n`), which every transaction that adds or strips a commit rewrites or appends
 *   to; the phases (`phaseroots`: secret changesets are not served); obsolescence markers
 *   (`obsstore`: hidden changesets), and what pins a hidden changeset visible (the dirstate's
 *   parents, bookmarks, local tags);
 * - bookmarks (`.hg/bookmarks`, or `.hg/store/bookmarks` with bookmarks-in-store).
 * Any change to one of them (a push, a phase change, a strip, an edited hgrc) makes the next
 * request hg's again. An answer computed while a push was landing is kept under the identity
 * read before it, which the repo never has again after the push. A config that `%include`s
 * another file is not followed: the cache is then cleared by a restart (documented).
 */
import { createHash } from 'node:crypto'
import { stat } from 'node:fs/promises'
import path from 'node:path'

/** what one answer may weigh to be kept */
export const MAX_KEPT = 64 * 1024
/** what all kept answers may weigh together */
const MAX_TOTAL = 16 * 1024 * 1024

const STATE_FILES = [
  'hgrc', 'requires', 'store/requires',
  'store/00changelog.i', 'store/00changelog.d', 'store/00changelog.n',
  'store/phaseroots', 'store/obsstore', 'dirstate', 'localtags', 'bookmarks', 'store/bookmarks',
]

export interface CachedAnswer {
  /** hg's headers as the worker passed them on, and its reason phrase */
  headers: Record<string, string>
  statusMessage: string
  body: Buffer
}

export class HgAnswerCache {
  private readonly entries = new Map<string, { fingerprint: string; answer: CachedAnswer }>()
  private bytes = 0

  /** @param maxEntries answers kept at most; the least recently used goes first */
  constructor(private readonly maxEntries = 4000) {}

  /** The identity of the files a repo's answers depend on. */
  async fingerprint(repoDir: string): Promise<string> {
    const ids = await Promise.all(STATE_FILES.map(async (f) => {
      try {
        const s = await stat(path.join(repoDir, '.hg', f), { bigint: true })
        return `${s.ino}:${s.size}:${s.mtimeNs}`
      } catch {
        return '-'
      }
    }))
    return ids.join('/')
  }

  /**
   * The map's key: a digest, since a request's arguments may be as long as the headers allow
   * (1 MiB): only the answers' bytes count against MAX_TOTAL, never the requests'.
   */
  private keyOf(repoDir: string, request: string): string {
    return createHash('sha256').update(repoDir).update('\0').update(request).digest('base64')
  }

  /** `request`: what decides the answer besides the repo (the rebuilt target and headers). */
  get(repoDir: string, request: string, fingerprint: string): CachedAnswer | undefined {
    const key = this.keyOf(repoDir, request)
    const e = this.entries.get(key)
    if (!e || e.fingerprint !== fingerprint) return undefined
    this.entries.delete(key) // most recently used goes last
    this.entries.set(key, e)
    return e.answer
  }

  /** Keeps hg's answer, if it is small enough to be a light one. */
  set(repoDir: string, request: string, fingerprint: string, answer: CachedAnswer): void {
    if (answer.body.length > MAX_KEPT) return
    const key = this.keyOf(repoDir, request)
    this.drop(key)
    this.entries.set(key, { fingerprint, answer })
    this.bytes += answer.body.length
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries && this.bytes <= MAX_TOTAL) break
      this.drop(oldest)
    }
  }

  private drop(key: string): void {
    const e = this.entries.get(key)
    if (!e) return
    this.bytes -= e.answer.body.length
    this.entries.delete(key)
  }
}
