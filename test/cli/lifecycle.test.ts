import t from 'tap'
import { access, mkdir, readdir, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import { CLI, CLI_ENV, gitClient, rawRequest, run, startWorker } from '../helpers/worker.js'

const LFS = 'application/vnd.git-lfs+json'
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
const exists = (p: string) => access(p).then(() => true, () => false)

// A repository's life from the CLI while a server runs: renamed with everything it holds,
// deleted with it, records left by a repo removed by hand found and revoked, users renamed.
t.test('repo rename and delete carry grants, protections and LFS locks; the running server follows', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args, ...common], { env: CLI_ENV })
  await w.addUser('ada', 'ada-password', { 'team/project.git': 'write' })
  await w.addUser('bob', 'bob-password', {})
  t.equal((await cli('protect', 'team/project', 'main', '--users', 'ada')).code, 0)
  const lock = await fetch(`${w.url}/team/project.git/info/lfs/locks`, { method: 'POST', headers: { accept: LFS, 'content-type': LFS, authorization: basic('ada', 'ada-password') }, body: JSON.stringify({ path: 'art/logo.psd' }) })
  t.equal(lock.status, 201)

  let r = await cli('repo', 'rename', 'team/project', 'apps/site')
  t.same([r.code, r.stdout], [0, 'renamed git repository team/project.git to apps/site.git, with its 1 grant, 1 protection, 1 LFS lock\n'])
  t.equal(await exists(path.join(w.reposDir, 'team/project.git')), false)
  const refs = (repo: string, who = basic('ada', 'ada-password')) => rawRequest(w.port, 'GET', `/${repo}/info/refs?service=git-upload-pack`, { authorization: who })
  t.equal((await refs('apps/site.git')).status, 200, 'ada reads it under its new name at once')
  t.equal((await refs('team/project.git')).status, 404, 'the old name is gone')
  const locks = await (await fetch(`${w.url}/apps/site.git/info/lfs/locks`, { headers: { accept: LFS, authorization: basic('ada', 'ada-password') } })).json() as { locks: { path: string }[] }
  t.same(locks.locks.map((l) => l.path), ['art/logo.psd'], 'the lock moved with it')
  t.match((await cli('protect', 'list', 'apps/site')).stdout, /^REPO +PATTERN +WRITABLE BY\napps\/site\.git +main +ada\n$/, 'and the protection')
  t.same(JSON.parse((await cli('grant', 'list', '--repo', 'apps/site', '--json')).stdout), [{ user: 'ada', repo: 'apps/site.git', level: 'write' }])

  // a protected branch still refuses bob's force-push under the new name (he gets write first)
  t.equal((await cli('grant', 'bob', 'apps/site', 'write')).stdout, 'bob has write on apps/site.git\n')
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${w.urlAs('bob', 'bob-password')}/apps/site.git`, 'site'])).code, 0)
  const push = await git(['push', 'origin', ':main'], path.join(w.dir, 'site'))
  t.not(push.code, 0)
  t.match(push.stderr, /protected/, 'protection enforced under the new name')

  // bad renames: each refused with one line, nothing moved
  for (const [args, code, msg] of [
    [['team/project', 'x'], 1, /no repository team\/project/],
    [['apps/site', 'demo'], 1, /demo\.git already exists/],
    [['apps/site', 'demo.git/inner'], 1, /demo is a repository; cannot move one inside it|demo\.git is a repository/],
    [['apps/site', '../escape'], 2, /bad repository path/],
    [['apps/site', 'apps/site.git'], 2, /already has that name/],
    [['apps/site'], 2, /missing NEW-PATH/],
  ] as [string[], number, RegExp][]) {
    r = await cli('repo', 'rename', ...args)
    t.equal(r.code, code, `rename ${args.join(' ')}: exit ${code}`)
    t.match(r.stderr, msg)
    t.equal(r.stderr.trim().split('\n')[0]!.startsWith('vcs-worker: '), true)
  }
  t.equal(await exists(path.join(w.reposDir, 'apps/site.git/HEAD')), true, 'still where it was')

  r = await cli('repo', 'delete', 'apps/site')
  t.equal(r.code, 2, 'not at a terminal and no --yes: refused')
  t.match(r.stderr, /^vcs-worker: repo delete removes apps\/site\.git and everything in it for good: add --yes\n/)
  t.equal(await exists(path.join(w.reposDir, 'apps/site.git')), true)
  r = await cli('repo', 'delete', 'apps/site', '--yes')
  t.same([r.code, r.stdout], [0, 'deleted git repository apps/site.git with its 2 grants, 1 protection, 1 LFS lock\n'])
  t.equal(await exists(path.join(w.reposDir, 'apps/site.git')), false)
  t.same((await readdir(w.reposDir)).filter((e) => e.startsWith('.')), [], 'no trash left in the repos dir')
  t.equal((await refs('apps/site.git')).status, 404)
  t.equal((await cli('grant', 'list', '--repo', 'apps/site', '--json')).code, 1, 'no records left to list: the name is unknown')
  r = await cli('repo', 'create', 'apps/site', '--git')
  t.same([r.code, r.stderr], [0, ''], 'created again: no warning, nothing came back')
  t.equal((await refs('apps/site.git')).status, 404, 'ada has no grant on the new one')
  r = await cli('repo', 'delete', 'nowhere', '--yes')
  t.same([r.code, /no repository nowhere/.test(r.stderr)], [1, true])
})

t.test('records left by a repo removed by hand: listed, revoked, and told about when the name comes back', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args, ...common], { env: CLI_ENV })
  await w.addUser('bob', 'bob-password', { 'demo.git': 'read' })
  await w.addUser('eve', 'eve-password', { 'demo.git': 'write' })
  t.equal((await cli('protect', 'demo', 'release/*')).code, 0)
  await rm(path.join(w.reposDir, 'demo.git'), { recursive: true })
  t.same(JSON.parse((await cli('grant', 'list', '--repo', 'demo', '--json')).stdout), [{ user: 'bob', repo: 'demo.git', level: 'read' }, { user: 'eve', repo: 'demo.git', level: 'write' }], 'leftover grants are listed')
  t.match((await cli('protect', 'list', 'demo')).stdout, /^REPO +PATTERN +WRITABLE BY\ndemo\.git +release\/\* +anyone with write \(no force-push, no delete\)\n$/, 'and protections')
  t.equal((await cli('revoke', 'eve', 'demo')).stdout, 'eve has no grant on demo.git\n', 'and can be revoked')
  const r = await cli('repo', 'create', 'demo', '--git')
  t.equal(r.code, 0)
  t.equal(r.stderr, 'vcs-worker: warning: the store already held records for demo.git, left by a repo of that name removed by hand; they apply to this one now: bob (read), protection release/* (vcs-worker grant list --repo demo.git; vcs-worker repo delete removes a repo with its records)\n')
  t.equal((await cli('unprotect', 'demo', 'release/*')).code, 0)
})

t.test('user rename keeps tokens and grants; grants say when they lower; bad --users, --expires 0d refused', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args, ...common], { env: CLI_ENV })
  await w.addUser('ada', 'ada-password', { 'demo.git': 'admin' })
  const token = (await cli('token', 'create', 'ada')).stdout.trim().split('\n').pop()!
  t.equal((await cli('grant', 'ada', 'demo', 'write')).stdout, 'ada has write on demo.git (lowered from admin)\n', 'a grant that lowers says so')
  t.equal((await cli('grant', 'ada', 'demo', 'admin')).stdout, 'ada has admin on demo.git (raised from write)\n')
  t.equal((await cli('grant', 'ada', 'demo', 'admin')).stdout, 'ada has admin on demo.git\n')
  let r = await cli('user', 'rename', 'ada', 'ada.lovelace')
  t.same([r.code, r.stdout], [0, 'renamed user ada to ada.lovelace (tokens, grants and locks kept)\n'])
  const refs = (user: string, secret: string) => rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', { authorization: basic(user, secret) })
  t.equal((await refs('ada.lovelace', 'ada-password')).status, 200, 'the password logs in under the new name')
  t.equal((await refs('ada.lovelace', token)).status, 200, 'and the token')
  t.equal((await refs('ada', 'ada-password')).status, 401, 'the old name no longer logs in')
  t.same(JSON.parse((await cli('grant', 'list', '--user', 'ada.lovelace', '--json')).stdout), [{ user: 'ada.lovelace', repo: 'demo.git', level: 'admin' }])
  await w.addUser('bob', 'bob-password', {})
  for (const [args, code, msg] of [
    [['user', 'rename', 'ada.lovelace', 'bob'], 1, /user bob already exists \(in .*auth\.sqlite\)/],
    [['user', 'rename', 'nobody', 'x'], 1, /no such user: nobody/],
    [['user', 'rename', 'bob', 'a:b'], 2, /bad user name/],
    [['protect', 'demo', 'main', '--users', 'bob,nobdy'], 1, /^vcs-worker: no such user: nobdy \(in /],
    [['protect', 'demo', 'main', '--users', 'nobody,nobdy'], 1, /no such users: nobody, nobdy/],
    [['token', 'create', 'bob', '--expires', '0d'], 2, /--expires 0d: a token must live at least a minute/],
    [['token', 'create', 'bob', '--expires', '0h'], 2, /at least a minute/],
  ] as [string[], number, RegExp][]) {
    r = await cli(...args)
    t.equal(r.code, code, `${args.join(' ')}: exit ${code}`)
    t.match(r.stderr, msg)
  }
  t.same(JSON.parse((await cli('protect', 'list', 'demo', '--json')).stdout), [], 'the refused protect stored nothing')
  t.same(JSON.parse((await cli('token', 'list', 'bob', '--json')).stdout), [], 'no token made')
})

t.test('store copy SQLite to SQLite: an online backup while the server runs, only its owner can read it', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cli = (...args: string[]) => run(process.execPath, [CLI, ...args, ...common], { env: CLI_ENV })
  await w.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  t.equal((await cli('token', 'create', 'ada')).code, 0)
  t.equal((await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', { authorization: basic('ada', 'ada-password') })).status, 200, 'the server is serving from the store being copied')
  const backup = path.join(w.dir, 'backup')
  let r = await cli('store', 'copy', '--from', path.join(w.config.dataDir, 'auth.sqlite'), '--to', path.join(backup, 'auth.sqlite'))
  t.equal(r.code, 1, 'into a directory that is not there: refused')
  await mkdir(backup, { mode: 0o700 })
  r = await cli('store', 'copy', '--from', path.join(w.config.dataDir, 'auth.sqlite'), '--to', path.join(backup, 'auth.sqlite'))
  t.same([r.code, r.stdout], [0, `copied 1 users, 1 tokens, 1 grants, 4 repos, 0 protections, 0 locks to ${path.join(backup, 'auth.sqlite')}\n`], r.stderr)
  t.equal((await stat(path.join(backup, 'auth.sqlite'))).mode & 0o777, 0o600)
  const restored = await run(process.execPath, [CLI, 'grant', 'list', '--json', '--data', backup, '--repos', w.reposDir], { env: CLI_ENV })
  t.same(JSON.parse(restored.stdout), [{ user: 'ada', repo: 'demo.git', level: 'write' }], 'the copy is a store the CLI opens')
  r = await cli('store', 'copy', '--from', path.join(w.config.dataDir, 'auth.sqlite'), '--to', path.join(backup, 'auth.sqlite'))
  t.equal(r.code, 1)
  t.match(r.stderr, /is not empty: store copy writes only into an empty store; nothing was copied/, 'never over an existing store')
})
