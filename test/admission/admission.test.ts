import t, { type Test } from 'tap'
import path from 'node:path'
import http from 'node:http'
import { readFile, writeFile } from 'node:fs/promises'
import { startWorker, spawnWorker, fixtureDir, addBigRepo, run, CLI, gitClient, gateWrapper, metric, rawRequest, waitFor, type Worker } from '../helpers/worker.js'
import { pkt, FLUSH } from '../../src/git/pktline.js'

const scrape = async (w: Worker) => (await rawRequest(w.port, 'GET', '/metrics')).body.toString()
const v0 = ['-c', 'protocol.version=0']

/** Commits a new file in `clone` (a working clone) and pushes it. */
async function commitAndPush(t: Test, git: ReturnType<typeof gitClient>, clone: string, name: string) {
  await writeFile(path.join(clone, name), `${name}\n`)
  for (const args of [['add', name], ['commit', '-qm', name]]) t.equal((await git(args, clone)).code, 0, `git ${args[0]}`)
  return git(['push', '-q', 'origin', 'HEAD'], clone)
}

/** A worker with a user who may push to every fixture repo, and that user's URL. */
async function workerWithPusher(t: Test, flags: Record<string, string>) {
  const w = await startWorker(t, flags)
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write', 'team/project.git': 'write' })
  return { w, as: w.urlAs('alice', 'alice-pw') }
}

t.test('full clones queue for their slots; incremental fetches, ls-refs and pushes are not held behind them', async (t) => {
  const gate = await gateWrapper(t)
  const { w, as } = await workerWithPusher(t, { 'git-bin': gate.bin, 'heavy-limit': '3', 'full-clone-limit': '1', 'queue-limit': '4' })
  const git = gitClient(w.dir)
  // a working clone of the other repo, to fetch incrementally later
  t.equal((await git(['clone', '-q', `${w.url}/team/project.git`, 'project'])).code, 0)
  const project = path.join(w.dir, 'project')
  t.equal((await git(['clone', '-q', `${as}/team/project.git`, 'pusher'])).code, 0)
  t.equal((await commitAndPush(t, git, path.join(w.dir, 'pusher'), 'one.txt')).code, 0)

  await gate.close()
  const first = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'full1'])
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight', { class: 'full' }) === 1, 10_000, 'the first full clone to hold the full-clone slot')
  const second = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'full2'])
  await waitFor(async () => metric(await scrape(w), 'vcs_queue_length') === 1, 10_000, 'the second full clone to queue')

  // Not held: ls-refs (v2), an incremental fetch, a push, while the full clone waits.
  const lsRemote = await git(['ls-remote', `${w.url}/demo.git`])
  t.equal(lsRemote.code, 0, lsRemote.stderr)
  t.match(lsRemote.stdout, /refs\/heads\/main/)
  const fetch = await git(['fetch', '-q', 'origin'], project)
  t.equal(fetch.code, 0, fetch.stderr)
  t.equal((await git(['rev-parse', 'origin/main'], project)).stdout, (await git(['rev-parse', 'HEAD'], path.join(w.dir, 'pusher'))).stdout, 'the fetch got the new commit')
  const push = await commitAndPush(t, git, path.join(w.dir, 'pusher'), 'two.txt')
  t.equal(push.code, 0, push.stderr)
  const text = await scrape(w)
  t.equal(metric(text, 'vcs_queue_length'), 1, 'the second full clone is still queued')
  t.ok(metric(text, 'vcs_queue_wait_seconds_count', { class: 'incremental' }) >= 2, 'the fetch and the push went through admission')

  await gate.open()
  t.equal((await first).code, 0)
  t.equal((await second).code, 0)
  t.equal((await git(['fsck', '--no-progress'], path.join(w.dir, 'full2'))).code, 0)
  const after = await scrape(w)
  t.equal(metric(after, 'vcs_queue_length'), 0)
  t.equal(metric(after, 'vcs_heavy_in_flight'), 0, 'every slot released')
  t.ok(metric(after, 'vcs_queue_wait_seconds_sum', { class: 'full' }) > 0, 'the second full clone waited')
})

t.test('past the limits: 503 with Retry-After and a reason the git user reads; a refused push changes nothing', async (t) => {
  const gate = await gateWrapper(t)
  const { w, as } = await workerWithPusher(t, { 'git-bin': gate.bin, 'heavy-limit': '1', 'queue-limit': '0' })
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${as}/demo.git`, 'work'])).code, 0)
  const work = path.join(w.dir, 'work')
  const before = (await git(['rev-parse', 'main'], path.join(w.reposDir, 'demo.git'))).stdout

  await gate.close()
  const held = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight') === 1, 10_000, 'the slot to be taken')

  const clone = await git(['clone', '-q', `${w.url}/demo.git`, 'refused'])
  t.not(clone.code, 0)
  t.match(clone.stderr, /503/)
  t.match(clone.stderr, /server busy: too many clones and pushes in progress/, 'git shows the reason')

  const push = await commitAndPush(t, git, work, 'refused.txt')
  t.not(push.code, 0, 'the push is refused')
  t.match(push.stderr, /server busy/)
  t.equal((await git(['rev-parse', 'main'], path.join(w.reposDir, 'demo.git'))).stdout, before, 'the refused push moved no ref')

  // what any client sees of a refused negotiation: git's own ERR packet, which git prints as
  // "remote error: <reason>" (it shows no body of a refused RPC POST, only "HTTP 503")
  const want = (await git(['rev-parse', 'main'], path.join(w.reposDir, 'demo.git'))).stdout.trim()
  const res = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { 'content-type': 'application/x-git-upload-pack-request' },
    Buffer.concat([pkt(`want ${want}\n`), FLUSH, pkt('done\n')]))
  t.equal(res.status, 200)
  t.equal(res.headers['content-type'], 'application/x-git-upload-pack-result')
  t.same(res.body, pkt('ERR server busy: too many clones and pushes in progress; try again in a few seconds\n'))

  await gate.open()
  t.equal((await held).code, 0)
  const retried = await git(['push', '-q', 'origin', 'HEAD'], work)
  t.equal(retried.code, 0, `the same push succeeds once there is room: ${retried.stderr}`)
  const text = await scrape(w)
  t.ok(metric(text, 'vcs_rejected_total', { reason: 'queue_full' }) >= 3, 'refusals counted by reason')
})

t.test('a queued request waits at most queueTimeoutMs; one whose client left frees its place', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'git-bin': gate.bin, 'heavy-limit': '1', 'queue-limit': '2', 'queue-timeout-ms': '400' })
  const git = gitClient(w.dir)
  await gate.close()
  const held = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight') === 1, 10_000, 'the slot to be taken')

  const late = await git(['clone', '-q', `${w.url}/demo.git`, 'late'])
  t.not(late.code, 0)
  t.match(late.stderr, /remote error: server busy: no free slot within 0.4 s; try again in a few seconds/, 'git shows the reason')
  t.equal(metric(await scrape(w), 'vcs_rejected_total', { reason: 'queue_timeout' }), 1)

  // a client that gives up while queued: its place is freed, nothing leaks
  const want = (await git(['rev-parse', 'main'], path.join(w.reposDir, 'demo.git'))).stdout.trim()
  const body = Buffer.concat([pkt(`want ${want}\n`), FLUSH, pkt('done\n')])
  const req = http.request({ host: '127.0.0.1', port: w.port, method: 'POST', path: '/demo.git/git-upload-pack', headers: { 'content-type': 'application/x-git-upload-pack-request', 'content-length': body.length }, agent: false })
  req.on('error', () => {})
  req.end(body)
  await waitFor(async () => metric(await scrape(w), 'vcs_queue_length') === 1, 10_000, 'the raw request to queue')
  req.destroy()
  await waitFor(async () => metric(await scrape(w), 'vcs_queue_length') === 0, 10_000, 'the abandoned request to leave the queue')

  await gate.open()
  t.equal((await held).code, 0)
  t.equal(metric(await scrape(w), 'vcs_heavy_in_flight'), 0)
  t.equal((await git(['clone', '-q', `${w.url}/demo.git`, 'after'])).code, 0, 'served normally afterwards')
})

t.test('a saturated worker says so on /health/git until it has room again', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'git-bin': gate.bin, 'heavy-limit': '1', 'queue-limit': '0' })
  const git = gitClient(w.dir)
  t.equal((await rawRequest(w.port, 'GET', '/health/git')).status, 200)
  await gate.close()
  const held = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => (await rawRequest(w.port, 'GET', '/health/git')).status === 503, 10_000, 'saturation to show')
  const body = JSON.parse((await rawRequest(w.port, 'GET', '/health/git')).body.toString()) as { failing: string[] }
  t.same(body.failing, ['saturation'])
  await gate.open()
  t.equal((await held).code, 0)
  await waitFor(async () => (await rawRequest(w.port, 'GET', '/health/git')).status === 200, 10_000, 'room again')
})

t.test('overload: 3x the limit of clones at once; each completes or gets a clean 503, none hangs, memory stays bounded', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  await addBigRepo(dir, reposDir, 20)
  const vis = await run(process.execPath, [CLI, 'repo', 'visibility', 'big', 'public', '--repos', reposDir, '--data', dataDir])
  t.equal(vis.code, 0, vis.stderr)
  const gate = await gateWrapper(t)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--git-bin', gate.bin, '--heavy-limit', '2', '--repo-heavy-limit', '2', '--client-heavy-limit', '2', '--queue-limit', '2', '--log-level', 'warn'])
  const port = Number(new URL(worker.url).port)
  const git = gitClient(dir)
  await gate.close()
  const clones = Array.from({ length: 6 }, (_, i) => git(['-c', 'protocol.version=0', 'clone', '-q', `${worker.url}/big.git`, `c${i}`], dir, { timeoutMs: 120_000 }))
  await waitFor(async () => {
    const text = (await rawRequest(port, 'GET', '/metrics')).body.toString()
    return metric(text, 'vcs_heavy_in_flight') === 2 && metric(text, 'vcs_queue_length') === 2 && metric(text, 'vcs_rejected_total') === 2
  }, 30_000, 'two clones running, two queued, two refused').catch(async (err: Error) => {
    const text = (await rawRequest(port, 'GET', '/metrics')).body.toString()
    throw new Error(`${err.message}: ${text.split('\n').filter((l) => /^vcs_(heavy|queue_length|rejected)/.test(l)).join(' | ')}`)
  })
  await gate.open()
  const results = await Promise.all(clones)
  const ok = results.filter((r) => r.code === 0)
  const refused = results.filter((r) => r.code !== 0)
  t.equal(ok.length, 4, 'the running and the queued clones complete')
  t.equal(refused.length, 2)
  // refused at its upload-pack (git prints the ERR packet) or, when it came after the queue
  // filled, already at its info/refs (a 503 whose line git prints as "remote: "): a race of the
  // six clones' starts, both answers the user can read (CI saw the second once)
  for (const r of refused) t.match(r.stderr, /remote error: server busy|remote: server busy: too many clones and pushes in progress/, 'a refused clone is told why')
  for (let i = 0; i < 6; i++) {
    if (results[i]!.code === 0) t.equal((await git(['fsck', '--no-progress'], path.join(dir, `c${i}`))).code, 0, `clone ${i} is complete`)
  }
  const status = await readFile(`/proc/${worker.proc.pid}/status`, 'utf8')
  const peakKb = Number(/VmHWM:\s+(\d+) kB/.exec(status)![1])
  t.ok(peakKb < 250 * 1024, `worker peak RSS ${Math.round(peakKb / 1024)} MB stays under 250 MB while serving 4 x 20 MB clones`)
  const text = (await rawRequest(port, 'GET', '/metrics')).body.toString()
  t.equal(metric(text, 'vcs_heavy_in_flight'), 0)
  t.equal(metric(text, 'vcs_queue_length'), 0)
})

t.test('the per-repo limit: a busy repo queues its own clones, other repos still get slots', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'git-bin': gate.bin, 'heavy-limit': '4', 'repo-heavy-limit': '1', 'queue-limit': '4' })
  const git = gitClient(w.dir)
  await gate.close()
  const clone = (repo: string, to: string) => git(['-c', 'protocol.version=0', 'clone', '-q', `${w.url}/${repo}`, to])
  const a = clone('demo.git', 'a')
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight') === 1, 10_000, 'demo.git to take its one slot')
  const b = clone('demo.git', 'b')
  await waitFor(async () => metric(await scrape(w), 'vcs_queue_length') === 1, 10_000, 'the second demo.git clone to queue')
  const c = clone('team/project.git', 'c')
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight') === 2, 10_000, 'the other repo to get a slot past the queued one')
  t.equal(metric(await scrape(w), 'vcs_queue_length'), 1)
  await gate.open()
  for (const r of await Promise.all([a, b, c])) t.equal(r.code, 0, r.stderr)
})

t.test('an invented have does not buy an incremental slot; full-clone overload turns /health/git red and git says why', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'git-bin': gate.bin, 'heavy-limit': '3', 'full-clone-limit': '1', 'client-heavy-limit': '3', 'queue-limit': '1' })
  const git = gitClient(w.dir)
  const demo = path.join(w.reposDir, 'demo.git')
  const main = (await git(['rev-parse', 'main'], demo)).stdout.trim()
  const parent = (await git(['rev-parse', 'main~1'], demo)).stdout.trim()
  const negotiate = (have: string) => rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { 'content-type': 'application/x-git-upload-pack-request' },
    Buffer.concat([pkt(`want ${main}\n`), FLUSH, pkt(`have ${have}\n`), pkt('done\n')]))
  await gate.close()
  const held = git([...v0, 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight', { class: 'full' }) === 1, 10_000, 'a full clone to hold the full-clone slot')
  t.equal((await rawRequest(w.port, 'GET', '/health/git')).status, 200, 'one full clone running: healthy')

  // "have <an object the repo does not hold>": still a full clone, so it queues behind the full-clone limit
  const invented = negotiate('f'.repeat(40))
  await waitFor(async () => metric(await scrape(w), 'vcs_queue_length') === 1, 10_000, 'the invented-have clone to queue')
  t.equal(metric(await scrape(w), 'vcs_heavy_in_flight', { class: 'incremental' }), 0, 'it did not take an incremental slot')
  const health = await rawRequest(w.port, 'GET', '/health/git')
  t.equal(health.status, 503, 'full-clone slots and the queue full: saturated')
  t.same((JSON.parse(health.body.toString()) as { failing: string[] }).failing, ['saturation'])
  const refused = await git(['clone', '-q', `${w.url}/demo.git`, 'refused'])
  t.not(refused.code, 0)
  t.match(refused.stderr, /remote: server busy: too many clones and pushes in progress/, 'git prints the reason')

  // a real incremental fetch (its have is in the repo) still gets a slot at once
  const incremental = negotiate(parent)
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight', { class: 'incremental' }) === 1, 10_000, 'the real incremental fetch to be admitted')
  await gate.open()
  t.equal((await held).code, 0)
  for (const res of [await invented, await incremental]) {
    t.equal(res.status, 200)
    t.match(res.body.subarray(0, 64).toString('latin1'), /ACK|NAK/, 'served a pack negotiation')
  }
  await waitFor(async () => (await rawRequest(w.port, 'GET', '/health/git')).status === 200, 10_000, 'healthy again')
})

t.test('one client holds at most clientHeavyLimit slots: a slow reader cannot take them all', async (t) => {
  const gate = await gateWrapper(t)
  // heavyLimit 4: each client (a user, or an address) at most 2 (the default, half)
  const { w } = await workerWithPusher(t, { 'git-bin': gate.bin, 'heavy-limit': '4', 'full-clone-limit': '4', 'repo-heavy-limit': '4', 'trusted-proxies': '127.0.0.1' })
  const git = gitClient(w.dir)
  const from = (address: string) => ['-c', `http.extraHeader=X-Forwarded-For: ${address}`]
  await gate.close()
  const first = [1, 2, 3].map((i) => git([...v0, ...from('192.0.2.1'), 'clone', '-q', `${w.url}/demo.git`, `a${i}`]))
  await waitFor(async () => {
    const text = await scrape(w)
    return metric(text, 'vcs_heavy_in_flight') === 2 && metric(text, 'vcs_queue_length') === 1
  }, 10_000, 'two clones of one address running, its third queued')
  const other = git([...v0, ...from('192.0.2.2'), 'clone', '-q', `${w.url}/demo.git`, 'b'])
  // git sends credentials to a public repo only when asked; this user sends them up front
  const alice = `Authorization: Basic ${Buffer.from('alice:alice-pw').toString('base64')}`
  const user = git([...v0, ...from('192.0.2.1'), '-c', `http.extraHeader=${alice}`, 'clone', '-q', `${w.url}/demo.git`, 'u'])
  await waitFor(async () => metric(await scrape(w), 'vcs_heavy_in_flight') === 4, 10_000, 'another address and a user from the same address get the free slots')
  t.equal(metric(await scrape(w), 'vcs_queue_length'), 1, 'the third clone of the first address still waits')
  await gate.open()
  const results = await Promise.all([...first, other, user])
  t.same(results.map((r) => r.code), [0, 0, 0, 0, 0], results.map((r) => r.stderr).join(''))
})
