/**
 * Git LFS file locking, written to git-lfs's docs/api/locking.md:
 * `POST …/info/lfs/locks` takes a lock, `GET …/locks` lists them (by `path`, `id`, `cursor`,
 * `limit`), `POST …/locks/verify` splits them into the caller's and others', and
 * `POST …/locks/:id/unlock` removes one: the owner's own, or anyone's with `force` by an admin of
 * the repo. Listing needs read access (a clone's `git lfs locks` shows who holds what, as GitLab
 * and Gitea let readers see); taking, verifying and removing need write.
 *
 * Locks live in the auth store (so in PostgreSQL across a pool) and are never cached: a lock taken
 * through one worker holds on every other at once. They are enforced where they matter, on push:
 * `lockHook` is a ref hook that refuses a ref update whose new commits change a file someone else
 * has locked, with the owner named, as GitLab does for lockable files.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { LOCKED_AMONG_BATCH, type LockRecord, type LockStore, type RequestStore } from '../auth/store.js'
import type { Admission } from '../admission/admission.js'
import type { RefHook, RefRejection, RefUpdate } from '../auth/plugin.js'
import type { RepoRoute } from '../http/routes.js'
import type { GitRunner } from '../git/spawn.js'
import { LfsError, MethodNotAllowedError } from '../errors.js'
import { readJsonObject, sendLfs, wantsLfsJson } from './routes.js'

/** a page of a lock listing: the default and the most a client may ask for */
export const DEFAULT_PAGE = 100
export const MAX_PAGE = 1000
/**
 * a locked path at most, in bytes: far beyond any real repository's paths, and under the
 * (repo, path) index's row limit in both stores (PostgreSQL's btree takes ~2,700 bytes a row)
 */
export const MAX_PATH_BYTES = 1024
/** the output of the git command that lists a push's changed paths, at most (a push past it is refused, not waved through) */
const MAX_CHANGED_PATHS_BYTES = 64 * 1024 * 1024
const LOCK_ID = /^[1-9][0-9]{0,14}$/

/** The API's lock object. */
function lockJson(l: LockRecord): { id: string; path: string; locked_at: string; owner: { name: string } } {
  return { id: String(l.id), path: l.path, locked_at: new Date(l.lockedAt).toISOString(), owner: { name: l.owner } }
}

/** Why `p` cannot be a locked path: a repo-relative file path, `/`-separated, no `.` or `..`, no control characters. */
export function lockPathProblem(p: unknown): string | undefined {
  if (typeof p !== 'string' || p === '') return 'path must name a file in the repository'
  if (Buffer.byteLength(p) > MAX_PATH_BYTES) return `path is longer than ${MAX_PATH_BYTES} bytes`
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(p)) return 'path cannot hold control characters'
  if (p.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) return 'path must be relative to the repository root, without empty, . or .. parts'
  return undefined
}

/** A whole number from a query or body field, within [min, max]; undefined when absent. */
function count(value: unknown, name: string, min: number, max: number): number | undefined {
  if (value === undefined || value === null || value === '') return undefined
  const n = typeof value === 'number' ? value : /^[0-9]{1,16}$/.test(String(value)) ? Number(value) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new LfsError(422, `${name} must be a whole number from ${min} to ${max}`)
  return n
}

/** The user a lock request acts for: write access already made sure there is one. */
function userOf(req: FastifyRequest): { id: number; name: string } {
  const p = req.principal
  if (p.kind !== 'user') throw new LfsError(403, 'locks belong to users: sign in')
  return p
}

export interface LockDeps {
  /** the locks, and the grants that say who may remove another's (admin) */
  store: LockStore & Pick<RequestStore, 'findGrant'>
  admission: Admission
  /** locks one repo may hold (lfsMaxLocksPerRepo) */
  maxPerRepo: number
}

export function lockRoute({ store, admission, maxPerRepo }: LockDeps): RepoRoute {
  /** one page of a repo's locks, and the cursor of the next when there is one */
  async function page(repo: string, filter: { path?: string; id?: number; cursor?: unknown; limit?: unknown }): Promise<{ locks: LockRecord[]; next?: string }> {
    const limit = count(filter.limit, 'limit', 1, MAX_PAGE) ?? DEFAULT_PAGE
    const cursor = filter.cursor === undefined || filter.cursor === '' ? undefined : String(filter.cursor)
    if (cursor !== undefined && !LOCK_ID.test(cursor)) throw new LfsError(422, 'cursor is not one this server gave')
    const locks = await store.listLocks(repo, { path: filter.path, id: filter.id, afterId: cursor === undefined ? undefined : Number(cursor) - 1, limit: limit + 1 })
    return locks.length > limit ? { locks: locks.slice(0, limit), next: String(locks[limit]!.id) } : { locks }
  }

  async function create(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const body = await jsonObject(req)
    const problem = lockPathProblem(body.path)
    if (problem) throw new LfsError(422, problem)
    const outcome = await store.createLock(req.repo.name, body.path as string, userOf(req).id, maxPerRepo)
    if ('full' in outcome) throw new LfsError(422, `${req.repo.name} holds ${maxPerRepo} locks, the most it may; unlock some first`)
    if ('existing' in outcome) {
      req.accessRecord.lockId = String(outcome.existing.id)
      return sendLfs(reply, 409, { lock: lockJson(outcome.existing), message: `already locked by ${outcome.existing.owner}` })
    }
    req.accessRecord.lockId = String(outcome.created.id)
    return sendLfs(reply, 201, { lock: lockJson(outcome.created) })
  }

  async function list(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const query = new URLSearchParams(req.originalUrl.split('?')[1] ?? '')
    for (const key of new Set(query.keys())) if (query.getAll(key).length > 1) throw new LfsError(422, `${key} may be given once`)
    const path = query.get('path') ?? undefined
    const id = query.get('id') ?? undefined
    // a path or id that cannot name a lock names none
    if ((path !== undefined && lockPathProblem(path)) || (id !== undefined && !LOCK_ID.test(id))) return sendLfs(reply, 200, { locks: [] })
    const { locks, next } = await page(req.repo.name, { path, id: id === undefined ? undefined : Number(id), cursor: query.get('cursor') ?? undefined, limit: query.get('limit') ?? undefined })
    return sendLfs(reply, 200, { locks: locks.map(lockJson), ...(next ? { next_cursor: next } : {}) })
  }

  async function verify(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const body = await jsonObject(req)
    const me = userOf(req)
    const { locks, next } = await page(req.repo.name, { cursor: body.cursor, limit: body.limit })
    return sendLfs(reply, 200, {
      ours: locks.filter((l) => l.ownerId === me.id).map(lockJson),
      theirs: locks.filter((l) => l.ownerId !== me.id).map(lockJson),
      ...(next ? { next_cursor: next } : {}),
    })
  }

  async function unlock(req: FastifyRequest, reply: FastifyReply, id: string): Promise<FastifyReply> {
    const body = await jsonObject(req)
    if (body.force !== undefined && typeof body.force !== 'boolean') throw new LfsError(422, 'force must be true or false')
    const me = userOf(req)
    req.accessRecord.lockId = id
    const [lock] = LOCK_ID.test(id) ? await store.listLocks(req.repo.name, { id: Number(id), limit: 1 }) : []
    if (!lock) throw new LfsError(404, 'lock not found')
    if (lock.ownerId !== me.id) {
      if (!body.force) throw new LfsError(403, `${lock.path} is locked by ${lock.owner}; only they, or an admin of the repo with --force, may unlock it`)
      if ((await store.findGrant(me.id, req.repo.name)) !== 'admin') throw new LfsError(403, `only an admin of ${req.repo.name} may force another user's lock open`)
      req.log.info({ lock_id: id, owner: lock.owner }, 'lock forced open')
    }
    if (!(await store.removeLock(req.repo.name, lock.id))) throw new LfsError(404, 'lock not found')
    return sendLfs(reply, 200, { lock: lockJson(lock) })
  }

  /**
   * A listing (a page of up to MAX_PAGE locks, read and serialized) as admitted work: fifty
   * concurrent anonymous listings of a repo of a thousand locks took the worker to 325 MiB and
   * held its event loop 4 s; admitted, they wait their turn per client like any heavy request.
   */
  async function admitted(req: FastifyRequest, reply: FastifyReply, answer: (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply>): Promise<FastifyReply> {
    const release = await admission.admit(req, reply, 'incremental')
    try {
      return await answer(req, reply)
    } finally {
      release()
    }
  }

  async function jsonObject(req: FastifyRequest): Promise<Record<string, unknown>> {
    wantsLfsJson(req)
    return readJsonObject(req, 64 * 1024)
  }

  return {
    id: 'lfs_locks',
    methods: ['GET', 'POST'],
    kind: 'git',
    access: (req) => (req.method === 'GET' || req.method === 'HEAD' ? 'read' : 'write'),
    handler: async (req, reply) => {
      req.accessRecord.service = 'lfs-locks'
      const { verify: isVerify, lockId } = req.urlParams
      const post = req.method === 'POST'
      if (isVerify) { if (!post) throw new MethodNotAllowedError(['POST']); return admitted(req, reply, verify) }
      if (lockId !== undefined) { if (!post) throw new MethodNotAllowedError(['POST']); return unlock(req, reply, lockId) }
      if (post) return create(req, reply)
      wantsLfsJson(req)
      return admitted(req, reply, list)
    },
  }
}

/**
 * The ref hook that enforces locks on push: an update whose new commits (those no ref reaches yet)
 * change, add, delete or rename a path another user has locked is refused, with the path and the
 * owner. Merges count by what they change against their first parent (what the branch sees).
 * Nothing is read when the repo has no lock of another user (one indexed probe); else each
 * update's changed paths are looked up in the store's (repo, path) index, LOCKED_AMONG_BATCH at a
 * time, never by reading every lock of the repo. The push's objects are in git's quarantine until
 * the hooks accept it, so git is pointed at it (`RefContext.quarantine`).
 */
/**
 * @param checkTimeoutMs how long listing a push's changed paths may take (lfsLockCheckTimeoutMs):
 *   under the pre-receive hook's own 30 s wait, so git is stopped, not left running
 */
export function lockHook(store: LockStore, git: GitRunner, checkTimeoutMs: number): RefHook {
  return async ({ principal, repo, updates, quarantine }) => {
    if (repo.kind !== 'git') return []
    const me = principal.kind === 'user' ? principal.id : -1
    if (!(await store.hasLocksOfOthers(repo.name, me))) return []
    const env: Record<string, string> = quarantine ? { GIT_OBJECT_DIRECTORY: quarantine.objects, GIT_ALTERNATE_OBJECT_DIRECTORIES: quarantine.alternate } : {}
    const rejections: RefRejection[] = []
    for (const u of updates.filter((x: RefUpdate) => x.kind !== 'delete')) {
      let out: string
      try {
        out = await git.exec(['--git-dir', repo.dir, 'log', '-z', '--format=', '--name-only', '--no-renames', '--diff-merges=first-parent', u.newId, '--not', '--all'], { env, maxOutput: MAX_CHANGED_PATHS_BYTES, timeoutMs: checkTimeoutMs })
      } catch {
        // fail closed: what cannot be checked against the locks is not let through
        rejections.push({ ref: u.ref, reason: `cannot check this push against file locks: its changed paths pass ${MAX_CHANGED_PATHS_BYTES / 1024 / 1024} MiB or ${checkTimeoutMs / 1000} s, or git failed` })
        continue
      }
      const paths = [...new Set(out.split('\0').filter((p) => p !== '' && Buffer.byteLength(p) <= MAX_PATH_BYTES))]
      const hit = new Map<string, LockRecord>()
      for (let i = 0; i < paths.length; i += LOCKED_AMONG_BATCH) {
        for (const lock of await store.locksOn(repo.name, paths.slice(i, i + LOCKED_AMONG_BATCH), me)) hit.set(lock.path, lock)
      }
      if (!hit.size) continue
      const locked = [...hit.values()].sort((a, b) => a.id - b.id)
      const named = locked.slice(0, 3).map((l) => `${l.path} (locked by ${l.owner})`).join(', ')
      const more = hit.size > 3 ? ` and ${hit.size - 3} more` : ''
      rejections.push({ ref: u.ref, reason: `changes files locked by others: ${named}${more}; ask them to unlock (git lfs locks)` })
    }
    return rejections
  }
}
