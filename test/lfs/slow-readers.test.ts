import t from 'tap'
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import { metric, rawRequest, startWorker, waitFor, type Worker } from '../helpers/worker.js'
import { storeObject } from '../helpers/lfs.js'

/**
 * Slow readers of file downloads must not deny a repository to others. Each attacker's
 * connection reads a little now and then (never idle long enough for idleTimeoutMs), from
 * addresses a trusted proxy names in X-Forwarded-For.
 */

interface Slow {
  status?: number
  /** the connection ended (by the worker) */
  ended: boolean
  stop(): void
}

/** A download from `address` that takes one chunk every `everyMs` (or none with `everyMs` 0) after its head. */
function slowDownload(w: Worker, url: string, address: string, everyMs: number): Slow {
  const s: Slow = { ended: false, stop: () => {} }
  let timer: NodeJS.Timeout | undefined
  const req = http.request({ host: '127.0.0.1', port: w.port, method: 'GET', path: url, agent: false, headers: { 'x-forwarded-for': address } }, (res) => {
    s.status = res.statusCode
    res.pause()
    if (everyMs > 0) {
      timer = setInterval(() => {
        res.once('data', () => res.pause())
        res.resume()
      }, everyMs)
    }
    const end = () => {
      clearInterval(timer)
      s.ended = true
    }
    res.once('close', end)
    res.once('error', end)
    if (res.statusCode !== 200) res.resume()
  })
  req.on('error', () => { s.ended = true })
  req.on('close', () => { s.ended = true })
  req.end()
  s.stop = () => {
    clearInterval(timer)
    req.destroy()
  }
  return s
}

const transfers = async (w: Worker) => metric(await (await fetch(`${w.url}/metrics`)).text(), 'vcs_transfers_in_flight')

for (const relay of [true, false]) {
  t.test(`${relay ? 'relayed' : 'sent by the worker'}: eight slow downloads from one address leave the repo to others; 200 from eight addresses too; slow readers are let go`, async (t) => {
    // a rate a loopback download always beats, and the attackers never reach; a short queue
    // wait, so that a download stuck behind heavy slots would show as a 503 at once
    const w = await startWorker(t, {
      'trusted-proxies': '127.0.0.1', 'transfer-min-rate': String(1024 * 1024), 'transfer-grace-ms': '3000',
      'queue-timeout-ms': '2000', 'pack-relay': relay,
    })
    const data = randomBytes(48 * 1024 * 1024) // more than the socket buffers hold (loopback's receive buffer grows to 32 MiB)
    const url = await storeObject(w, data)
    const slow: Slow[] = []
    t.teardown(() => { for (const s of slow) s.stop() })

    for (let i = 0; i < 8; i++) slow.push(slowDownload(w, url, '203.0.113.1', 500))
    await waitFor(() => slow.every((s) => s.status !== undefined), 10_000, 'eight downloads under way')
    t.same(slow.map((s) => s.status), Array(8).fill(200), 'all eight started')
    t.equal(await transfers(w), 8, 'eight transfers in flight')
    const ninth = await rawRequest(w.port, 'GET', url, { 'x-forwarded-for': '203.0.113.1' })
    t.equal(ninth.status, 503, 'a ninth from the same address: refused at once (transferClientLimit)')
    t.match(ninth.body.toString(), /too many downloads/)
    const other = await rawRequest(w.port, 'GET', url, { 'x-forwarded-for': '198.51.100.7' })
    t.equal(other.status, 200, 'a download from another address is served while they hold theirs')
    t.ok(other.body.equals(data), 'whole')
    const clone = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', { 'x-forwarded-for': '198.51.100.7' })
    t.equal(clone.status, 200, 'and the repo is served')

    await waitFor(() => slow.every((s) => s.ended), 20_000, 'the slow readers to be let go')
    await waitFor(async () => (await transfers(w)) === 0, 5000, 'their slots to come free')
    t.ok(w.logs().some((l) => l.msg === 'file download: slower than transferMinRate, ended'), 'the log says why')

    // 200 connections from 8 addresses that read nothing after the head
    slow.length = 0
    for (let i = 0; i < 200; i++) slow.push(slowDownload(w, url, `203.0.113.${10 + (i % 8)}`, 0))
    await waitFor(() => slow.every((s) => s.status !== undefined || s.ended), 20_000, 'every connection answered')
    const started = slow.filter((s) => s.status === 200).length
    t.equal(started, 64, 'eight per address were let in')
    t.equal(slow.filter((s) => s.status === 503).length, 136, 'the rest refused at once')
    const again = await rawRequest(w.port, 'GET', url, { 'x-forwarded-for': '198.51.100.8' })
    t.equal(again.status, 200, 'a download from another address is still served')
    t.ok(again.body.equals(data))
    // a client that reads nothing does not see the reset until it reads: the worker's side is what counts
    await waitFor(async () => (await transfers(w)) === 0, 20_000, 'the 64 non-readers to be let go')
    const odd = w.logs().filter((l) => l.msg === 'request' && l.status === 200 && l.route === 'lfs_download' && Number(l.duration_ms) < 3000).map((l) => l.req_id); console.error('DBG', JSON.stringify(w.logs().filter((l) => odd.includes(l.req_id))))
    t.equal(w.logs().filter((l) => l.msg === 'file download: slower than transferMinRate, ended').length, 8 + 64, 'each one ended for its pace')
  })
}
