import t from 'tap'
import { spawn } from 'node:child_process'
import { rename } from 'node:fs/promises'
import net from 'node:net'
import { startWorker, rawRequest, waitFor } from '../helpers/worker.js'

const json = (body: Buffer) => JSON.parse(body.toString()) as { status: string; failing: string[]; checks: Record<string, { status: string; message: string }> }

t.test('health port: the same answers as the worker port, from a thread of its own', async (t) => {
  const w = await startWorker(t, { 'health-port': '0', 'health-interval-ms': '100' }) // no hg children: hg is red
  const hp = w.app.probes!.healthPort!
  t.not(hp, w.port)
  for (const [route, code] of [['/health/git', 200], ['/health/hg', 503], ['/health/ready', 503]] as const) {
    const main = await rawRequest(w.port, 'GET', route)
    const thread = await rawRequest(hp, 'GET', route)
    t.equal(thread.status, code, `${route} on the health port`)
    t.equal(main.status, code, `${route} on the worker port`)
    t.match(thread.headers['content-type'], /^application\/json/)
    t.equal(thread.headers['cache-control'], 'no-store')
    const a = json(main.body)
    const b = json(thread.body)
    t.same(b.failing, a.failing, `${route}: the same failing checks`)
    t.same(Object.keys(b.checks), Object.keys(a.checks), `${route}: the same checks`)
    for (const name of Object.keys(a.checks)) t.equal(b.checks[name]!.status, a.checks[name]!.status, `${route} ${name}`)
  }
  t.same(json((await rawRequest(hp, 'GET', '/health/hg')).body).failing, ['hg_children'])
  const live = await rawRequest(hp, 'GET', '/health/live')
  t.equal(live.status, 200)
  t.equal(live.body.toString(), 'ok\n')
  const head = await rawRequest(hp, 'HEAD', '/health/git?from=haproxy')
  t.equal(head.status, 200, 'HEAD, and a query string ignored')
  t.equal(head.body.length, 0)

  // bad input: one line, the thread keeps answering
  const other = await rawRequest(hp, 'GET', '/demo.git/info/refs?service=git-upload-pack')
  t.equal(other.status, 404, 'the health port serves no repository')
  t.match(other.body.toString(), /^not found: the health port serves \/health\/live, \/health\/git, \/health\/hg and \/health\/ready\n$/)
  const post = await rawRequest(hp, 'POST', '/health/git', {}, 'x')
  t.equal(post.status, 405)
  t.equal(post.headers.allow, 'GET, HEAD')
  t.match(post.body.toString(), /^POST is not allowed here/)
  const garbage = await new Promise<string>((resolve, reject) => {
    const s = net.connect(hp, '127.0.0.1', () => s.write('\x16\x03\x01 not http at all\r\n\r\n'))
    let text = ''
    s.on('data', (c: Buffer) => { text += c.toString('latin1') })
    s.on('close', () => resolve(text))
    s.on('error', reject)
  })
  t.match(garbage, /^HTTP\/1\.1 400 Bad Request/, 'a TLS hello or garbage: 400 and closed')
  t.equal((await rawRequest(hp, 'GET', '/health/git')).status, 200, 'still answering')

  // a check that fails shows on the health port, and recovers there
  await rename(w.reposDir, `${w.reposDir}.away`)
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 503, 10_000, 'the health port to report the repos dir')
  t.ok(json((await rawRequest(hp, 'GET', '/health/git')).body).failing.includes('repos_dir'))
  await rename(`${w.reposDir}.away`, w.reposDir)
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 200, 10_000, 'the health port to recover')

  // a drain shows there at once: the change is posted, not waited for
  w.app.health.draining = true
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 503, 1_000, 'draining on the health port')
  t.same(json((await rawRequest(hp, 'GET', '/health/git')).body).failing, ['draining'])
  w.app.health.draining = false
})

t.test('health port: answers while the worker\'s event loop is blocked, and says its checks went stale', async (t) => {
  const w = await startWorker(t, { 'health-port': '0', 'health-interval-ms': '100' })
  const hp = w.app.probes!.healthPort!
  t.equal((await rawRequest(hp, 'GET', '/health/git')).status, 200)
  // A prober in a process of its own asks 700 ms from now; this event loop is blocked for 1.5 s
  // from now, so only the thread can answer, and the checks have not run for over 3 intervals.
  const prober = spawn(process.execPath, ['-e', `
    setTimeout(() => require('node:http').get('http://127.0.0.1:${hp}/health/git', (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => console.log(JSON.stringify({ at: Date.now(), status: res.statusCode, body })))
    }), 700)`], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  prober.stdout.on('data', (c: Buffer) => { out += c })
  const closed = new Promise((r) => prober.once('close', r))
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500) // the worker's loop, blocked
  const unblocked = Date.now()
  await closed
  const answer = JSON.parse(out) as { at: number; status: number; body: string }
  t.ok(answer.at < unblocked, `answered while the worker's loop was blocked (${unblocked - answer.at} ms before it was free)`)
  t.equal(answer.status, 503, 'checks that stopped running count as failed')
  t.match(JSON.parse(answer.body).checks.git_canary.message, /^stale: last run/)
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 200, 5_000, 'green again once the loop runs')
})

t.test('health port in use: the worker does not start, and says which', async (t) => {
  const blocker = net.createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.teardown(() => blocker.close())
  const taken = (blocker.address() as net.AddressInfo).port
  await t.rejects(startWorker(t, { 'health-port': String(taken) }), /cannot listen for probes on 127\.0\.0\.1 \(agentPort -1, healthPort \d+\): listen EADDRINUSE/)
})
