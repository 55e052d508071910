// The hook program (src/git/hook.c) on its own, as git starts it: under a hook's name, in the
// repository, with or without the worker's environment. What a pusher reads when something is wrong.
import t from 'tap'
import type * as Tap from 'tap'
import { chmod, mkdir, readFile, realpath, symlink, writeFile } from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { HOOK_PROGRAM } from '../../src/git/hook-service.js'
import { run } from '../helpers/worker.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const ZERO = '0'.repeat(40)

async function setup(t: Tap.Test): Promise<{ repo: string; hook: (name: string, args?: string[], input?: string, env?: Record<string, string>) => ReturnType<typeof run> }> {
  const dir = await realpath(t.testdir())
  const repo = path.join(dir, 'r.git')
  await mkdir(path.join(repo, 'hooks'), { recursive: true })
  const ours = path.join(dir, 'ours')
  await mkdir(ours)
  for (const name of ['pre-receive', 'update', 'post-receive', 'post-update', 'something-else']) await symlink(HOOK_PROGRAM, path.join(ours, name))
  return {
    repo,
    hook: (name, args = [], input = '', env = {}) => run(path.join(ours, name), args, { cwd: repo, input, env: { PATH: process.env.PATH!, ...env } }),
  }
}

/** a port on 127.0.0.1 nothing listens on (taken from the OS, then let go) */
async function closedPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

t.test('pre-receive fails closed: no worker environment, an unreachable worker, input git never writes', async (t) => {
  const { hook } = await setup(t)
  let r = await hook('pre-receive', [], `${ZERO} ${B} refs/heads/main\n`)
  t.same([r.code, r.stderr], [1, 'error: push checks are not available\n'], 'without the worker\'s environment')
  const env = { VCS_WORKER_HOOK_URL: `http://127.0.0.1:${await closedPort()}`, VCS_WORKER_HOOK_TOKEN: 'tok', VCS_WORKER_HOOK_REJECTS: '/nonexistent/rejects' }
  r = await hook('pre-receive', [], `${ZERO} ${B} refs/heads/main\n`, env)
  t.same([r.code, r.stderr], [1, 'error: push checks failed: the worker is unreachable\n'], 'the worker gone')
  for (const bad of [`${A} refs/heads/main\n`, `${A} --exec=sh refs/heads/main\n`, `${A} ${B} \n`]) {
    r = await hook('pre-receive', [], bad, env)
    t.same([r.code, r.stderr], [1, 'error: push checks failed: unexpected hook input\n'], `input ${JSON.stringify(bad)}`)
  }
  r = await hook('pre-receive', [], `${A} ${B} refs/heads/main\n`, { ...env, VCS_WORKER_GIT: '/nonexistent/git' })
  t.same([r.code, r.stderr], [1, `error: push checks failed: cannot tell whether ${B} descends from ${A}\n`], 'an ancestry git cannot tell')
})

t.test('update declines exactly the refs in the rejects file, then runs the repository\'s own with its arguments', async (t) => {
  const { repo, hook } = await setup(t)
  const rejects = path.join(repo, '..', 'rejects')
  await writeFile(rejects, 'refs/heads/locked\nrefs/heads/other\n')
  const env = { VCS_WORKER_HOOK_REJECTS: rejects }
  t.equal((await hook('update', ['refs/heads/locked', A, B], '', env)).code, 1, 'a listed ref declined')
  t.equal((await hook('update', ['refs/heads/lock', A, B], '', env)).code, 0, 'a prefix of one is not it')
  t.equal((await hook('update', ['refs/heads/main', A, B], '', env)).code, 0, 'no own hook: accepted')
  await writeFile(path.join(repo, 'hooks', 'update'), '#!/bin/sh\necho "own update $*" >&2\nexit 3\n')
  await chmod(path.join(repo, 'hooks', 'update'), 0o755)
  const r = await hook('update', ['refs/heads/main', A, B], '', env)
  t.same([r.code, r.stderr], [3, `own update refs/heads/main ${A} ${B}\n`], 'the repository\'s own, with git\'s arguments and its verdict')
  t.equal((await hook('update', ['refs/heads/locked', A, B], '', env)).code, 1, 'which never sees a ref we declined')
})

t.test('post-receive and post-update run the repository\'s own with git\'s input; a name git never runs is refused', async (t) => {
  const { repo, hook } = await setup(t)
  // more than a pipe holds: the program writes it from a second process
  const input = Array.from({ length: 2000 }, (_, i) => `${A} ${B} refs/heads/branch-${i}\n`).join('')
  const seen = path.join(repo, '..', 'seen')
  await writeFile(path.join(repo, 'hooks', 'post-receive'), `#!/bin/sh\ncat > ${seen}\n`)
  await chmod(path.join(repo, 'hooks', 'post-receive'), 0o755)
  // no worker to tell: the refs moved already, so the repository's own hook runs anyway
  const r = await hook('post-receive', [], input)
  t.equal(r.code, 0, r.stderr)
  t.equal(await readFile(seen, 'utf8'), input, 'the repository\'s own post-receive read all of git\'s input')
  t.equal((await hook('post-update', ['refs/heads/main'])).code, 0, 'no own post-update: nothing to do')
  const other = await hook('something-else')
  t.equal(other.code, 2)
  t.match(other.stderr, /^vcs-worker-hook: run by git under a hook's name .*, not as something-else\n$/)
})
