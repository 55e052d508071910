import t from 'tap'
import http from 'node:http'
import path from 'node:path'
import { addBigRepo, gitClient, processesMatching, rawRequest, run, startWorker, waitFor, type Worker } from '../helpers/worker.js'
import { parseReport, relayHead } from '../../src/process/relay.js'
import type { FastifyReply } from 'fastify'

const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, '0')}${s}`
const DEMO_MAIN = '5ac674cbf899a6fbcdfc314785e2e58c31ca95a2'
const FETCH = { 'content-type': 'application/x-git-upload-pack-request' }
const fetchBody = (oid: string) => `${pkt(`want ${oid} side-band-64k ofs-delta\n`)}0000${pkt('done\n')}`
const uploadPackLines = (w: Worker) => w.logs().filter((l) => l.msg === 'request' && l.route === 'git_upload_pack')

t.test('a fetch\'s answer goes out through the pack relay: whole, counted, on a connection that closes after it', async (t) => {
  const w = await startWorker(t)
  const res = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', FETCH, fetchBody(DEMO_MAIN))
  t.equal(res.status, 200)
  t.equal(res.headers.connection, 'close', 'the answer ends with the connection')
  t.equal(res.headers['transfer-encoding'], undefined, 'no chunked framing: git\'s bytes as they are')
  t.equal(res.headers['content-type'], 'application/x-git-upload-pack-result')
  t.match(String(res.headers['cache-control']), /no-cache/, 'the reply\'s own headers went out with it')
  t.ok(res.body.includes('PACK'), 'a pack')
  t.equal(res.body.subarray(-4).toString(), '0000', 'ending with git\'s flush')
  await waitFor(() => uploadPackLines(w).length === 1, 5000, 'the access line')
  const line = uploadPackLines(w)[0]!
  t.equal(line.handed_over, true, 'logged as answered by the relay')
  t.equal(line.bytes_out, res.body.length, 'the byte count is what the client received')
  t.equal(line.exit_code, 0)
  t.equal(line.aborted, undefined)

  // without side-band (v0): a NAK packet, then the pack raw, not pkt-lines: relayed as it comes
  const raw = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', FETCH, `${pkt(`want ${DEMO_MAIN}\n`)}0000${pkt('done\n')}`)
  t.equal(raw.body.subarray(0, 12).toString('latin1'), '0008NAK\nPACK', 'NAK, then the raw pack')
  // lines come in the order the relays reported, which need not be the requests' order
  await waitFor(() => uploadPackLines(w).length === 2, 5000, 'the access line')
  t.ok(uploadPackLines(w).some((l) => l.bytes_out === raw.body.length && l.handed_over === true), 'counted whole')
  const git = gitClient(w.dir)
  await git(['init', '-q', '--bare', 'raw.git'])
  const indexed = await run('git', ['index-pack', '--stdin'], { cwd: path.join(w.dir, 'raw.git'), input: raw.body.subarray(8) })
  t.equal(indexed.code, 0, `the raw pack is whole: ${indexed.stderr}`)

  // real clients, both protocols: v2's ls-refs stays in the worker (a keep-alive answer), its fetch is relayed
  for (const v of ['0', '2']) {
    const r = await git(['-c', `protocol.version=${v}`, 'clone', '-q', `${w.url}/demo.git`, `c${v}`])
    t.equal(r.code, 0, r.stderr)
    t.equal((await git(['rev-parse', 'HEAD'], path.join(w.dir, `c${v}`))).stdout.trim(), DEMO_MAIN, `protocol v${v}: the clone has main`)
    t.equal((await git(['fsck'], path.join(w.dir, `c${v}`))).code, 0)
  }
  await waitFor(() => uploadPackLines(w).length === 5, 5000, 'the access lines')
  // a relayed answer's line comes once the worker hears of git's exit, which can be after the
  // client is done: the v2 clone's lines by their protocol, not by their place
  const v2 = uploadPackLines(w).filter((l) => l.protocol === 'v2')
  t.equal(v2[0]!.handed_over, undefined, 'ls-refs answered by the worker')
  t.equal(v2[1]!.handed_over, true, 'the v2 fetch relayed')
})

t.test('the connection closing at the end is no abort: git is never killed for it, whoever closes first', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  const rounds = 12
  for (let i = 0; i < rounds; i++) {
    // the relay ends the connection itself; git's client waits for that
    const r = await git(['clone', '-q', `${w.url}/demo.git`, `c${i}`])
    t.equal(r.code, 0, r.stderr)
    // a client that hangs up as soon as it has the final flush, before the relay and git are done
    const body = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = []
      const req = http.request({ host: '127.0.0.1', port: w.port, method: 'POST', path: '/demo.git/git-upload-pack', headers: FETCH })
      req.on('response', (res) => res.on('data', (c: Buffer) => {
        chunks.push(c)
        const all = Buffer.concat(chunks)
        if (all.includes('PACK') && all.subarray(-4).toString() === '0000') {
          req.destroy()
          resolve(all)
        }
      }))
      req.on('error', reject)
      req.end(fetchBody(DEMO_MAIN))
    })
    t.ok(body.length > 0)
  }
  await waitFor(() => uploadPackLines(w).length === 3 * rounds, 10_000, 'every access line')
  const lines = uploadPackLines(w).filter((l) => l.handed_over === true)
  t.equal(lines.length, 2 * rounds, 'every fetch relayed')
  t.same(lines.filter((l) => l.exit_code !== 0 || l.aborted !== undefined).map((l) => [l.exit_code, l.aborted]), [], 'each git exited 0, none logged as aborted')
  const metrics = (await rawRequest(w.port, 'GET', '/metrics')).body.toString()
  t.notMatch(metrics, /vcs_git_exits_total\{code="(?!0")/, 'no git exit but 0 in the metrics')
})

t.test('packRelay off: the answer crosses the worker, chunked', async (t) => {
  const w = await startWorker(t, { 'pack-relay': false })
  const res = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', FETCH, fetchBody(DEMO_MAIN))
  t.equal(res.status, 200)
  t.equal(res.headers['transfer-encoding'], 'chunked')
  t.equal(res.body.subarray(-4).toString(), '0000')
  await waitFor(() => uploadPackLines(w).length === 1, 5000, 'the access line')
  t.equal(uploadPackLines(w)[0]!.handed_over, undefined)
  t.equal(uploadPackLines(w)[0]!.bytes_out, res.body.length)
})

t.test('without the spawn helper, the relay gets the connection from the worker directly', async (t) => {
  const w = await startWorker(t, { 'spawn-helper': false })
  const r = await gitClient(w.dir)(['clone', '-q', `${w.url}/demo.git`, 'c'])
  t.equal(r.code, 0, r.stderr)
  await waitFor(() => uploadPackLines(w).some((l) => l.handed_over === true), 5000, 'a relayed fetch')
})

t.test('a client that stops reading: the relay gives up after idleTimeoutMs, git and the relay are gone', async (t) => {
  const w = await startWorker(t, { 'idle-timeout-ms': '1000' })
  const main = await addBigRepo(w.dir, w.reposDir)
  await w.store.setRepo('big.git', 'git', true)
  let response: http.IncomingMessage | undefined
  const req = http.request({ host: '127.0.0.1', port: w.port, method: 'POST', path: '/big.git/git-upload-pack', agent: false, headers: FETCH }, (res) => {
    response = res
    res.once('data', () => res.pause()) // the first bytes, then never again
  })
  req.on('error', () => {})
  req.end(fetchBody(main))
  await waitFor(() => response !== undefined && response.isPaused(), 5000, 'the first bytes')
  t.ok((await processesMatching(path.join(w.reposDir, 'big.git'))).length > 0, 'git runs, blocked on the client')
  await waitFor(async () => (await processesMatching(w.reposDir)).length === 0, 8000, 'git and the relay to be gone')
  // The client, reading again, finds the connection closed. The body's end is the
  // connection's, so HTTP cannot say it was cut: git's framing does (no final flush).
  let tail = Buffer.alloc(0)
  let received = 0
  const cut = new Promise<void>((resolve) => { response!.once('close', resolve); response!.once('error', () => resolve()) })
  response!.on('data', (c: Buffer) => { received += c.length; tail = Buffer.concat([tail, c]).subarray(-4) })
  response!.resume()
  await cut
  t.ok(received < 40 * 1024 * 1024, `the answer stopped short (${received} bytes after the first read)`)
  t.not(tail.toString('latin1'), '0000', 'without git\'s final flush: a client knows it is cut')
  t.ok(w.logs().some((l) => String(l.msg).includes('no progress for 1000 ms')), 'the log says why')
  await waitFor(() => uploadPackLines(w).length === 1, 5000, 'the access line')
  t.equal(uploadPackLines(w)[0]!.aborted, true, 'logged as not gone out whole')
  t.equal(uploadPackLines(w)[0]!.status, 200, 'the status the client got')
  t.notOk(w.logs().some((l) => l.level === 50), 'no error logged: the client, not git, stopped')
})

t.test('the relay\'s report and head: only what they should be', async (t) => {
  t.same(parseReport('v=1 sent=12 head=1 boundary=1 sideband=1 idle=0 gone=0 exec=0 closed=1 slow=0\n'), { sent: 12, head: true, boundary: true, sideband: true, idle: false, gone: false, execErrno: 0, closed: true, slow: false })
  t.same(parseReport('slow=1 closed=0 exec=0 gone=0 idle=1 sideband=0 boundary=0 head=1 sent=7 v=1\n'), { sent: 7, head: true, boundary: false, sideband: false, idle: true, gone: false, execErrno: 0, closed: false, slow: true }, 'pairs in any order')
  t.equal(parseReport('v=2 sent=12 head=1 boundary=1 sideband=1 idle=0 gone=0 exec=0 closed=1 slow=0\n'), undefined, 'a report of another version')
  t.equal(parseReport('sent=12 head=1 boundary=1 sideband=1 idle=0 gone=0 exec=0 closed=1 slow=0\n'), undefined, 'a report without its version')
  t.equal(parseReport('v=1 sent=1 sent=2 head=1 boundary=1 sideband=1 idle=0 gone=0 exec=0 closed=1 slow=0\n'), undefined, 'a key twice')
  t.equal(parseReport(''), undefined, 'no report (the relay was killed)')
  t.equal(parseReport('sent=12 head=1\n'), undefined, 'a partial line')
  t.equal(parseReport('sent=12 head=1 boundary=1 sideband=1 idle=0 gone=0 exec=0 closed=0\nextra'), undefined, 'anything after it')
  const reply = (headers: Record<string, unknown>, statusCode = 200) => ({ statusCode, getHeaders: () => headers }) as unknown as FastifyReply
  const head = relayHead(reply({ 'content-type': 'application/x-git-upload-pack-result', 'content-length': '5', connection: 'keep-alive' }))!
  t.match(head, /^HTTP\/1\.1 200 OK\r\nDate: [^\r\n]+\r\ncontent-type: application\/x-git-upload-pack-result\r\nConnection: close\r\n\r\n$/, 'its own framing headers replaced')
  t.match(relayHead(reply({ 'content-length': '5', 'content-range': 'bytes 0-4/9', connection: 'keep-alive' }, 206), { length: true }),
    /^HTTP\/1\.1 206 Partial Content\r\nDate: [^\r\n]+\r\ncontent-length: 5\r\ncontent-range: bytes 0-4\/9\r\nConnection: close\r\n\r\n$/, 'a file\'s: its status and length kept')
  t.equal(relayHead(reply({ 'x-a': 'b\r\nSet-Cookie: x' })), undefined, 'a line break in a value: not relayed')
  t.equal(relayHead(reply({ 'x-a': 'b\0' })), undefined, 'a NUL: not relayed')
})
