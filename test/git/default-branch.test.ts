/**
 * A repo made by `repo create` and pushed one branch clones with every client we know of:
 * the git CLI, dulwich, libgit2 (pygit2) and isomorphic-git. New repos' HEAD names `main`
 * (defaultBranch); a push that creates the first branch of a repo whose HEAD names no existing
 * branch moves HEAD to it; `repo default-branch` changes it.
 */
import t from 'tap'
import type * as Tap from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import git from 'isomorphic-git'
import http from 'isomorphic-git/http/node'
import { startWorker, gitClient, run, CLI, type Worker } from '../helpers/worker.js'

/** Debian's python3 (with python3-dulwich and python3-pygit2), not whatever python3 is first on PATH. */
const PYTHON = '/usr/bin/python3'

function cli(w: Worker, args: string[]) {
  return run(process.execPath, [CLI, ...args, '--data', w.config.dataDir, '--repos', w.config.reposDir], { env: { PATH: process.env.PATH } })
}

/** Pushes one commit with README.md as `branch` to `repo`, from a fresh local repository. */
async function pushOnly(t: Tap.Test, w: Worker, repo: string, branch: string): Promise<void> {
  const g = gitClient(w.dir)
  const src = path.join(w.dir, `src-${branch}`)
  t.equal((await g(['init', '-q', '-b', branch, src])).code, 0)
  await writeFile(path.join(src, 'README.md'), `on ${branch}\n`)
  await g(['add', 'README.md'], src)
  await g(['commit', '-q', '-m', `first on ${branch}`], src)
  const r = await g(['push', `${w.urlAs('pat', 'pat-password')}/${repo}`, branch], src)
  t.equal(r.code, 0, r.stderr)
}

/** Clones `repo` with each client into its own dir; resolves with what each checked out (or its error). */
async function cloneWithEveryClient(w: Worker, repo: string, tag: string): Promise<Record<string, string>> {
  const url = `${w.url}/${repo}`
  const out: Record<string, string> = {}
  const read = (dir: string) => readFile(path.join(dir, 'README.md'), 'utf8').catch((err: Error) => `missing README.md: ${err.message}`)
  const cliDir = path.join(w.dir, `git-${tag}`)
  const r = await gitClient(w.dir)(['clone', url, cliDir])
  out.git = r.code === 0 ? (r.stderr.includes('warning') ? `warned: ${r.stderr}` : await read(cliDir)) : `failed: ${r.stderr}`
  for (const [name, code] of [
    ['dulwich', 'import sys\nfrom dulwich import porcelain\nporcelain.clone(sys.argv[1], sys.argv[2], errstream=sys.stderr.buffer)'],
    ['pygit2', 'import sys, pygit2\npygit2.clone_repository(sys.argv[1], sys.argv[2])'],
  ] as const) {
    const dir = path.join(w.dir, `${name}-${tag}`)
    const p = await run(PYTHON, ['-c', code, url, dir], { env: { PATH: process.env.PATH, HOME: w.dir } })
    out[name] = p.code === 0 ? await read(dir) : `failed: ${p.stderr.trim().split('\n').pop()}`
  }
  const isoDir = path.join(w.dir, `iso-${tag}`)
  out['isomorphic-git'] = await git.clone({ fs, http, dir: isoDir, url }).then(() => read(isoDir), (err: Error) => `failed: ${err.message}`)
  return out
}

t.test('repo create makes HEAD name main; pushed main only, every client clones it', async (t) => {
  const w = await startWorker(t)
  await w.addUser('pat', 'pat-password')
  let r = await cli(w, ['repo', 'create', 'team/fresh', '--git', '--public'])
  t.equal(r.code, 0, r.stderr)
  await cli(w, ['grant', 'pat', 'team/fresh', 'write'])
  t.equal(await readFile(path.join(w.reposDir, 'team/fresh.git/HEAD'), 'utf8'), 'ref: refs/heads/main\n')
  await pushOnly(t, w, 'team/fresh.git', 'main')
  const clones = await cloneWithEveryClient(w, 'team/fresh.git', 'main')
  t.same(clones, { git: 'on main\n', dulwich: 'on main\n', pygit2: 'on main\n', 'isomorphic-git': 'on main\n' })

  r = await cli(w, ['repo', 'create', 'trunky', '--git', '--default-branch', 'trunk'])
  t.equal(r.code, 0, r.stderr)
  t.equal(await readFile(path.join(w.reposDir, 'trunky.git/HEAD'), 'utf8'), 'ref: refs/heads/trunk\n', '--default-branch on repo create')
  for (const bad of ['a..b', '-x', 'x.lock', 'a//b', 'sp ace', '.hidden', '']) {
    r = await cli(w, ['repo', 'create', 'badbranch', '--git', '--default-branch', bad])
    t.equal(r.code, 2, `default branch ${JSON.stringify(bad)} refused: ${r.stderr.trim()}`)
  }
  t.notOk(fs.existsSync(path.join(w.reposDir, 'badbranch.git')), 'and nothing was created')
})

t.test('pushed trunk only to a repo whose HEAD names main: HEAD follows trunk, every client clones it', async (t) => {
  const w = await startWorker(t)
  await w.addUser('pat', 'pat-password')
  t.equal((await cli(w, ['repo', 'create', 'other', '--git', '--public'])).code, 0)
  await cli(w, ['grant', 'pat', 'other', 'write'])
  await pushOnly(t, w, 'other.git', 'trunk')
  t.equal(await readFile(path.join(w.reposDir, 'other.git/HEAD'), 'utf8'), 'ref: refs/heads/trunk\n', 'HEAD moved to the first pushed branch')
  t.same(await cloneWithEveryClient(w, 'other.git', 'trunk'), { git: 'on trunk\n', dulwich: 'on trunk\n', pygit2: 'on trunk\n', 'isomorphic-git': 'on trunk\n' })
  // a second branch does not move a HEAD that names an existing branch
  await pushOnly(t, w, 'other.git', 'main')
  t.equal(await readFile(path.join(w.reposDir, 'other.git/HEAD'), 'utf8'), 'ref: refs/heads/trunk\n', 'HEAD stays once it names a branch')

  // the admin's word
  let r = await cli(w, ['repo', 'default-branch', 'other', 'main'])
  t.same([r.code, r.stdout], [0, 'other.git: HEAD is refs/heads/main\n'])
  t.equal((await gitClient(w.dir)(['ls-remote', '--symref', `${w.url}/other.git`, 'HEAD'])).stdout.split('\n')[0], 'ref: refs/heads/main\tHEAD')
  r = await cli(w, ['repo', 'default-branch', 'other', 'later'])
  t.same([r.code, r.stdout], [0, 'other.git: HEAD is refs/heads/later (no such branch yet: clones check it out once it is pushed)\n'])
  r = await cli(w, ['repo', 'default-branch', 'other', 'a..b'])
  t.equal(r.code, 2, 'a bad branch name')
  r = await cli(w, ['repo', 'default-branch', 'demo-hg', 'main'])
  t.same([r.code, r.stderr.split('\n')[0]], [2, 'vcs-worker: demo-hg is an hg repository: hg has no default-branch setting (clones check out the branch named default)'])
  r = await cli(w, ['repo', 'default-branch', 'nope', 'main'])
  t.equal(r.code, 1, 'a missing repo')
})
