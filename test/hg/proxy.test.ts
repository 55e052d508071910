import t from 'tap'
import type * as Tap from 'tap'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import http from 'node:http'
import { readFile, writeFile, appendFile } from 'node:fs/promises'
import { startWorker, spawnWorker, fixtureDir, run, rawRequest, processesMatching, waitFor, CLI, clientEnv, smallFilesystem, type Worker } from '../helpers/worker.js'

/** An hg client with its own hgrc (identity; credentials for the worker when given). */
async function hgClient(w: Worker, creds?: { user: string; password: string }) {
  const rc = path.join(w.dir, `hgrc-${creds?.user ?? 'anon'}`)
  let text = '[ui]\nusername = Test User <test@example.invalid>\ninteractive = false\n'
  if (creds) text += `[auth]\nw.prefix = ${w.url}\nw.username = ${creds.user}\nw.password = ${creds.password}\n`
  await writeFile(rc, text)
  const env = clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc })
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env })
}

const hgFlags = { 'hg-processes': '2' }

/** Clones demo-hg into `name` and commits one incompressible file of `mib` MiB in it as `message`. */
async function cloneWithBlob(t: Tap.Test, w: Worker, hg: Awaited<ReturnType<typeof hgClient>>, name: string, mib: number, message: string): Promise<string> {
  const work = path.join(w.dir, name)
  t.equal((await hg(['clone', `${w.url}/demo-hg`, work])).code, 0)
  await writeFile(path.join(work, 'blob.bin'), randomBytes(mib * 1024 * 1024))
  await hg(['add', 'blob.bin'], work)
  await hg(['commit', '-m', message], work)
  return work
}

t.test('hg clone, pull and push through the worker, with the pusher named to hooks', async (t) => {
  const w = await startWorker(t, hgFlags)
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'write' })
  const record = path.join(w.dir, 'pushers.txt')
  await appendFile(path.join(w.reposDir, 'demo-hg', '.hg', 'hgrc'), `[hooks]\nchangegroup.who = echo "$HG_NODE $HG_URL" >> ${record}\n`)
  const anon = await hgClient(w)
  let r = await anon(['clone', `${w.url}/demo-hg`, 'anon'])
  t.equal(r.code, 0, r.stderr)
  t.equal((await anon(['log', '-R', 'anon', '-T', '{rev}:{desc}|'])).stdout, '3:Other branch|2:Change 3|1:Change 2|0:Change 1|')
  t.equal((await anon(['bookmarks', '-R', 'anon', '-T', '{bookmark}'])).stdout, 'stable')

  const hana = await hgClient(w, { user: 'hana', password: 'hana-password' })
  r = await hana(['clone', `${w.url}/demo-hg`, 'work'])
  t.equal(r.code, 0, r.stderr)
  const work = path.join(w.dir, 'work')
  await writeFile(path.join(work, 'new.txt'), 'new\n')
  await hana(['add', 'new.txt'], work)
  await hana(['commit', '-m', 'from hana', '-d', '2025-01-01 00:00 +0000'], work)
  await hana(['bookmark', 'feature'], work)
  await hana(['branch', 'topic'], work)
  await hana(['commit', '-m', 'on topic', '-d', '2025-01-01 00:00 +0000'], work)
  r = await hana(['push', '--new-branch', '-B', 'feature'], work)
  t.equal(r.code, 0, r.stderr + r.stdout)
  t.match(r.stdout, 'added 2 changesets')
  const server = (args: string[]) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), ...args], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
  t.equal((await server(['log', '-r', 'tip', '-T', '{desc} {branch} {phase}'])).stdout, 'on topic topic public', 'pushed, named branch, public phase')
  t.match((await server(['bookmarks', '-T', '{bookmark} '])).stdout, 'feature')
  t.equal((await server(['verify', '-q'])).code, 0, 'hg verify clean')
  // hg hands hooks the pushing user as the last part of HG_URL (remote:http:<host>:<REMOTE_USER>)
  t.match(await readFile(record, 'utf8'), /remote:http:127\.0\.0\.1:hana\n$/)

  r = await anon(['pull', '-u'], path.join(w.dir, 'anon'))
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'added 2 changesets')
  const access = w.logs().filter((l) => l.msg === 'request' && l.route === 'hg_proxy')
  t.ok(access.some((l) => l.service === 'unbundle' && l.user === 'hana' && l.status === 200), 'the push is logged with its user')
  const bundles = access.filter((l) => l.service === 'getbundle')
  t.ok(bundles.length >= 2, `the clone's and the pull's getbundle logged (${bundles.length})`)
  t.ok(bundles.every((l) => (l.bytes_out as number) > 0), 'bytes out counted on each')
})

t.test('hg refusals: anonymous push, reader push, private repos, batch hiding pushkey, unknown commands, direct access to a child', async (t) => {
  const w = await startWorker(t, hgFlags)
  await w.addUser('rita', 'rita-password', { 'demo-hg': 'read' })
  const server = (args: string[]) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), ...args], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
  const tip = (await server(['log', '-r', 'tip', '-T', '{node}'])).stdout
  for (const [name, creds] of [['anonymous', undefined], ['reader', { user: 'rita', password: 'rita-password' }]] as const) {
    const hg = await hgClient(w, creds)
    const dir = path.join(w.dir, `c-${name}`)
    t.equal((await hg(['clone', `${w.url}/demo-hg`, dir])).code, 0)
    await writeFile(path.join(dir, 'x.txt'), 'x\n')
    await hg(['add', 'x.txt'], dir)
    await hg(['commit', '-m', 'x'], dir)
    const r = await hg(['push'], dir)
    t.not(r.code, 0, `${name} push refused`)
    t.match(r.stderr, name === 'anonymous' ? /http authorization required/ : 'abort: HTTP Error 403: rita may read demo-hg but not push to it')
  }
  const basic = (u: string, p: string) => ({ authorization: `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}` })
  let res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=batch', { ...basic('rita', 'rita-password'), 'x-hgarg-1': 'cmds=heads+%3Bpushkey+namespace%3Dbookmarks%2Ckey%3Dx%2Cold%3D%2Cnew%3D' + tip })
  t.equal(res.status, 403, 'batch hiding pushkey needs write')
  res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=batch', { ...basic('rita', 'rita-password'), 'x-hgarg-1': 'cmds=heads+%3Bknown+nodes%3D' })
  t.equal(res.status, 200, 'a read-only batch is a read')
  res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=batch&cmds=pushkey', basic('rita', 'rita-password'))
  t.equal(res.status, 403, 'batch args in the query')
  res = await rawRequest(w.port, 'POST', '/demo-hg?cmd=batch', { ...basic('rita', 'rita-password'), 'x-hgargs-post': '20', 'content-type': 'application/mercurial-0.1' }, 'cmds=heads+%3Bknown+')
  t.same([res.status, res.body.toString()], [400, 'hg arguments in the request body (X-HgArgs-Post) are not accepted here\n'], 'batch args in the body are refused')
  res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=frobnicate', basic('rita', 'rita-password'))
  t.equal(res.status, 403, 'an unknown command is a write')
  res = await rawRequest(w.port, 'GET', '/demo-hg/log')
  t.equal(res.status, 200, 'hgweb pages are reads')
  for (const p of ['/../demo-hg?cmd=heads', '/%2e%2e/demo-hg?cmd=heads', '/.hg?cmd=heads']) t.equal((await rawRequest(w.port, 'GET', p)).status, 400, p)
  t.equal((await rawRequest(w.port, 'GET', '/nope-hg?cmd=heads')).status, 401, 'a missing repo challenges an anonymous caller, as a private one does')
  t.equal((await rawRequest(w.port, 'GET', '/nope-hg?cmd=heads', basic('rita', 'rita-password'))).status, 404, 'an authenticated caller learns it is missing')
  await w.store.setRepo('demo-hg', 'hg', false)
  t.equal((await rawRequest(w.port, 'GET', '/demo-hg?cmd=heads')).status, 401, 'private: anonymous gets the challenge')

  // a process on this machine talking to a child directly gets nothing
  const child = w.app.hgPool!.children[0]!
  res = await rawRequest(Number(child.url!.port), 'POST', '/demo-hg?cmd=unbundle', { 'content-type': 'application/mercurial-0.1', 'x-hgarg-1': 'heads=686173686564' }, 'x')
  t.equal(res.status, 403)
  t.equal(res.body.toString(), 'direct access to this hg serve child is not allowed\n')
  res = await rawRequest(Number(child.url!.port), 'GET', '/demo-hg?cmd=heads', { 'x-vcs-worker-secret': 'guess' })
  t.equal(res.status, 403, 'a wrong secret too')
  t.equal((await server(['log', '-r', 'tip', '-T', '{node}'])).stdout, tip, 'same tip')
  t.equal((await server(['verify', '-q'])).code, 0)
})

t.test('kill -9 of the worker leaves no hg serve child behind', async (t) => {
  const { reposDir, dataDir } = await fixtureDir(t)
  const vis = await run(process.execPath, [CLI, 'repo', 'visibility', 'demo-hg', 'public', '--repos', reposDir, '--data', dataDir])
  t.equal(vis.code, 0, vis.stderr)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--hg-processes', '2'])
  await waitFor(async () => (await rawRequest(Number(new URL(worker.url).port), 'GET', '/demo-hg?cmd=capabilities')).status === 200, 10_000, 'hg to serve')
  const children = await processesMatching(dataDir)
  t.ok(children.filter((p) => p.cmd.includes('hg serve')).length >= 2, 'two hg serve children')
  worker.proc.kill('SIGKILL')
  await waitFor(async () => (await processesMatching(dataDir)).length === 0, 10_000, 'hg children to exit')
  t.same(await processesMatching(dataDir), [])
})

t.test('a 20 MB hg push to a public repo: 401, retried with the configured credentials, lands once', async (t) => {
  const w = await startWorker(t, hgFlags)
  await w.addUser('ike', 'ike-password', { 'demo-hg': 'write' })
  const hg = await hgClient(w, { user: 'ike', password: 'ike-password' })
  const work = await cloneWithBlob(t, w, hg, 'big', 20, 'big')
  const r = await hg(['push'], work)
  t.equal(r.code, 0, r.stderr)
  const unbundles = w.logs().filter((l) => l.msg === 'request' && l.service === 'unbundle')
  t.same(unbundles.map((l) => l.status), [401, 200], 'challenged once, then accepted')
  t.ok((unbundles[1]!.bytes_in as number) > 20 * 1024 * 1024, 'the bundle went through')
  const server = (args: string[]) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), ...args], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
  t.equal((await server(['log', '-r', 'tip', '-T', '{desc}'])).stdout, 'big')
  t.equal((await server(['verify', '-q'])).code, 0)
})

t.test('an hg serve child killed mid-flight: restarted, the next clone works', async (t) => {
  const w = await startWorker(t, hgFlags)
  const hg = await hgClient(w)
  const pool = w.app.hgPool!
  const victim = pool.children[0]!
  const oldPid = victim.pid!
  process.kill(oldPid, 'SIGKILL')
  await waitFor(() => victim.state === 'ready' && victim.pid !== oldPid, 5000, 'the child to come back')
  t.ok(w.logs().some((l) => l.msg === 'hg child state' && l.to === 'stopped' && l.child_pid === oldPid), 'its death was logged')
  t.equal(pool.restarts, 1)
  for (const p of pool.children) process.kill(p.pid!, 'SIGKILL')
  await waitFor(() => pool.readyCount() === 0, 2000, 'all children down').catch(() => {})
  await waitFor(() => pool.readyCount() === 2, 10_000, 'all children back')
  const r = await hg(['clone', `${w.url}/demo-hg`, 'after'])
  t.equal(r.code, 0, r.stderr)
})

t.test('an abandoned transaction (push killed mid-way) is recovered before the repo is served again', async (t) => {
  const w = await startWorker(t, hgFlags)
  await w.addUser('jo', 'jo-password', { 'demo-hg': 'write' })
  const repo = path.join(w.reposDir, 'demo-hg')
  const local = (args: string[], cwd = w.dir) => run('hg', args, { cwd, env: clientEnv(w.dir, { HGRCPATH: '', HGUSER: 'Test <t@example.invalid>' }) })
  await local(['clone', '-q', repo, 'direct'])
  const direct = path.join(w.dir, 'direct')
  await writeFile(path.join(direct, 'doomed.txt'), 'doomed\n')
  await local(['add', 'doomed.txt'], direct)
  await local(['commit', '-m', 'doomed'], direct)
  // the pushing hg process dies inside the transaction: journal left, lock held by a dead pid
  const crashed = await local(['push', repo, '--config', 'hooks.pretxnchangegroup.crash=kill -9 $PPID'], direct)
  t.not(crashed.code, 0)
  const { stat } = await import('node:fs/promises')
  t.ok(await stat(path.join(repo, '.hg', 'store', 'journal')).then(() => true, () => false), 'journal left behind')

  const hg = await hgClient(w, { user: 'jo', password: 'jo-password' })
  t.equal((await hg(['clone', `${w.url}/demo-hg`, 'after'])).code, 0, 'served again')
  t.ok(w.logs().some((l) => l.msg === 'recovered an abandoned hg transaction'), 'the recovery is logged')
  const after = path.join(w.dir, 'after')
  t.notMatch((await hg(['log', '-T', '{desc}\n'], after)).stdout, 'doomed', 'the unfinished push was rolled back')
  await writeFile(path.join(after, 'ok.txt'), 'ok\n')
  await hg(['add', 'ok.txt'], after)
  await hg(['commit', '-m', 'after recovery'], after)
  const r = await hg(['push'], after)
  t.equal(r.code, 0, r.stderr)
  t.equal((await local(['-R', repo, 'verify', '-q'])).code, 0)
})

t.test('a silent hg serve child is cut off with a clear error and replaced', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-timeout-ms': '1500' })
  const pool = w.app.hgPool!
  const child = pool.children[0]!
  const stuckPid = child.pid!
  process.kill(stuckPid, 'SIGSTOP') // alive but silent
  t.teardown(() => { try { process.kill(stuckPid, 'SIGKILL') } catch { /* gone */ } })
  const res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=heads')
  t.equal(res.status, 504)
  t.equal(res.body.toString(), 'the hg server process did not answer in time; try again\n')
  await waitFor(() => child.state === 'ready' && child.pid !== stuckPid, 15_000, 'a fresh child')
  const hg = await hgClient(w)
  const r = await hg(['clone', `${w.url}/demo-hg`, 'after'])
  t.equal(r.code, 0, r.stderr)
})

t.test('kill -9 of a child during a clone: that client gets an error, the child is back within 2 s, 8 concurrent clones work', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const local = (args: string[], cwd = w.dir) => run('hg', args, { cwd, env: clientEnv(w.dir, { HGRCPATH: '', HGUSER: 'Test <t@example.invalid>' }) })
  const big = path.join(w.reposDir, 'big-hg')
  await local(['init', big])
  const { randomBytes } = await import('node:crypto')
  await writeFile(path.join(big, 'blob.bin'), randomBytes(40 * 1024 * 1024))
  await local(['add', 'blob.bin'], big)
  await local(['commit', '-m', 'big'], big)
  await w.store.setRepo('big-hg', 'hg', true)
  const hg = await hgClient(w)
  const pool = w.app.hgPool!
  const child = pool.children[0]!
  const pid = child.pid!
  const cloning = hg(['clone', '-U', `${w.url}/big-hg`, 'interrupted'])
  // discovery done (its batch answered) and a request in flight on the child: the bundle download
  await waitFor(() => w.logs().some((l) => l.msg === 'request' && l.service === 'batch') && child.inflight > 0, 30_000, 'the bundle download to start')
  process.kill(pid, 'SIGKILL')
  const r = await cloning
  t.not(r.code, 0, 'the interrupted clone fails')
  t.match(r.stderr, /abort|error/i, `and says so: ${r.stderr.trim().split('\n').pop()}`)
  await waitFor(() => child.state === 'ready' && child.pid !== pid, 30_000, 'the child back')
  const clones = await Promise.all(Array.from({ length: 8 }, (_, i) => hg(['clone', '-U', `${w.url}/demo-hg`, `cc${i}`])))
  t.same(clones.map((c) => c.code), Array(8).fill(0), clones.map((c) => c.stderr).join(''))
})

t.test('a child that fails its probes leaves rotation without any request noticing', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '2', 'hg-probe-interval-ms': '300', 'kill-grace-ms': '200' })
  const pool = w.app.hgPool!
  const sick = pool.children[1]!
  const pid = sick.pid!
  process.kill(pid, 'SIGSTOP')
  t.teardown(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } })
  await waitFor(() => sick.state !== 'ready', 5000, 'the sick child to leave rotation')
  t.ok(w.logs().some((l) => l.msg === 'hg child failed its probe' && l.child_pid === pid))
  for (let i = 0; i < 4; i++) t.equal((await rawRequest(w.port, 'GET', '/demo-hg?cmd=heads')).status, 200, 'requests go to the healthy child')
  await waitFor(() => sick.state === 'ready' && sick.pid !== pid, 10_000, 'a replacement')
})

t.test('concurrent first requests to a fresh child all succeed', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const server = (args: string[]) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), ...args], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
  const tip = (await server(['log', '-r', 'tip', '-T', '{node}'])).stdout
  const results = await Promise.all(Array.from({ length: 6 }, () => rawRequest(w.port, 'GET', '/demo-hg?cmd=getbundle', { 'x-hgarg-1': `common=${'0'.repeat(40)}&heads=${tip}` })))
  t.same(results.map((r) => r.status), Array(6).fill(200))
  t.ok(results.every((r) => r.body.length > 100), 'each got a bundle')
})

t.test('a repo is served the moment it exists, not after hg\'s next index rescan', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const statuses: number[] = []
  for (const name of ['fresh-1', 'fresh-2', 'fresh-3']) {
    // the index was rescanned just now for this request; the repo below is younger than it
    t.equal((await rawRequest(w.port, 'GET', '/demo-hg?cmd=capabilities')).status, 200)
    t.equal((await run('hg', ['init', path.join(w.reposDir, name)])).code, 0)
    await w.store.setRepo(name, 'hg', true)
    statuses.push((await rawRequest(w.port, 'GET', `/${name}?cmd=capabilities`)).status)
  }
  t.same(statuses, [200, 200, 200], 'each new repo answered at once, not 404')
})

t.test('repos created later are served at once; big X-HgArg sets pass; chunked POST bodies get a length', async (t) => {
  const w = await startWorker(t, hgFlags)
  await w.addUser('kim', 'kim-password')
  const created = await run(process.execPath, [CLI, 'repo', 'create', 'later/site', '--hg', '--public', '--repos', w.reposDir, '--data', w.config.dataDir])
  t.equal(created.code, 0, created.stderr)
  t.equal(created.stdout, 'created hg repository later/site (public)\n')
  await run(process.execPath, [CLI, 'grant', 'kim', 'later/site', 'write', '--repos', w.reposDir, '--data', w.config.dataDir])
  const hg = await hgClient(w, { user: 'kim', password: 'kim-password' })
  let r = await hg(['clone', `${w.url}/later/site`, 'site'])
  t.equal(r.code, 0, `a repo created after start is served: ${r.stderr}`)
  const site = path.join(w.dir, 'site')
  await writeFile(path.join(site, 'a.txt'), 'a\n')
  await hg(['add', 'a.txt'], site)
  await hg(['commit', '-m', 'first'], site)
  r = await hg(['push'], site)
  t.equal(r.code, 0, r.stderr)

  // a discovery with many heads sends its arguments in X-HgArg-N headers of the advertised size
  const caps = (await rawRequest(w.port, 'GET', '/demo-hg?cmd=capabilities')).body.toString()
  t.match(caps, /\bhttpheader=16384\b/, 'children advertise 16 KiB argument headers')
  const nodes = Array.from({ length: 4000 }, (_, i) => i.toString(16).padStart(40, '0')).join('+')
  const arg = `nodes=${nodes}`
  const headers: Record<string, string> = {}
  for (let i = 0; i * 16384 < arg.length; i++) headers[`x-hgarg-${i + 1}`] = arg.slice(i * 16384, (i + 1) * 16384)
  const res = await rawRequest(w.port, 'GET', '/demo-hg?cmd=known', headers)
  t.equal(res.status, 200, `${arg.length} bytes in ${Object.keys(headers).length} X-HgArg headers, not 431`)
  t.match(res.body.toString(), /^[01]{4000}$/, 'hg answered for every node')
  // a gap in the numbering: hg would stop reading at the gap, so the worker refuses it
  const gap = await rawRequest(w.port, 'GET', '/demo-hg?cmd=known', { 'x-hgarg-1': 'nodes=', 'x-hgarg-3': 'zz' })
  t.same([gap.status, gap.body.toString()], [400, 'malformed hg request: x-hgarg-3 without the headers before it\n'], 'a gap in X-HgArg numbering')
  t.equal((await rawRequest(w.port, 'GET', '/demo-hg?cmd=heads')).status, 200, 'the worker is fine')

  // a chunked push body: spilled, sent to hg serve with a Content-Length (hg reads the bundle:
  // this one is not a bundle, and hg says so in its answer)
  const creds = `Basic ${Buffer.from('kim:kim-password').toString('base64')}`
  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: w.port, method: 'POST', path: '/later/site?cmd=unbundle', headers: { authorization: creds, 'content-type': 'application/mercurial-0.1', 'x-hgarg-1': 'heads=666f726365', 'transfer-encoding': 'chunked' } }, (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode!, body }))
    })
    req.on('error', reject)
    req.write('not a ')
    req.end('bundle')
  })
  t.equal(chunked.status, 200, 'a chunked body reaches hg serve with a length')
  t.match(chunked.body, /^0\n/, 'hg read it and refused it: not a bundle')
})

t.test('a push to a private repo sends its bundle once: the client is authenticated by then', async (t) => {
  const w = await startWorker(t, hgFlags, { private: true })
  await w.addUser('lee', 'lee-password', { 'demo-hg': 'write' })
  const hg = await hgClient(w, { user: 'lee', password: 'lee-password' })
  const work = await cloneWithBlob(t, w, hg, 'lee', 5, 'blob')
  const before = w.logs().length
  const r = await hg(['push'], work)
  t.equal(r.code, 0, r.stderr)
  const push = w.logs().slice(before).filter((l) => l.msg === 'request' && l.route === 'hg_proxy')
  const unbundles = push.filter((l) => l.service === 'unbundle')
  t.same(unbundles.map((l) => l.status), [200], 'one unbundle, accepted')
  const wire = push.reduce((sum, l) => sum + (l.bytes_in as number), 0)
  t.ok(wire < 1.1 * 5 * 1024 * 1024, `${wire} bytes sent for a 5 MiB bundle`)
  t.comment(`push requests: ${push.map((l) => `${l.service}:${l.status}`).join(' ')}`)
})

t.test('an hg push that runs out of disk: the client reads why, the worker logs hg\'s traceback, the repo is intact', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const mnt = path.join(w.reposDir, 'small-hg')
  await smallFilesystem(t, mnt, '3m')
  const local = (args: string[], cwd = w.dir) => run('hg', args, { cwd, env: clientEnv(w.dir, { HGRCPATH: '', HGUSER: 'Test <t@example.invalid>' }) })
  t.equal((await local(['init', mnt])).code, 0)
  await w.store.setRepo('small-hg', 'hg', true)
  await w.addUser('sam', 'sam-password', { 'small-hg': 'write' })
  const hg = await hgClient(w, { user: 'sam', password: 'sam-password' })
  const cloned = await hg(['clone', `${w.url}/small-hg`, 'small'])
  t.equal(cloned.code, 0, cloned.stderr)
  const work = path.join(w.dir, 'small')
  await writeFile(path.join(work, 'big.bin'), randomBytes(5 * 1024 * 1024))
  await hg(['add', 'big.bin'], work)
  await hg(['commit', '-m', 'too big for the disk'], work)
  const r = await hg(['push'], work)
  t.not(r.code, 0)
  t.match(r.stderr, 'abort: HTTP Error 500: the server is out of disk space', 'the client is told why')
  await waitFor(() => w.logs().some((l) => l.msg === 'hg serve error log' && String(l.output).includes('No space left on device')), 5000, 'the traceback in the worker log')
  t.ok(w.logs().some((l) => l.msg === 'hg serve answered with an error' && l.status === 500), 'the failed answer is logged as an error')
  // hg could not even roll back on a full disk: the next request recovers the repo first
  t.equal((await hg(['clone', `${w.url}/small-hg`, 'after'])).code, 0, 'served again')
  t.ok(w.logs().some((l) => l.msg === 'recovered an abandoned hg transaction'), 'after recovering the transaction')
  t.equal((await local(['-R', mnt, 'log', '-T', '{rev}'])).stdout, '', 'no changeset landed')
  const verify = await local(['-R', mnt, 'verify', '-q'])
  t.equal(verify.code, 0, `hg verify clean: ${verify.stdout}${verify.stderr}`)
})

t.test('branch protection is refused on an hg repo, with one line', async (t) => {
  const w = await startWorker(t)
  const r = await run(process.execPath, [CLI, 'protect', 'demo-hg', 'default', '--repos', w.reposDir, '--data', w.config.dataDir])
  t.same([r.code, r.stderr.split('\n')[0]], [2, 'vcs-worker: demo-hg is an hg repository: branch protection is enforced on git pushes only'])
  t.same(await w.store.protections('demo-hg'), [], 'nothing stored')
})
