/**
 * Creating repositories (CLI only: a request never creates one). The repo is built under a
 * hidden temporary name beside its final place and renamed into it, so a failure leaves
 * nothing behind and a server never sees a half-made repo.
 */
import { mkdir, rename, rm, access } from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { gitRepoName, parseRepoPath, type RepoKind } from './path.js'
import type { GitRunner } from '../git/spawn.js'

export class RepoExistsError extends Error {
  readonly code = 'VCS_REPO_EXISTS'
}

export interface Creators {
  git: GitRunner
  /** `hg init DIR`, supplied by the hg module */
  hgInit?: (dir: string) => Promise<void>
  /** the branch a new git repo's HEAD names */
  defaultBranch: string
}

/** A branch name git accepts, by BRANCH_NAME. */
export function isBranchName(name: string): boolean {
  return BRANCH_NAME.test(name)
}

/**
 * A branch name as the worker accepts it (git-check-ref-format(1), stricter): at most 200
 * characters, no `..`, `/`-separated segments of `[A-Za-z0-9._-]` that start with neither `.`
 * nor `-` and end with neither `.` nor `.lock`.
 */
export const BRANCH_NAME = /^(?!.*\.\.)(?!.{201})[A-Za-z0-9_][A-Za-z0-9._-]*(?<!\.lock)(?<!\.)(?:\/[A-Za-z0-9_][A-Za-z0-9._-]*(?<!\.lock)(?<!\.))*$/

/** Creates `name` under `reposDir` and returns its canonical name. */
export async function createRepo(reposDir: string, name: string, kind: RepoKind, creators: Creators): Promise<string> {
  const segments = parseRepoPath(name.replace(/^\/+|\/+$/g, ''))
  const canonical = kind === 'git' ? gitRepoName(segments) : segments.join('/')
  if (kind === 'hg' && canonical.endsWith('.git')) throw new Error('an hg repository name must not end in .git')
  const finalDir = path.join(reposDir, canonical)
  if (await exists(finalDir)) throw new RepoExistsError(`${canonical} already exists`)
  // Nested inside an existing repo would make one repo's files another's URL space.
  const parents = canonical.split('/').slice(0, -1)
  for (let i = 1; i <= parents.length; i++) {
    const p = path.join(reposDir, ...parents.slice(0, i))
    if (p.endsWith('.git') || (await exists(path.join(p, '.hg')))) throw new Error(`${parents.slice(0, i).join('/')} is a repository; cannot create one inside it`)
  }
  await mkdir(path.dirname(finalDir), { recursive: true })
  const tmp = path.join(path.dirname(finalDir), `.tmp-${randomBytes(6).toString('hex')}`)
  try {
    if (kind === 'git') {
      if (!isBranchName(creators.defaultBranch)) throw new Error(`bad default branch name ${JSON.stringify(creators.defaultBranch)}`)
      await creators.git.exec(['init', '--quiet', '--bare', `--initial-branch=${creators.defaultBranch}`, '--', tmp])
    } else {
      if (!creators.hgInit) throw new Error('hg support is not available')
      await creators.hgInit(tmp)
    }
    if (await exists(finalDir)) throw new RepoExistsError(`${canonical} already exists`)
    await rename(tmp, finalDir)
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
  return canonical
}

async function exists(p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}
