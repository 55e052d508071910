import t from 'tap'
import { Worker } from 'node:worker_threads'
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
  // results go stale after max(3 x 100, 100 + 300) ms
  const w = await startWorker(t, { 'health-port': '0', 'health-interval-ms': '100', 'health-timeout-ms': '300' })
  const hp = w.app.probes!.healthPort!
  // green first (on a loaded machine a 300 ms check may time out now and then: wait, not assume)
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 200, 10_000, 'green before the block')
  // A prober on a thread of its own polls the health port until it answers 503 (at most 10 s)
  // and wakes this thread, whose event loop is blocked meanwhile: only the probe thread can
  // answer, and the checks stop running, so their results must go stale.
  const flag = new Int32Array(new SharedArrayBuffer(4))
  const prober = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads')
    const http = require('node:http')
    const until = Date.now() + 10000
    const poll = () => http.get('http://127.0.0.1:' + workerData.port + '/health/git', (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => {
        if (res.statusCode === 503 || Date.now() > until) {
          parentPort.postMessage({ status: res.statusCode, body })
          Atomics.store(workerData.flag, 0, 1)
          Atomics.notify(workerData.flag, 0)
        } else setTimeout(poll, 50)
      })
    })
    poll()`, { eval: true, workerData: { port: hp, flag } })
  const message = new Promise<{ status: number; body: string }>((resolve) => prober.once('message', resolve))
  t.teardown(() => prober.terminate())
  const woken = Atomics.wait(flag, 0, 0, 15_000) // the worker's event loop, blocked
  t.equal(woken, 'ok', 'the health port answered while the worker\'s event loop was blocked')
  const answer = await message
  t.equal(answer.status, 503, 'checks that stopped running count as failed')
  const report = JSON.parse(answer.body) as { failing: string[]; checks: Record<string, { message: string }> }
  t.ok(report.failing.length > 0)
  for (const name of report.failing) t.match(report.checks[name]!.message, /^stale: last run \d+\.\d s ago$/, `${name} failed for being stale`)
  await waitFor(async () => (await rawRequest(hp, 'GET', '/health/git')).status === 200, 5_000, 'green again once the loop runs')
})

t.test('health port in use: the worker does not start, and says which', async (t) => {
  const blocker = net.createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.teardown(() => blocker.close())
  const taken = (blocker.address() as net.AddressInfo).port
  await t.rejects(startWorker(t, { 'health-port': String(taken) }), /cannot listen for probes on 127\.0\.0\.1 \(agentPort -1, healthPort \d+\): listen EADDRINUSE/)
})

t.test('a probe thread that died: its port closes, the worker port still answers, and the worker still closes', async (t) => {
  const w = await startWorker(t, { 'health-port': '0' })
  const hp = w.app.probes!.healthPort!
  await (w.app.probes as unknown as { worker: Worker }).worker.terminate()
  await t.rejects(rawRequest(hp, 'GET', '/health/git'), { code: 'ECONNREFUSED' }, 'the balancer sees the worker down')
  t.equal((await rawRequest(w.port, 'GET', '/health/git')).status, 200, 'the worker port answers')
  const closed = await Promise.race([w.app.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('hung'), 5_000))])
  t.equal(closed, 'closed')
})
