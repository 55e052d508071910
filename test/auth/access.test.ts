import t from 'tap'
import { hashPassword } from '../../src/auth/password.js'
import path from 'node:path'
import { writeFile } from 'node:fs/promises'
import { startWorker, gitClient, run, CLI, CLI_ENV, rawRequest, waitFor, type Worker } from '../helpers/worker.js'

const basic = (user: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}` })
const refs = (repo: string, service = 'git-upload-pack') => `/${repo}/info/refs?service=${service}`

/** Runs the real CLI against the worker's data and repos dirs, as an operator would. */
function cli(w: Worker, args: string[], input?: string) {
  return run(process.execPath, [CLI, ...args, '--data', w.config.dataDir, '--repos', w.config.reposDir], { env: CLI_ENV, input })
}

async function commitIn(git: ReturnType<typeof gitClient>, dir: string, file: string) {
  await writeFile(path.join(dir, file), `${file}\n`)
  await git(['add', file], dir)
  await git(['commit', '-q', '-m', file], dir)
}

t.test('private repo: each allowed case with its denied twin, through real git', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  await w.addUser('reader', 'reader-pass', { 'demo.git': 'read' })
  await w.addUser('writer', 'writer-pass', { 'demo.git': 'write' })
  await w.addUser('boss', 'boss-pass', { 'demo.git': 'admin' })
  await w.addUser('stranger', 'stranger-pass')
  const git = gitClient(w.dir)

  // anonymous: 401 so clients prompt; git without a terminal says so
  let r = await git(['clone', `${w.url}/demo.git`, 'anon'])
  t.not(r.code, 0)
  t.match(r.stderr, /could not read Username|Authentication failed/)
  const res = await rawRequest(w.port, 'GET', refs('demo.git'))
  t.equal(res.status, 401)
  t.match(String(res.headers['www-authenticate']), /^Basic realm="vcs-worker"/)
  t.equal(res.body.toString(), 'authentication required\n')

  // authenticated without a grant: 404, exactly like a repo that does not exist
  r = await git(['clone', `${w.urlAs('stranger', 'stranger-pass')}/demo.git`, 'stranger'])
  t.not(r.code, 0)
  t.match(r.stderr, /repository not found|not found/)
  const hidden = await rawRequest(w.port, 'GET', refs('demo.git'), basic('stranger', 'stranger-pass'))
  const missing = await rawRequest(w.port, 'GET', refs('no-such.git'), basic('stranger', 'stranger-pass'))
  t.equal(hidden.status, 404)
  t.same([hidden.status, hidden.body.toString()], [missing.status, missing.body.toString()], 'a private repo is indistinguishable from a missing one')

  // reader: clone yes, push 403 with a one-line reason git prints
  r = await git(['clone', `${w.urlAs('reader', 'reader-pass')}/demo.git`, 'reader'])
  t.equal(r.code, 0, r.stderr)
  await commitIn(git, path.join(w.dir, 'reader'), 'by-reader.txt')
  r = await git(['push', 'origin', 'main'], path.join(w.dir, 'reader'))
  t.not(r.code, 0)
  t.match(r.stderr, 'remote: reader may read demo.git but not push to it')
  t.match(r.stderr, '403')

  // writer and admin: push yes
  for (const [user, pass] of [['writer', 'writer-pass'], ['boss', 'boss-pass']]) {
    r = await git(['clone', `${w.urlAs(user!, pass!)}/demo.git`, user!])
    t.equal(r.code, 0, r.stderr)
    await commitIn(git, path.join(w.dir, user!), `by-${user}.txt`)
    r = await git(['push', 'origin', 'main'], path.join(w.dir, user!))
    t.equal(r.code, 0, `${user} pushes: ${r.stderr}`)
    await git(['pull', '-q', '--rebase'], path.join(w.dir, user!))
  }

  // wrong password: 401, the same message as an unknown user (no user enumeration)
  const wrong = await rawRequest(w.port, 'GET', refs('demo.git'), basic('writer', 'nope'))
  const nobody = await rawRequest(w.port, 'GET', refs('demo.git'), basic('nobody', 'nope'))
  t.equal(wrong.status, 401)
  t.same([wrong.status, wrong.body.toString()], [nobody.status, nobody.body.toString()])
  t.equal(wrong.body.toString(), 'invalid credentials\n')
})

t.test('public repo: anonymous reads, anonymous push challenged, users push with grants', async (t) => {
  const w = await startWorker(t)
  await w.addUser('reader', 'reader-pass', { 'demo.git': 'read' })
  await w.addUser('stranger', 'stranger-pass')
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${w.url}/demo.git`, 'anon'])).code, 0, 'anonymous clone')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('stranger', 'stranger-pass'))).status, 200, 'any user reads a public repo')
  const push = await rawRequest(w.port, 'GET', refs('demo.git', 'git-receive-pack'))
  t.equal(push.status, 401, 'anonymous push: challenge')
  t.equal(push.body.toString(), 'authentication required to push\n')
  const stranger = await rawRequest(w.port, 'GET', refs('demo.git', 'git-receive-pack'), basic('stranger', 'stranger-pass'))
  t.equal(stranger.status, 403, 'authenticated, no write grant: 403')
  t.equal(stranger.body.toString(), 'stranger may read demo.git but not push to it\n')
})

t.test('tokens: Basic user+token, Bearer, wrong owner, expired, revoked while cached', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  await w.addUser('tok', 'tok-password', { 'demo.git': 'write' })
  await w.addUser('other', 'other-password')
  let r = await cli(w, ['token', 'create', 'tok'])
  t.equal(r.code, 0, r.stderr)
  const [head, token] = r.stdout.trim().split('\n') as [string, string]
  t.match(head, /^token (\d+) for tok \(shown once/)
  const id = /^token (\d+)/.exec(head)![1]!
  t.match(token, /^vcsw_[A-Za-z0-9_-]{43}$/)

  const git = gitClient(w.dir)
  r = await git(['clone', '-q', `${w.urlAs('tok', token)}/demo.git`, 'via-basic'])
  t.equal(r.code, 0, `git with user + token: ${r.stderr}`)
  r = await git(['-c', `http.extraHeader=Authorization: Bearer ${token}`, 'clone', '-q', `${w.url}/demo.git`, 'via-bearer'])
  t.equal(r.code, 0, `git with a Bearer header: ${r.stderr}`)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('other', token))).status, 401, "a token only works with its owner's name")
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { authorization: `Bearer ${token}x` })).status, 401)

  r = await cli(w, ['token', 'create', 'tok', '--expires', '2000-01-01'])
  t.equal(r.code, 2, 'an expiry in the past is refused')
  r = await cli(w, ['token', 'create', 'tok', '--expires', '1m'])
  const shortLived = r.stdout.trim().split('\n')[1]!
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { authorization: `Bearer ${shortLived}` })).status, 200)
  await w.store.addToken('tok', (await import('../../src/auth/tokens.js')).hashToken('vcsw_' + 'e'.repeat(43)), Math.floor(Date.now() / 1000) - 5)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { authorization: `Bearer vcsw_${'e'.repeat(43)}` })).status, 401, 'expired token')

  // revoked by the CLI while the server has it cached: refused on the next request
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('tok', token))).status, 200)
  r = await cli(w, ['token', 'revoke', 'tok', id])
  t.equal(r.code, 0, r.stderr)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('tok', token))).status, 401, 'revoked token refused at once')
  t.equal((await cli(w, ['token', 'revoke', 'tok', id])).code, 1, 'revoking twice: not found')
})

t.test('the CLI changes rights while the server runs; the cache never outlives a change', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const pw = (u: string) => basic(u, 'first-password')
  let r = await cli(w, ['user', 'add', 'carol'], 'first-password\n')
  t.equal(r.code, 0, r.stderr)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), pw('carol'))).status, 404, 'no grant yet')
  r = await cli(w, ['grant', 'carol', 'demo', 'read'])
  t.equal(r.stdout, 'carol has read on demo.git\n')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), pw('carol'))).status, 200, 'grant seen at once')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git', 'git-receive-pack'), pw('carol'))).status, 403)
  await cli(w, ['grant', 'carol', 'demo.git', 'write'])
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git', 'git-receive-pack'), pw('carol'))).status, 200, 'upgrade seen at once')
  r = await cli(w, ['user', 'passwd', 'carol'], 'second-password\n')
  t.equal(r.code, 0, r.stderr)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), pw('carol'))).status, 401, 'old password refused though it was cached')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('carol', 'second-password'))).status, 200)
  await cli(w, ['revoke', 'carol', 'demo.git'])
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('carol', 'second-password'))).status, 404, 'revoked grant')
  await cli(w, ['grant', 'carol', 'demo.git', 'read'])
  await cli(w, ['user', 'remove', 'carol'])
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('carol', 'second-password'))).status, 401, 'deleted user refused though cached')
  await cli(w, ['repo', 'visibility', 'demo', 'public'])
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'))).status, 200, 'made public')

  // names with SQL metacharacters and unicode are just names
  const odd = "o'brien\"; DROP TABLE users;--"
  r = await cli(w, ['user', 'add', odd], 'odd-password\n')
  t.equal(r.code, 0, r.stderr)
  await cli(w, ['grant', odd, 'team/project', 'read'])
  await cli(w, ['repo', 'visibility', 'team/project', 'private'])
  t.equal((await rawRequest(w.port, 'GET', refs('team/project.git'), basic(odd, 'odd-password'))).status, 200)
  r = await cli(w, ['user', 'add', 'colon'], 'pass:with:colons\n')
  t.equal(r.code, 0, r.stderr)
  await cli(w, ['grant', 'colon', 'demo', 'read'])
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('colon', 'pass:with:colons'))).status, 200, 'a password with colons')
  t.equal((await gitClient(w.dir)(['ls-remote', `${w.urlAs('colon', 'pass:with:colons')}/demo.git`])).code, 0, 'and through git')
  r = await cli(w, ['user', 'add', 'Zoë李'], 'unicode-password\n')
  t.equal(r.code, 0)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('Zoë李', 'unicode-password'))).status, 200)
  for (const bad of ['', 'a:b', 'x'.repeat(65), ' lead', 'tab\there']) {
    r = await cli(w, ['user', 'add', bad], 'whatever-password\n')
    t.equal(r.code, 2, `user name ${JSON.stringify(bad)} refused`)
  }
  t.equal((await cli(w, ['user', 'add', 'shorty'], 'short\n')).code, 2, 'short password refused')
  r = await cli(w, ['user', 'add', 'tokeny'], `vcsw_${'x'.repeat(43)}\n`)
  t.same([r.code, r.stderr.split('\n')[0]], [2, 'vcs-worker: a password may not start with vcsw_ (that prefix marks access tokens)'], 'a token-shaped password is refused: it could never log in')
  t.equal((await cli(w, ['user', 'passwd', 'colon'], 'vcsw_anything-else\n')).code, 2, 'by passwd too')
  r = await cli(w, ['user', 'passwd', 'carol'], 'whatever-password\n')
  t.equal(r.code, 1)
  t.match(r.stderr.split('\n')[0], /^vcs-worker: no such user: carol \(in \/.*auth\.sqlite\)$/, 'a removed user: told before any password, with the store named')
  t.equal((await cli(w, ['user', 'add', odd], 'odd-password\n')).code, 1, 'existing user: runtime error')
  t.equal((await cli(w, ['grant', 'nobody', 'demo', 'read'])).code, 1)
  t.equal((await cli(w, ['grant', odd, 'demo', 'owner'])).code, 2)
  t.equal((await cli(w, ['grant', odd, '../etc', 'read'])).code, 2)
  t.equal((await cli(w, ['grant', odd, 'missing-repo', 'read'])).code, 1)
})

t.test('the KDF (at production cost) runs once for a dozen requests; throttling by user and address', async (t) => {
  const w = await startWorker(t, { 'login-failure-limit': '3', 'trusted-proxies': '127.0.0.1' }, { private: true })
  // the one user of the suite hashed at production cost (N=2^17): the others use TEST_SCRYPT
  await w.store.addUser('dana', await hashPassword('dana-password'))
  await w.store.setGrant('dana', 'demo.git', 'read')
  t.match((await w.store.findUser('dana'))!.passwordHash, /^scrypt\$131072\$8\$1\$/)
  for (let i = 0; i < 12; i++) t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('dana', 'dana-password'))).status, 200)
  const kdfRuns = w.logs().filter((l) => l.msg === 'credentials verified (cache miss)').length
  t.equal(kdfRuns, 1, 'one slow verification for 12 authenticated requests')

  // credential-less requests are the normal first step of git and hg: never failures
  for (let i = 0; i < 5; i++) t.equal((await rawRequest(w.port, 'GET', refs('demo.git'))).status, 401)
  const from = (ip: string) => ({ 'x-forwarded-for': ip })
  for (let i = 0; i < 3; i++) t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { ...basic('erin', 'guess'), ...from('192.0.2.10') })).status, 401)
  const blocked = await rawRequest(w.port, 'GET', refs('demo.git'), { ...basic('erin', 'guess'), ...from('192.0.2.10') })
  t.equal(blocked.status, 429)
  t.ok(Number(blocked.headers['retry-after']) > 0, `Retry-After: ${blocked.headers['retry-after']}`)
  t.equal(blocked.body.toString(), 'too many failed logins; try again later\n')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { ...basic('erin', 'guess'), ...from('192.0.2.11') })).status, 401, 'another address (same NAT farm, other host) is not blocked')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { ...basic('dana', 'dana-password'), ...from('192.0.2.10') })).status, 200, 'another user behind the same address is not blocked')

  // an untrusted peer cannot pick its address with X-Forwarded-For
  const u = await startWorker(t, { 'login-failure-limit': '2' }, { private: true })
  for (let i = 0; i < 2; i++) await rawRequest(u.port, 'GET', refs('demo.git'), { ...basic('erin', 'guess'), ...from(`198.51.100.${i}`) })
  t.equal((await rawRequest(u.port, 'GET', refs('demo.git'), { ...basic('erin', 'guess'), ...from('198.51.100.99') })).status, 429, 'X-Forwarded-For ignored from an untrusted peer')
})

t.test('throttle keys of their own: garbage and bad tokens lock out no real credential; a budget per address across user names', async (t) => {
  const w = await startWorker(t, { 'login-failure-limit': '3', 'login-failure-address-limit': '5', 'trusted-proxies': '127.0.0.1' }, { private: true })
  await w.addUser('gil', 'gil-password', { 'demo.git': 'read' })
  const token = (await cli(w, ['token', 'create', 'gil'])).stdout.trim().split('\n')[1]!
  const from = (ip: string) => ({ 'x-forwarded-for': ip })
  const get = (ip: string, authorization: string) => rawRequest(w.port, 'GET', refs('demo.git'), { authorization, ...from(ip) })

  const garbage = []
  for (let i = 0; i < 10; i++) garbage.push((await get('192.0.2.20', 'Basic !!!')).status)
  t.same(garbage, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429], 'malformed headers are throttled under their own key')
  t.equal((await get('192.0.2.20', `Bearer ${token}`)).status, 200, 'a real token from that address still works (uncached)')
  t.equal((await get('192.0.2.20', basic('gil', 'gil-password').authorization)).status, 200, 'and a real password')

  const wrong = []
  for (let i = 0; i < 5; i++) wrong.push((await get('192.0.2.21', `Bearer vcsw_${String(i).repeat(43)}`)).status)
  t.same(wrong, [401, 401, 401, 429, 429], 'invented tokens are throttled under their own key')
  t.equal((await get('192.0.2.21', basic('gil', token).authorization)).status, 200, 'a real token is never locked out: it cannot be guessed')

  // made-up user names from one address: each name has its own count, the address a budget over all
  const names = []
  for (let i = 0; i < 6; i++) names.push((await get('192.0.2.22', basic(`nobody${i}`, 'guess').authorization)).status)
  t.same(names, [401, 401, 401, 401, 401, 429], 'the sixth name from the address is refused before the KDF runs')
  t.equal((await get('192.0.2.23', basic('gil', 'gil-password').authorization)).status, 200, 'another address logs in')
})

t.test('a user\'s password guessed from ever-changing addresses behind a trusted proxy: 429 from anywhere past the per-user budget, tokens still pass, `user unlock` clears it', async (t) => {
  const w = await startWorker(t, { 'trusted-proxies': '127.0.0.1' }, { private: true })
  await w.addUser('bob', 'bob-password', { 'demo.git': 'read' })
  await w.addUser('eve', 'eve-password', { 'demo.git': 'read' })
  const token = (await cli(w, ['token', 'create', 'bob'])).stdout.trim().split('\n')[1]!
  const get = (ip: string, authorization: string) => rawRequest(w.port, 'GET', refs('demo.git'), { authorization, 'x-forwarded-for': ip })
  const statuses: number[] = []
  for (let i = 0; i < 60; i++) statuses.push((await get(`198.51.100.${i + 1}`, basic('bob', `wrong-${i}`).authorization)).status)
  t.same(statuses, [...Array(10).fill(401), ...Array(50).fill(429)], 'ten failures from anywhere, then 429 whatever the address')
  const refused = await get('203.0.113.77', basic('bob', 'bob-password').authorization)
  t.equal(refused.status, 429, 'bob\'s right password too, from a new address: locked for the window')
  t.ok(Number(refused.headers['retry-after']) > 0, 'with Retry-After')
  t.equal((await get('203.0.113.77', basic('bob', token).authorization)).status, 200, 'bob\'s token still passes')
  t.equal((await get('203.0.113.77', `Bearer ${token}`)).status, 200, 'as Bearer too')
  t.equal((await get('203.0.113.78', basic('eve', 'eve-password').authorization)).status, 200, 'another user is not affected')
  t.ok(w.logs().some((l) => l.msg === 'password login throttled' && l.user_tried === 'bob'), 'the log names the user tried')

  const unlocked = await cli(w, ['user', 'unlock', 'bob'])
  t.equal(unlocked.code, 0, unlocked.stderr)
  t.match(unlocked.stdout, 'unlocked password logins of bob')
  t.equal((await get('203.0.113.79', basic('bob', 'bob-password').authorization)).status, 200, 'after `user unlock`: bob logs in again')
  for (const args of [['user', 'unlock'], ['user', 'unlock', 'bob', 'extra'], ['user', 'unlock', '--address', 'not-an-ip']]) {
    const r = await cli(w, args)
    t.equal(r.code, 2, `${args.join(' ')}: a usage error`)
    t.match(r.stderr.split('\n')[0], /user unlock NAME \| --address ADDR|not an IP address/, 'the reason first')
  }

  // an address locked out across names, cleared by address
  for (let i = 0; i < 50; i++) await get('192.0.2.99', basic(`nobody${i}`, 'guess').authorization)
  t.equal((await get('192.0.2.99', basic('eve', 'eve-password').authorization)).status, 429, 'the address is at its budget')
  t.equal((await cli(w, ['user', 'unlock', '--address', '192.0.2.99'])).code, 0)
  t.equal((await get('192.0.2.99', basic('eve', 'eve-password').authorization)).status, 200, 'unlocked by address')
})

t.test('a Basic user name no user can have (past 64 characters): 401 at once, nothing asked of the store', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const res = await rawRequest(w.port, 'GET', refs('demo.git'), basic('u'.repeat(2900), 'whatever'))
  t.equal(res.status, 401)
  t.equal(res.body.toString(), 'malformed Authorization header\n')
  t.notOk(w.logs().some((l) => Number(l.status) >= 500 || l.level === 50), 'no error logged')
})

t.test('a burst of password checks: the queue is bounded (503), a real login is not held behind it', async (t) => {
  const w = await startWorker(t, { 'password-queue-limit': '2', 'login-failure-address-limit': '1000', 'login-failure-limit': '1000' }, { private: true })
  const burst = await Promise.all(Array.from({ length: 16 }, (_, i) => rawRequest(w.port, 'GET', refs('demo.git'), basic(`user${i}`, `password-${i}`))))
  const statuses = burst.map((r) => r.status)
  t.ok(statuses.every((s) => s === 401 || s === 503), `only 401 and 503: ${statuses.join(' ')}`)
  const busy = burst.filter((r) => r.status === 503)
  t.ok(busy.length >= 1, `${busy.length} of 16 refused at once instead of queued`)
  for (const r of busy) {
    t.equal(r.body.toString(), 'server busy checking passwords; try again in a few seconds\n')
    t.equal(r.headers['retry-after'], '5')
  }
})

t.test('a token that expires while cached is refused from its expiry on', async (t) => {
  const w = await startWorker(t, { 'auth-cache-ttl-ms': '3600000' }, { private: true })
  await w.addUser('hal', 'hal-password', { 'demo.git': 'read' })
  const { hashToken } = await import('../../src/auth/tokens.js')
  const token = `vcsw_${'h'.repeat(43)}`
  const expiresAt = Math.floor(Date.now() / 1000) + 2
  await w.store.addToken('hal', hashToken(token), expiresAt)
  const bearer = { authorization: `Bearer ${token}` }
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), bearer)).status, 200, 'valid, and now cached for an hour')
  await waitFor(() => Date.now() > expiresAt * 1000, 5000, 'the expiry to pass')
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), bearer)).status, 401, 'refused at once, though the cache entry is young')
})

t.test('malformed Authorization headers: 401, no crash, nothing leaks; no credential in any log', async (t) => {
  const w = await startWorker(t, { 'login-failure-limit': '1000' }, { private: true })
  await w.addUser('fay', 'fay-password-123', { 'demo.git': 'read' })
  const headers = ['Basic !!!', 'Basic YWRh', `Basic ${'QUFB'.repeat(3000)}`, 'Foo bar', 'Basic ' + Buffer.from(':x').toString('base64'), 'Bearer', 'Bearer a b']
  for (const h of headers) {
    const res = await rawRequest(w.port, 'GET', refs('demo.git'), { authorization: h })
    t.equal(res.status, 401, h.slice(0, 30))
    t.equal(res.body.toString(), 'malformed Authorization header\n')
  }
  const { stdout } = await cli(w, ['token', 'create', 'fay'])
  const token = stdout.trim().split('\n')[1]!
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), { authorization: `Bearer ${token}` })).status, 200)
  t.equal((await rawRequest(w.port, 'GET', refs('demo.git'), basic('fay', 'fay-password-123'))).status, 200)
  await rawRequest(w.port, 'GET', `${refs('demo.git')}&x=1`, basic('fay', 'wrong-password-456'))
  await waitFor(() => w.logText().includes('wrong-password') || w.logs().filter((l) => l.msg === 'request').length >= 10, 5000, 'access lines')
  const logs = w.logText()
  for (const secret of ['fay-password-123', 'wrong-password-456', token, Buffer.from('fay:fay-password-123').toString('base64')]) {
    t.notOk(logs.includes(secret), `log never contains ${secret.slice(0, 8)}...`)
  }
  t.ok(logs.includes('"user":"fay"'), 'but it names the user')
})
