/**
 * Repository paths from URLs. The text is checked against docs/design.md's grammar before anything
 * touches the filesystem: `/`-separated segments of `[A-Za-z0-9._-]`, none starting with `.`
 * (so no `..`, no `.ssh`, no `.git`), no percent-encoding, no backslash, no NUL. Only then is
 * the path resolved, and after resolving symlinks it must still lie inside the repos dir.
 */
import { realpath, stat } from 'node:fs/promises'
import path from 'node:path'
import { BadRequestError, RepoNotFoundError } from '../errors.js'

const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$/
const MAX_SEGMENTS = 16
const MAX_LENGTH = 512

export type RepoKind = 'git' | 'hg'

/** A repository named by a URL, found on disk. */
export interface RepoRef {
  kind: RepoKind
  /** canonical name: for git always with the `.git` suffix (`team/project.git`) */
  name: string
  /** real absolute path of the bare repo (git) or working dir holding `.hg` (hg) */
  dir: string
}

/** Splits and checks a repo path from a URL; throws 400 on anything outside the grammar. */
export function parseRepoPath(text: string): string[] {
  if (text.length === 0) throw new BadRequestError('missing repository path')
  if (text.length > MAX_LENGTH) throw new BadRequestError('repository path is too long')
  const segments = text.split('/')
  if (segments.length > MAX_SEGMENTS) throw new BadRequestError('repository path has too many segments')
  for (const s of segments) {
    if (!SEGMENT.test(s)) throw new BadRequestError('malformed repository path: use segments of A-Z a-z 0-9 . _ - not starting with a dot')
  }
  return segments
}

/** The canonical git repo name for URL segments: the `.git` suffix is optional in URLs. */
export function gitRepoName(segments: string[]): string {
  const name = segments.join('/')
  return name.endsWith('.git') ? name : `${name}.git`
}

/** Resolves a checked relative name inside `reposRoot` (a realpath); 404 if outside or missing. */
export async function resolveInside(reposRoot: string, name: string): Promise<string> {
  let real: string
  try {
    real = await realpath(path.join(reposRoot, name))
  } catch {
    throw new RepoNotFoundError()
  }
  if (!real.startsWith(reposRoot + path.sep)) throw new RepoNotFoundError()
  return real
}

async function isDir(p: string): Promise<boolean> {
  try { return (await stat(p)).isDirectory() } catch { return false }
}
async function isFile(p: string): Promise<boolean> {
  try { return (await stat(p)).isFile() } catch { return false }
}

/** True if `dir` looks like a bare git repository (HEAD, objects/, refs/), the way git's setup checks. */
export async function isBareGitRepo(dir: string): Promise<boolean> {
  const [head, objects, refs] = await Promise.all([isFile(path.join(dir, 'HEAD')), isDir(path.join(dir, 'objects')), isDir(path.join(dir, 'refs'))])
  return head && objects && refs
}

/** Finds the bare git repo a URL names, or throws 400/404. Never creates anything. */
export async function resolveGitRepo(reposRoot: string, urlPath: string): Promise<RepoRef> {
  const name = gitRepoName(parseRepoPath(urlPath))
  const dir = await resolveInside(reposRoot, name)
  if (!(await isBareGitRepo(dir))) throw new RepoNotFoundError()
  return { kind: 'git', name, dir }
}

/**
 * Finds the hg repo a URL path starts with (`/team/site/file/tip/README` → `team/site` when
 * `team/site/.hg` exists), checking each segment of the repo part against the grammar before
 * touching the filesystem; the rest of the path is hgweb's. 400 outside the grammar, 404 when
 * no prefix is an hg repo inside the repos dir.
 */
export async function resolveHgRepo(reposRoot: string, rawPath: string): Promise<RepoRef> {
  const segments = rawPath.replace(/^\//, '').split('/')
  if (!segments[0]) throw new BadRequestError('missing repository path')
  for (let i = 1; i <= Math.min(segments.length, MAX_SEGMENTS); i++) {
    const seg = segments[i - 1]!
    if (seg === '' && i === segments.length) break // trailing slash
    if (!SEGMENT.test(seg)) throw new BadRequestError('malformed repository path: use segments of A-Z a-z 0-9 . _ - not starting with a dot')
    const name = segments.slice(0, i).join('/')
    if (name.length > MAX_LENGTH) throw new BadRequestError('repository path is too long')
    if (name.endsWith('.git')) continue
    const dir = await resolveInside(reposRoot, name).catch(() => undefined)
    if (dir && (await isDir(path.join(dir, '.hg')))) return { kind: 'hg', name, dir }
    if (!dir) break
  }
  throw new RepoNotFoundError()
}
