import { createHash } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { clientEnv, run, type Worker } from './worker.js'

/** A git user with git-lfs installed in their own HOME (filters and hooks, as `git lfs install` sets them). */
export async function lfsUser(w: Worker, name: string) {
  const home = path.join(w.dir, `home-${name}`)
  await mkdir(home, { recursive: true })
  const env = clientEnv(home)
  const git = (args: string[], cwd = w.dir) => run('git', args, { cwd, env, timeoutMs: 120_000 })
  const r = await git(['lfs', 'install', '--skip-repo'])
  if (r.code !== 0) throw new Error(`git lfs install: ${r.stderr}`)
  return git
}

/** The worker's access-log lines of one route, from log line `from` on. */
export const routeRequests = (w: Worker, from: number, route: string) => w.logs().slice(from).filter((l) => l.msg === 'request' && l.route === route)

/** Clones `repo` of worker `w` as `user` into `w.dir/<name>`, with `args` (`-b main`...); throws with git's words if it fails. */
export async function cloneAs(w: Worker, git: Awaited<ReturnType<typeof lfsUser>>, user: string, password: string, name: string, args: string[] = [], repo = 'demo.git'): Promise<string> {
  const dir = path.join(w.dir, name)
  const r = await git(['clone', '-q', ...args, `${w.urlAs(user, password)}/${repo}`, dir])
  if (r.code !== 0) throw new Error(`git clone as ${user}: ${r.stderr}`)
  return dir
}

/** The SHA-256 of `b`, as an LFS oid. */
export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** Puts `data` in demo.git's LFS store as the worker keeps it (oid[0:2]/oid[2:4]/oid) and returns its URL path. */
export async function storeObject(w: Worker, data: Buffer): Promise<string> {
  const oid = sha256(data)
  const dir = path.join(w.reposDir, 'demo.git', 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4))
  await mkdir(dir, { recursive: true })
  await writeFile(path.join(dir, oid), data)
  return `/demo.git/info/lfs/objects/${oid}`
}
