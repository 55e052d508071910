/**
 * A repository's end and its move: `repo delete PATH` and `repo rename FROM TO`. The directory
 * moves first, by one rename inside the repos dir (a running worker sees the repo whole or not
 * at all), then the store's records under the name (visibility, grants, protections, LFS locks)
 * follow in one transaction; if that fails the directory is put back, so the two never disagree.
 * Pack-cache entries need no removal: they are keyed by the objects asked for, so none can answer
 * for another repository's content, and they age out (packCacheMaxAgeMs); hg clone bundles live
 * inside the repo and go with it.
 */
import { randomBytes } from 'node:crypto'
import { access, mkdir, readdir, rename, rm } from 'node:fs/promises'
import path from 'node:path'
import type { AdminStore, RepoRecords } from '../auth/store.js'
import type { Config } from '../config/load.js'
import { gitRepoName, parseRepoPath, resolveInside, type RepoKind } from '../repos/path.js'
import { UsageError } from './errors.js'

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false)

const records = (r: RepoRecords): string => `${r.grants} grant${r.grants === 1 ? '' : 's'}, ${r.protections} protection${r.protections === 1 ? '' : 's'}, ${r.locks} LFS lock${r.locks === 1 ? '' : 's'}`

const TRASH = '.deleted-'
/** A delete that was cut (killed between the rename and the removal) left its trash at least this long ago. */
const TRASH_AGE_MS = 3600_000

/**
 * Removes what deletes cut short left in the repos dir (hidden, so never served): only trash an
 * hour old, as a younger one may belong to a delete still running, which puts it back if its
 * store update fails. Returns how many were removed.
 */
export async function sweepTrash(reposDir: string, now = Date.now()): Promise<number> {
  let removed = 0
  for (const entry of await readdir(reposDir).catch(() => [] as string[])) {
    // .deleted-<ms since the epoch>-<random>: the time of the delete, in its name
    const m = /^\.deleted-(\d{13})-[0-9a-f]+$/.exec(entry)
    if (!m || now - Number(m[1]) < TRASH_AGE_MS) continue
    await rm(path.join(reposDir, entry), { recursive: true, force: true, maxRetries: 3 })
    removed++
  }
  return removed
}

/** The directory moves first, then the store follows; when the store fails the directory goes back. */
async function moveThenRecord(from: string, to: string, record: () => Promise<RepoRecords>): Promise<RepoRecords> {
  await rename(from, to)
  try {
    return await record()
  } catch (err) {
    await rename(to, from)
    throw err
  }
}

/** Removes a repository from disk and from the store; returns the line to print. */
export async function deleteRepo(config: Config, store: AdminStore, repo: { name: string; kind: RepoKind }): Promise<string> {
  const root = path.resolve(config.reposDir)
  await sweepTrash(root)
  const dir = await resolveInside(root, repo.name)
  const trash = path.join(root, `${TRASH}${Date.now()}-${randomBytes(6).toString('hex')}`)
  const moved = await moveThenRecord(dir, trash, () => store.moveRepo(repo.name, null))
  await rm(trash, { recursive: true, force: true, maxRetries: 3 })
  return `deleted ${repo.kind} repository ${repo.name} with its ${records(moved)}`
}

/** The name `text` gives a repo of `kind`, as repo create would make it. */
export function canonicalName(text: string, kind: RepoKind): string {
  let segments: string[]
  try {
    segments = parseRepoPath(text.replace(/^\/+|\/+$/g, ''))
  } catch (err) {
    throw new UsageError(`bad repository path: ${(err as Error).message}`)
  }
  const name = kind === 'git' ? gitRepoName(segments) : segments.join('/')
  if (kind === 'hg' && name.endsWith('.git')) throw new UsageError('an hg repository name must not end in .git')
  return name
}

/** Moves a repository to a new name, with everything the store holds under the old one. */
export async function renameRepo(config: Config, store: AdminStore, repo: { name: string; kind: RepoKind }, toText: string): Promise<string> {
  const to = canonicalName(toText, repo.kind)
  if (to === repo.name) throw new UsageError(`${repo.name} already has that name`)
  const root = path.resolve(config.reposDir)
  const from = await resolveInside(root, repo.name)
  const target = path.join(root, to)
  if (await exists(target)) throw new Error(`${to} already exists`)
  const parents = to.split('/').slice(0, -1)
  for (let i = 1; i <= parents.length; i++) {
    const p = path.join(root, ...parents.slice(0, i))
    if (p === from || p.endsWith('.git') || (await exists(path.join(p, '.hg')))) throw new Error(`${parents.slice(0, i).join('/')} is a repository; cannot move one inside it`)
  }
  if ((await store.listGrants({ repo: to })).length || (await store.protections(to)).length) {
    throw new Error(`the store still holds grants or protections for ${to} (left by a repo removed by hand): revoke them first (vcs-worker grant list --repo ${to})`)
  }
  await mkdir(path.dirname(target), { recursive: true })
  const moved = await moveThenRecord(from, target, () => store.moveRepo(repo.name, to))
  return `renamed ${repo.kind} repository ${repo.name} to ${to}, with its ${records(moved)}`
}
