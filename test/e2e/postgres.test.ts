/**
 * Workers on PostgreSQL: two "hosts" (workers with data dirs of their own) sharing one
 * repos dir and one PostgreSQL server started here; the CLI against the same URL; store copy;
 * a change seen by every worker; an outage that is never a wrong password.
 */
import t from 'tap'
import type * as Tap from 'tap'
import { rm, writeFile } from 'node:fs/promises'
import { existsSync, readFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { CLI, CLI_ENV, fixtureDir, gitClient, metric, processesMatching, rawRequest, run, spawnWorker, startWorker, TEST_SCRYPT, waitFor, type Worker } from '../helpers/worker.js'
import { startTestPool, workerMetrics } from '../helpers/pool.js'
import { PG_MIGRATIONS } from '../../src/auth/pg-schema.js'
import { startPostgres, PG_PASSWORD } from '../helpers/postgres.js'
import { hashPassword } from '../../src/auth/password.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { openPgStore } from '../../src/auth/pg-store.js'

const server = await startPostgres(t)

/** `vcs-worker ARGS --auth-store URL` with the data and repos dirs of `w` */
function cli(w: { config: { dataDir: string }; reposDir: string }, url: string, args: string[], input?: string) {
  return run(process.execPath, [CLI, ...args, '--auth-store', url, '--data', w.config.dataDir, '--repos', w.reposDir], { env: { ...process.env, ...CLI_ENV }, input })
}

const v2 = { 'git-protocol': 'version=2' }
const basic = (user: string, secret: string): Record<string, string> => ({ authorization: `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`, ...v2 })
const infoRefs = (w: Worker, headers: Record<string, string>) => rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', headers).then((r) => r.status)

/** Two workers with their own data dirs, one repos dir, one database. */
async function twoHosts(t: Tap.Test, flags: Record<string, string> = {}) {
  const url = server.url(await server.database())
  const a = await startWorker(t, { 'auth-store': url, ...flags }, { private: true })
  const b = await startWorker(t, { 'auth-store': url, ...flags }, { private: true, reposDir: a.reposDir })
  return { url, a, b }
}

t.test('the CLI against the URL; a clone from one host and a push from the other; a revocation seen by both', async (t) => {
  const { url, a, b } = await twoHosts(t, { 'auth-cache-ttl-ms': '600000' })
  let r = await cli(a, url, ['user', 'add', 'ann'], 'ann-password\n')
  t.equal(r.code, 0, r.stderr)
  r = await cli(a, url, ['grant', 'ann', 'demo.git', 'write'])
  t.equal(r.code, 0, r.stderr)
  r = await cli(a, url, ['token', 'create', 'ann'])
  t.equal(r.code, 0, r.stderr)
  const token = /vcsw_\S+/.exec(r.stdout)![0]
  const id = /id (\d+)/.exec(r.stdout)?.[1] ?? '1'
  t.same(JSON.parse((await cli(a, url, ['user', 'list', '--json'])).stdout).map((u: { name: string }) => u.name), ['ann'], 'user list reads PostgreSQL')

  const git = gitClient(a.dir)
  r = await git(['clone', `${a.urlAs('ann', 'ann-password')}/demo.git`, 'work'])
  t.equal(r.code, 0, `cloned from host a: ${r.stderr}`)
  const work = path.join(a.dir, 'work')
  await writeFile(path.join(work, 'from-a.txt'), 'a\n')
  await git(['add', '.'], work)
  await git(['commit', '-m', 'pushed through b'], work)
  r = await git(['push', `${b.urlAs('ann', token)}/demo.git`, 'HEAD:refs/heads/via-b'], work)
  t.equal(r.code, 0, `pushed to host b with a token: ${r.stderr}`)
  r = await git(['ls-remote', `${a.urlAs('ann', 'ann-password')}/demo.git`, 'refs/heads/via-b'])
  t.match(r.stdout, /refs\/heads\/via-b/, 'host a sees the ref host b wrote (one repos dir)')

  // both workers have the token cached for ten minutes; the revocation must beat that
  t.same([await infoRefs(a, basic('ann', token)), await infoRefs(b, basic('ann', token))], [200, 200])
  const t0 = Date.now()
  r = await cli(a, url, ['token', 'revoke', 'ann', id])
  t.equal(r.code, 0, r.stderr)
  await waitFor(async () => (await infoRefs(a, basic('ann', token))) === 401 && (await infoRefs(b, basic('ann', token))) === 401, 5000, 'the revoked token refused by both workers')
  t.comment(`revocation seen by both workers after ${Date.now() - t0} ms (the credential cache lives 600 s)`)

  // a grant removed through the store of one worker is seen by the other
  await a.store.removeGrant('ann', 'demo.git')
  await waitFor(async () => (await infoRefs(b, basic('ann', 'ann-password'))) === 404, 5000, 'b refusing the removed grant')
  t.pass('a grant removed on host a is refused on host b')
})

t.test('PostgreSQL down: no 401 and no 404 because of it, 503 with Retry-After for what no cache answers; back up, served again', async (t) => {
  const db = await server.database()
  const w = await startWorker(t, { 'auth-store': server.url(db), 'health-interval-ms': '200' }, { private: true })
  const hash = await hashPassword('bea-password', TEST_SCRYPT)
  await w.store.addUser('bea', hash)
  await w.store.addUser('cal', hash)
  await w.store.setGrant('bea', 'demo.git', 'write')
  await w.store.setGrant('cal', 'demo.git', 'write')
  const git = gitClient(w.dir)
  let r = await git(['clone', `${w.urlAs('bea', 'bea-password')}/demo.git`, 'bea'])
  t.equal(r.code, 0, r.stderr)
  const work = path.join(w.dir, 'bea')
  // team/project.git: read before the outage (visibility and grant cached), never pushed to
  await w.store.setGrant('bea', 'team/project.git', 'write')
  r = await git(['clone', `${w.urlAs('bea', 'bea-password')}/team/project.git`, 'project'])
  t.equal(r.code, 0, r.stderr)
  const project = path.join(w.dir, 'project')
  await writeFile(path.join(project, 'during.txt'), 'outage\n')
  await git(['add', '.'], project)
  await git(['commit', '-qm', 'during the outage'], project)
  const before = w.logs().length

  // a loop of clones and pushes by bea (known to the worker) and requests by cal (never seen)
  let stop = false
  const pushed: string[] = []
  const outcomes: string[] = []
  const loop = (async () => {
    for (let i = 0; !stop && i < 400; i++) {
      await writeFile(path.join(work, `f${i}.txt`), `${i}\n`)
      await git(['add', '.'], work)
      await git(['commit', '-q', '-m', `c${i}`], work)
      const p = await git(['push', 'origin', 'HEAD:refs/heads/main'], work)
      if (p.code === 0) pushed.push((await git(['rev-parse', 'HEAD'], work)).stdout.trim())
      else await git(['reset', '-q', '--hard', 'HEAD~1'], work)
      outcomes.push(`push:${p.code}`)
      const c = await git(['ls-remote', `${w.urlAs('cal', 'bea-password')}/demo.git`])
      outcomes.push(`cal:${c.code}`)
    }
  })()
  await waitFor(() => outcomes.length >= 4, 30_000, 'the loop running')
  await server.stop()
  const down = outcomes.length
  await waitFor(() => outcomes.length >= down + 6, 60_000, 'requests during the outage')
  // a push whose branch protections were never read: refused with the reason, nothing moved
  const blocked = await git(['push', 'origin', 'HEAD:refs/heads/during'], project)
  // dan was never seen: nothing cached can answer for him
  const dan = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', basic('dan', 'dan-password'))
  const danClone = await git(['ls-remote', `${w.urlAs('dan', 'dan-password')}/demo.git`])
  let ready = await rawRequest(w.port, 'GET', '/health/ready')
  await waitFor(async () => (ready = await rawRequest(w.port, 'GET', '/health/ready')).status === 503, 10_000, '/health/ready to turn red')
  const gitHealth = await rawRequest(w.port, 'GET', '/health/git')
  const metricsText = (await rawRequest(w.port, 'GET', '/metrics')).body.toString()
  await server.start()
  const upAt = Date.now()
  await waitFor(() => outcomes.slice(-2).every((o) => o.endsWith(':0')) && outcomes.length > down + 8, 30_000, 'both clients served again')
  const recovered = Date.now() - upAt
  stop = true
  await loop

  const during = w.logs().slice(before)
  const statuses = during.filter((l) => l.msg === 'request').map((l) => l.status as number)
  // a 401 to a request without credentials is git's first try (it sends them when challenged)
  t.same(during.filter((l) => l.msg === 'authentication failed'), [], 'no credential was refused: no 401 because of the outage')
  t.notOk(statuses.includes(404), 'no 404 either')
  t.same([...new Set(statuses)].filter((s) => ![200, 401, 503].includes(s)), [], 'only successes, challenges and 503s')
  t.same([dan.status, dan.headers['retry-after'], dan.body.toString()], [503, '5', 'the account store is unreachable; try again in a few seconds\n'], 'a user never seen gets 503, Retry-After and a line saying why')
  t.match(danClone.stderr, /503/, 'git shows the 503')
  t.not(blocked.code, 0)
  t.match(blocked.stderr, 'push checks failed: the account store is unreachable; try again in a few seconds', `the pusher reads why: ${blocked.stderr}`)
  t.equal((await git(['ls-remote', `${w.urlAs('bea', 'bea-password')}/team/project.git`, 'refs/heads/during'])).stdout, '', 'no ref moved')
  await w.store.addUser('dan', await hashPassword('dan-password', TEST_SCRYPT))
  await w.store.setGrant('dan', 'demo.git', 'read')
  t.equal((await git(['ls-remote', `${w.urlAs('dan', 'dan-password')}/demo.git`])).code, 0, 'and is served once the store is back')
  t.ok(outcomes.slice(down).some((o) => o === 'push:0'), 'the known client kept pushing from the caches')
  t.comment(`served again ${recovered} ms after PostgreSQL came back; outcomes ${outcomes.join(' ')}`)
  t.ok(recovered < 15_000, 'service resumed without a restart')
  t.equal(ready.status, 503, '/health/ready is red while the store is down')
  t.same(JSON.parse(ready.body.toString()).failing.filter((c: string) => c !== 'hg_children'), ['auth_store'], 'naming the auth store (hg is off here)')
  t.equal(gitHealth.status, 200, '/health/git stays green: the balancer keeps the worker')
  t.equal(metric(metricsText, 'vcs_health_check_ok', { check: 'auth_store' }), 0, 'the metric says so too')
  await waitFor(async () => metric((await rawRequest(w.port, 'GET', '/metrics')).body.toString(), 'vcs_health_check_ok', { check: 'auth_store' }) === 1, 10_000, 'the auth_store check to recover')
  // no acknowledged push is lost
  const heads = (await git(['ls-remote', `${w.urlAs('bea', 'bea-password')}/demo.git`, 'refs/heads/main'])).stdout
  t.match(heads, pushed.at(-1)!, 'the last acknowledged push is the branch head')
})

t.test('store copy moves a SQLite store whole: the same passwords, tokens, grants, repos, protections and LFS locks work on PostgreSQL', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const here = { config: { dataDir }, reposDir }
  const sqliteFile = path.join(dataDir, 'auth.sqlite')
  const run0 = (args: string[], input?: string) => run(process.execPath, [CLI, ...args, '--data', dataDir, '--repos', reposDir], { input })
  t.equal((await run0(['user', 'add', 'o\'neil'], 'oneil-password\n')).code, 0)
  t.equal((await run0(['user', 'add', 'zoë'], 'zoe-password\n')).code, 0)
  t.equal((await run0(['grant', 'o\'neil', 'demo.git', 'write'])).code, 0)
  t.equal((await run0(['repo', 'visibility', 'demo.git', 'private'])).code, 0)
  t.equal((await run0(['protect', 'demo.git', 'refs/heads/main', '--users', 'zoë'])).code, 0)
  const made = await run0(['token', 'create', 'o\'neil', '--expires', '30d'])
  const token = /vcsw_\S+/.exec(made.stdout)![0]
  t.equal((await run0(['token', 'revoke', 'zoë', (/id (\d+)/.exec((await run0(['token', 'create', 'zoë'])).stdout) ?? [])[1] ?? '2'])).code, 0)

  const seed = openSqliteStore(sqliteFile)
  await seed.createLock('demo.git', 'art/logo.psd', (await seed.findUser('o\'neil'))!.id, 10)
  seed.close()

  const url = server.url(await server.database())
  let r = await run0(['store', 'copy', '--from', sqliteFile, '--to', url])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout, `copied 2 users, 2 tokens, 1 grants, 0 repos, 1 protections, 1 locks to ${url.replace(`:${PG_PASSWORD}@`, ':***@')}\n`.replace('0 repos', `${(await openSqliteStore(sqliteFile).listRepos()).length} repos`))
  t.notMatch(r.stdout + r.stderr, PG_PASSWORD, 'the password is never printed')

  const sqlite = openSqliteStore(sqliteFile)
  const pgStore = await openPgStore({ url })
  t.teardown(async () => { sqlite.close(); await pgStore.close() })
  t.same(await pgStore.dump(), await sqlite.dump(), 'every row, ids and hashes included, the same')

  // into a store that is not empty: refused, nothing written
  r = await run0(['store', 'copy', '--from', sqliteFile, '--to', url])
  t.same([r.code, r.stderr], [1, `vcs-worker: ${url.replace(`:${PG_PASSWORD}@`, ':***@')} is not empty: store copy writes only into an empty store; nothing was copied\n`])
  t.same(await pgStore.dump(), await sqlite.dump(), 'unchanged')
  r = await run0(['store', 'copy', '--from', path.join(dir, 'nope.sqlite'), '--to', url])
  t.same([r.code, r.stderr], [1, `vcs-worker: ${path.join(dir, 'nope.sqlite')}: no such SQLite store\n`])
  r = await run0(['store', 'copy', '--from', sqliteFile])
  t.equal(r.code, 2, 'usage')

  // a worker on PostgreSQL takes the copied password and token
  const w = await startWorker(t, { 'auth-store': url })
  t.equal(await infoRefs(w, basic('o\'neil', 'oneil-password')), 200, 'the copied password')
  t.equal(await infoRefs(w, basic('o\'neil', token)), 200, 'the copied token')
  t.equal((await cli(here, url, ['token', 'list', 'zoë'])).stdout.includes('revoked'), true, 'the revoked token stays revoked')
  // the copied lock is there, and a new one takes the next id
  const oneil = (await pgStore.findUser('o\'neil'))!.id
  t.match(await pgStore.createLock('demo.git', 'art/logo.psd', oneil, 10), { existing: { id: 1, owner: 'o\'neil' } }, 'the copied lock holds')
  const next = await pgStore.createLock('demo.git', 'art/other.psd', oneil, 10)
  t.ok('created' in next && next.created.id > 1, 'ids continue after the copied ones (no clash with id 1)')
})

t.test('bad input: a malformed URL, a wrong password, a missing database, an unreachable server, odd names', async (t) => {
  const { reposDir, dataDir } = await fixtureDir(t)
  const here = { config: { dataDir }, reposDir }
  let r = await cli(here, 'postgres://vcs:secret-pw@[::1/x', ['user', 'list'])
  t.same([r.code, r.stderr.split('\n').length], [2, 2], 'one line, exit 2')
  t.notMatch(r.stderr, /secret-pw/, 'the password is not repeated')
  r = await cli(here, 'mysql://vcs@localhost/x', ['user', 'list'])
  t.same([r.code, r.stderr], [2, 'vcs-worker: bad configuration: authStore: expected sqlite or a postgres:// URL, got a value not shown (it may hold a password)\n'])
  r = await cli(here, server.url('postgres', { password: 'wrong-pw' }), ['user', 'list'])
  t.equal(r.code, 1)
  t.match(r.stderr, /^vcs-worker: auth store postgres:\/\/vcs:\*\*\*@localhost\/postgres\?host=\S+: password authentication failed for user "vcs"\n$/)
  r = await cli(here, server.url('no_such_db'), ['user', 'list'])
  t.match(r.stderr, /^vcs-worker: auth store \S+: database "no_such_db" does not exist\n$/)
  r = await cli(here, `postgres://vcs@localhost/x?host=${path.join(dataDir, 'no-socket-here')}`, ['user', 'list'])
  t.equal(r.code, 1)
  t.match(r.stderr, /^vcs-worker: auth store \S+: connect ENOENT \S+\n$/, 'unreachable: refused at once with one line')
  // serve refuses too: a worker that cannot read accounts would answer every login wrongly
  r = await run(process.execPath, [CLI, 'serve', '--port', '0', '--auth-store', `postgres://vcs@localhost/x?host=${path.join(dataDir, 'none')}`, '--data', dataDir, '--repos', reposDir, '--hg-processes', '0'])
  t.same([r.code, r.stderr.trim().split('\n').length], [1, 1], `serve exits 1 with one line: ${r.stderr}`)

  // the password from a file or PGPASSWORD, not the command line
  const url = server.url(await server.database(), { password: false })
  const pwFile = path.join(dataDir, 'pg-password')
  await writeFile(pwFile, `${PG_PASSWORD}\n`, { mode: 0o600 })
  r = await run(process.execPath, [CLI, 'user', 'add', 'filed', '--auth-store', url, '--auth-store-password-file', pwFile, '--data', dataDir, '--repos', reposDir], { input: 'filed-password\n' })
  t.equal(r.code, 0, `password from a file: ${r.stderr}`)
  r = await run(process.execPath, [CLI, 'user', 'list', '--auth-store', url, '--data', dataDir, '--repos', reposDir], { env: { PATH: process.env.PATH, PGPASSWORD: PG_PASSWORD } })
  t.same([r.code, r.stdout.includes('filed')], [0, true], `password from PGPASSWORD: ${r.stderr}`)

  // names that are SQL to a careless query: the same one-line answers as on SQLite
  for (const name of ['x\'); DROP TABLE users; --', 'semi;colon', '100%', 'a"b']) {
    r = await run(process.execPath, [CLI, 'user', 'add', name, '--auth-store', url, '--auth-store-password-file', pwFile, '--data', dataDir, '--repos', reposDir], { input: 'long-enough\n' })
    t.equal(r.code, 0, `${name}: ${r.stderr}`)
  }
  r = await run(process.execPath, [CLI, 'user', 'add', 'x'.repeat(10_000), '--auth-store', url, '--auth-store-password-file', pwFile, '--data', dataDir, '--repos', reposDir], { input: 'long-enough\n' })
  t.same([r.code, r.stderr.split('\n')[0]], [2, 'vcs-worker: bad user name: 1-64 characters, no spaces at the ends, no control characters, no : / \\'])
  r = await run(process.execPath, [CLI, 'user', 'add', 'nul\0name', '--auth-store', url, '--auth-store-password-file', pwFile, '--data', dataDir, '--repos', reposDir], { input: 'long-enough\n' }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }))
  t.not(r.code, 0, 'a NUL cannot even be passed as an argument')
  const names = JSON.parse((await run(process.execPath, [CLI, 'user', 'list', '--json', '--auth-store', url, '--auth-store-password-file', pwFile, '--data', dataDir, '--repos', reposDir])).stdout).map((u: { name: string }) => u.name)
  t.same(names.sort(), ['100%', 'a"b', 'semi;colon', 'filed', 'x\'); DROP TABLE users; --'].sort(), 'every name stored as given, the table intact')
})

t.test('through HAProxy, two hosts on one database: failed logins counted for the pool, not per worker', async (t) => {
  const url = server.url(await server.database())
  const p = await startTestPool(t, { authStore: url, workerArgs: ['--login-failure-limit', '4', '--hg-processes', '0'] })
  const port = Number(new URL(p.url).port)
  const statuses: number[] = []
  for (let i = 0; i < 12; i++) {
    const r = await rawRequest(port, 'GET', '/demo.git/info/refs?service=git-upload-pack', basic('alice', `wrong-${i}`))
    statuses.push(r.status)
  }
  t.same(statuses, [401, 401, 401, 401, 429, 429, 429, 429, 429, 429, 429, 429], 'the limit (4) for the whole pool')
  const served = await Promise.all([0, 1].map(async (i) => metric(await workerMetrics(p, i), 'vcs_requests_total', { backend: 'git', code: '401' }) + metric(await workerMetrics(p, i), 'vcs_requests_total', { backend: 'git', code: '429' })))
  t.ok(served.every((n) => n > 0), `both workers answered some of them (${served.join(' and ')})`)
  // even the right password: the pair (alice, this address) is blocked for the window on every worker
  const right = await Promise.all(Array.from({ length: 4 }, () => rawRequest(port, 'GET', '/demo.git/info/refs?service=git-upload-pack', basic('alice', 'alice-pw')).then((r) => r.status)))
  t.same(right, [429, 429, 429, 429])
  // another user is not affected, on either host
  const bob = await Promise.all(Array.from({ length: 4 }, () => rawRequest(port, 'GET', '/demo.git/info/refs?service=git-upload-pack', v2).then((r) => r.status)))
  t.same(bob, [200, 200, 200, 200], 'anonymous reads of the public repo pass')
})

t.test('npm run pool -- --auth-store postgres: a local PostgreSQL, the SQLite accounts carried over, hosts with their own data dirs; Ctrl-C leaves nothing', async (t) => {
  const { dir } = await fixtureDir(t)
  const sqlite = openSqliteStore(path.join(dir, 'auth.sqlite'))
  await sqlite.setRepo('demo.git', 'git', true)
  await sqlite.setRepo('team/project.git', 'git', false)
  await sqlite.addUser('gus', await hashPassword('gus-password', TEST_SCRYPT))
  await sqlite.setGrant('gus', 'team/project.git', 'write')
  sqlite.close()
  const proc = spawn(process.execPath, [path.join(path.dirname(CLI), '..', '..', 'tools', 'pool', 'main.js'), '--workers', '2', '--data', dir, '--ports', 'auto', '--auth-store', 'postgres'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout.on('data', (c) => { out += c })
  proc.stderr.on('data', (c) => { out += c })
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  await waitFor(() => out.includes('Ctrl-C stops everything.') || proc.exitCode !== null, 90_000, 'the pool to start')
  t.match(out, /accounts: a local PostgreSQL \(pid \d+, files in \S+, socket only\)/)
  const pgDir = /files in (\S+), socket only/.exec(out)![1]!
  t.teardown(() => rm(pgDir, { recursive: true, force: true }))
  t.match(out, /a real server: npm run pool -- --auth-store postgres:\/\/USER@HOST\/DB/)
  t.notMatch(out, readFileSync(path.join(pgDir, 'password'), 'utf8').trim(), 'the generated password is not printed')
  const url = /git clone (http:\/\/127\.0\.0\.1:\d+)\/demo\.git/.exec(out)![1]!
  const git = gitClient(dir)
  t.equal((await git(['clone', '-q', `${url}/demo.git`, 'c'])).code, 0, 'an anonymous clone of the public repo through the pool')
  const r = await git(['clone', '-q', `${url.replace('http://', 'http://gus:gus-password@')}/team/project.git`, 'p'])
  t.equal(r.code, 0, `gus, copied from SQLite, clones his private repo: ${r.stderr}`)
  t.ok(existsSync(path.join(dir, 'pool', 'host-1')) && existsSync(path.join(dir, 'pool', 'host-2')), 'a data dir per worker')
  proc.kill('SIGINT')
  await new Promise((r) => proc.once('exit', r))
  t.equal(proc.exitCode, 0)
  await waitFor(async () => (await processesMatching(dir)).length === 0 && (await processesMatching(pgDir)).length === 0, 15_000, 'every process of the pool, PostgreSQL too, to be gone')
})

t.test('four worker processes starting at once on an empty database: one migration, four running workers', async (t) => {
  const db = await server.database()
  const url = server.url(db)
  const hosts = await Promise.all([1, 2, 3, 4].map(() => fixtureDir(t)))
  const workers = await Promise.all(hosts.map((h) => spawnWorker(t, ['--repos', h.reposDir, '--data', h.dataDir, '--auth-store', url, '--hg-processes', '0'])))
  t.equal(workers.length, 4, 'all four listening')
  t.same((await server.sql(db, 'SELECT version FROM vcs_worker_schema')).rows, [{ version: PG_MIGRATIONS.length }], 'one schema row, at the latest version')
  for (const w of workers) t.equal((await fetch(`${w.url}/health/git`)).status, 200, `${w.url} serves`)
  // a newer schema: a fifth worker refuses, in one line naming both versions
  await server.sql(db, 'UPDATE vcs_worker_schema SET version = 99')
  const h = await fixtureDir(t)
  const r = await run(process.execPath, [CLI, 'serve', '--port', '0', '--repos', h.reposDir, '--data', h.dataDir, '--auth-store', url, '--hg-processes', '0'])
  t.same([r.code, r.stderr.trim().split('\n').length], [1, 1])
  t.match(r.stderr, `auth store schema version 99 is newer than this worker (${PG_MIGRATIONS.length}); upgrade the worker`)
  t.notMatch(r.stderr, PG_PASSWORD)
})
