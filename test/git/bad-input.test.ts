import t from 'tap'
import path from 'node:path'
import net from 'node:net'
import { gzipSync } from 'node:zlib'
import { mkdir, readdir, symlink } from 'node:fs/promises'
import { startWorker, gitClient, rawRequest, waitFor } from '../helpers/worker.js'

const UP = { 'content-type': 'application/x-git-upload-pack-request' }
const MAIN = '5ac674cbf899a6fbcdfc314785e2e58c31ca95a2'
const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, '0')}${s}`

/** Lists a directory tree's entries, to prove requests created nothing. */
async function tree(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort()
}

t.test('paths outside the grammar get 400 before the filesystem is touched', async (t) => {
  const w = await startWorker(t)
  const before = await tree(w.reposDir)
  const cases = [
    '/../etc/passwd/info/refs',
    '/demo.git/../demo.git/info/refs',
    '/%2e%2e/demo.git/info/refs',
    '/%2E%2E%2Fetc/info/refs',
    '/team%2fproject.git/info/refs',
    '/team%5cproject.git/info/refs',
    '/team\\project.git/info/refs',
    '//etc/passwd/info/refs',
    '/demo.git%00/info/refs',
    `/${'a/'.repeat(20)}x.git/info/refs`,
    `/${'a'.repeat(600)}.git/info/refs`,
    '/.ssh/info/refs',
    '/.git/info/refs',
    '/team/.hidden.git/info/refs',
    '/demo%20.git/info/refs',
  ]
  for (const p of cases) {
    const res = await rawRequest(w.port, 'GET', `${p}?service=git-upload-pack`)
    t.equal(res.status, 400, `${p} -> 400`)
    t.match(res.body.toString(), /^[^\n]+\n$/, `${p}: one line`)
  }
  t.same(await tree(w.reposDir), before, 'nothing created or changed')
})

t.test('symlinks out of the repos dir, non-repos and working trees are 404', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  const outside = path.join(w.dir, 'outside')
  await mkdir(outside)
  t.equal((await git(['init', '-q', '--bare', path.join(outside, 'secret.git')])).code, 0)
  await symlink(path.join(outside, 'secret.git'), path.join(w.reposDir, 'evil.git'))
  await symlink(outside, path.join(w.reposDir, 'linkdir'))
  await symlink(path.join(w.reposDir, 'demo.git'), path.join(w.reposDir, 'alias.git'))
  await w.store.setRepo('alias.git', 'git', true)
  await w.store.setRepo('evil.git', 'git', true)
  await w.store.setRepo('linkdir/secret.git', 'git', true)
  await mkdir(path.join(w.reposDir, 'plain.git'))
  t.equal((await git(['init', '-q', path.join(w.reposDir, 'wt')])).code, 0)
  await w.addUser('una', 'una-password')
  const una = { authorization: `Basic ${Buffer.from('una:una-password').toString('base64')}` }
  for (const p of ['/evil.git', '/linkdir/secret.git', '/plain.git', '/wt', '/wt.git', '/nope']) {
    const res = await rawRequest(w.port, 'GET', `${p}/info/refs?service=git-upload-pack`, una)
    t.equal(res.status, 404, `${p} -> 404`)
    t.equal(res.body.toString(), 'repository not found\n')
    const anon = await rawRequest(w.port, 'GET', `${p}/info/refs?service=git-upload-pack`)
    t.same([anon.status, anon.body.toString()], [401, 'authentication required\n'], `${p} -> 401 without credentials, as a private repo answers`)
  }
  const inside = await rawRequest(w.port, 'GET', '/alias.git/info/refs?service=git-upload-pack')
  t.equal(inside.status, 200, 'a symlink that stays inside the repos dir works')
  const wtGit = await rawRequest(w.port, 'GET', '/wt/.git/info/refs?service=git-upload-pack')
  t.equal(wtGit.status, 400, 'a .git dir in a working tree is a hidden segment')
})

t.test('services, methods, content types, dumb HTTP', async (t) => {
  const w = await startWorker(t)
  const expect = async (method: string, p: string, status: number, msg: RegExp, headers: Record<string, string> = {}, body?: string) => {
    const res = await rawRequest(w.port, method, p, headers, body)
    t.equal(res.status, status, `${method} ${p} -> ${status}`)
    t.match(res.body.toString(), msg)
    return res
  }
  await expect('GET', '/demo.git/info/refs?service=git-upload-archive', 400, /^unknown service/)
  await expect('GET', '/demo.git/info/refs?service=', 400, /^unknown service/)
  await expect('GET', '/demo.git/info/refs?service=a&service=b', 400, /^unknown service/)
  await expect('GET', '/demo.git/info/refs', 400, /^dumb HTTP is not supported/)
  await expect('GET', '/demo.git/HEAD', 400, /^dumb HTTP is not supported/)
  await expect('GET', '/demo.git/objects/info/packs', 400, /^dumb HTTP is not supported/)
  const m = await expect('POST', '/demo.git/info/refs?service=git-upload-pack', 405, /^method not allowed; use GET/, UP, '0000')
  t.equal(m.headers.allow, 'GET')
  await expect('GET', '/demo.git/git-upload-pack', 405, /use POST/)
  await expect('PUT', '/demo.git/git-receive-pack', 405, /use POST/)
  await expect('POST', '/demo.git/git-upload-pack', 415, /^expected Content-Type application\/x-git-upload-pack-request/, { 'content-type': 'application/json' }, '{}')
  await expect('POST', '/demo.git/git-upload-pack', 415, /^expected Content-Type/, {}, '0000')
  await expect('POST', '/demo.git/git-upload-pack', 415, /^unsupported Content-Encoding: br/, { ...UP, 'content-encoding': 'br' }, '0000')
  await expect('GET', '/metrics-not-here', 404, /^not found/)
})

t.test('bad bodies: truncated and garbage pkt-lines, fake gzip, gzip bomb, over the limit', async (t) => {
  const w = await startWorker(t, { 'max-negotiation-bytes': String(8 * 1024 * 1024) })
  const post = (body: Buffer | string, headers: Record<string, string> = {}) => rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { ...UP, ...headers }, body)
  let res = await post('0032want')
  t.equal(res.status, 400)
  t.equal(res.body.toString(), 'truncated pkt-line in request body\n')
  res = await post('zzzzgarbage')
  t.equal(res.status, 400)
  t.equal(res.body.toString(), 'bad pkt-line: length is not hexadecimal\n')
  res = await post('0003')
  t.equal(res.status, 400)
  res = await post('')
  t.equal(res.status, 400)
  t.equal(res.body.toString(), 'empty request body\n')
  res = await post('this is not gzip', { 'content-encoding': 'gzip' })
  t.equal(res.status, 400)
  t.equal(res.body.toString(), 'request body is not valid gzip\n')
  const bomb = gzipSync(Buffer.alloc(200 * 1024 * 1024, '0'))
  t.ok(bomb.length < 1024 * 1024, `bomb is ${bomb.length} bytes on the wire`)
  res = await post(bomb, { 'content-encoding': 'gzip' })
  t.equal(res.status, 413, 'gzip bomb stops at the decoded limit')
  t.match(res.body.toString(), /^request body is larger than this server accepts/)
  res = await post(Buffer.alloc(9 * 1024 * 1024, '0'))
  t.equal(res.status, 413, 'declared length over the limit')
  // a real request still works, and after all that the worker serves clones
  const want = `0032want ${MAIN}\n00000009done\n`
  res = await post(want)
  t.equal(res.status, 200)
  t.match(res.body.toString('latin1'), /^0008NAK\n/)
  t.match(res.body.toString('latin1'), 'PACK')
  const gz = await post(gzipSync(want), { 'content-encoding': 'gzip' })
  t.same(gz.body, res.body, 'a gzipped request gets the same pack')
  const probe = await post('0000')
  t.equal(probe.status, 200, "git's 0000 probe POST")
  t.equal(probe.body.length, 0)
  const clone = await gitClient(w.dir)(['clone', '-q', `${w.url}/demo.git`, 'after'])
  t.equal(clone.code, 0, clone.stderr)
})

t.test('a negotiation over 10 MB sent whole before reading does not deadlock', async (t) => {
  const w = await startWorker(t)
  const oids = (await gitClient(w.dir)(['--git-dir', path.join(w.reposDir, 'demo.git'), 'rev-list', '--all'])).stdout.trim().split('\n')
  const haves: string[] = []
  for (let i = 0; haves.length < 220_000; i++) haves.push(`0032have ${oids[i % oids.length]}\n`)
  const body = `${pkt(`want ${MAIN} multi_ack_detailed side-band-64k thin-pack ofs-delta no-progress\n`)}0000${haves.join('')}0009done\n`
  t.ok(body.length > 10 * 1024 * 1024, `${body.length} bytes of negotiation`)
  for (const gzip of [false, true]) {
    const res = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { ...UP, ...(gzip ? { 'content-encoding': 'gzip' } : {}) }, gzip ? gzipSync(body) : body)
    t.equal(res.status, 200, `gzip=${gzip}`)
    const text = res.body.toString('latin1')
    t.match(text, 'ACK', 'git acknowledged the common commits')
    t.match(text, 'PACK', 'and sent a pack')
  }
})

t.test('slowloris and 1,000 idle connections are closed while clones go on', async (t) => {
  const w = await startWorker(t, { 'headers-timeout-ms': '1500', 'keep-alive-timeout-ms': '1000' })
  t.equal(w.app.server.requestTimeout, 0, "Node's 300 s request timeout is off: a long push is not cut")
  const sockets: net.Socket[] = []
  let closed = 0
  let connected = 0
  for (let i = 0; i < 1000; i++) {
    const s = net.connect(w.port, '127.0.0.1')
    s.on('connect', () => { connected++ })
    s.resume() // read, so the server's FIN is seen
    s.on('error', () => {})
    s.on('close', () => { closed++ })
    sockets.push(s)
  }
  t.teardown(() => sockets.forEach((s) => s.destroy()))
  // slowloris: one header byte every 100 ms
  const slow = net.connect(w.port, '127.0.0.1')
  let slowClosed = false
  slow.on('error', () => {})
  slow.on('close', () => { slowClosed = true })
  const head = 'GET /demo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\nX-Padding: ' + 'a'.repeat(200)
  let i = 0
  const drip = setInterval(() => { if (!slow.destroyed && i < head.length) slow.write(head[i++]!) }, 100)
  t.teardown(() => { clearInterval(drip); slow.destroy() })
  const git = gitClient(w.dir)
  const clones = await Promise.all(Array.from({ length: 5 }, (_, n) => git(['clone', '-q', `${w.url}/demo.git`, `idle${n}`])))
  t.same(clones.map((c) => c.code), [0, 0, 0, 0, 0], 'clones work next to 1,000 idle connections')
  await waitFor(() => slowClosed, 10_000, 'the slowloris connection to be closed')
  t.ok(i < head.length, 'closed before it finished its headers')
  await waitFor(() => closed === 1000, 40_000, 'idle connections to be closed').catch(async (err: Error) => {
    const open = await new Promise<number>((r) => w.app.server.getConnections((_e, n) => r(n)))
    throw new Error(`${err.message}: ${connected} connected, ${closed} closed, server holds ${open}`)
  })
  t.equal(closed, 1000)
})

t.test('a slow but steady upload is not cut; a silent connection is', async (t) => {
  const w = await startWorker(t, { 'headers-timeout-ms': '1000', 'idle-timeout-ms': '1500' })
  // a 3 s request body, a piece every 200 ms: longer than both timeouts, never idle
  const res = await new Promise<number>((resolve, reject) => {
    const s = net.connect(w.port, '127.0.0.1')
    let out = ''
    s.on('data', (c) => { out += c })
    s.on('error', reject)
    s.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(out)?.[1] ?? 0)))
    s.write('POST /demo.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n')
    const pieces = [`0032want ${MAIN}\n`, '0000', ...Array(13).fill(`0032have ${MAIN}\n`), '0009done\n']
    let n = 0
    const tick = setInterval(() => {
      const p = pieces[n++]
      if (p === undefined) { clearInterval(tick); s.write('0\r\n\r\n'); return }
      s.write(`${p.length.toString(16)}\r\n${p}\r\n`)
    }, 200)
  })
  t.equal(res, 200, 'a progressing request outlives the header and idle timeouts')
  const silentClosed = await new Promise<boolean>((resolve) => {
    const s = net.connect(w.port, '127.0.0.1')
    s.write('POST /demo.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: 100\r\n\r\n0032')
    s.on('error', () => {})
    const timer = setTimeout(() => resolve(false), 8000)
    s.on('close', () => { clearTimeout(timer); resolve(true) })
  })
  t.ok(silentClosed, 'a request that goes silent is closed after the idle timeout')
})

/** Sends raw bytes on a fresh connection and returns everything the server wrote before it closed. */
function rawExchange(port: number, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.end(bytes))
    let out = ''
    socket.on('data', (c) => { out += c })
    socket.on('error', () => {})
    socket.on('close', () => resolve(out))
  })
}

t.test('refusals by Node\'s parser and Fastify\'s router are one line of text too, never JSON', async (t) => {
  const w = await startWorker(t)
  const cases: [string, string, string][] = [
    ['a garbage request line', 'GARBAGE\r\n\r\n', '400 Bad Request'],
    ['a header name with a space', 'GET /demo.git/info/refs HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n', '400 Bad Request'],
    ['headers over the limit', `GET /demo.git/info/refs HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(1100 * 1024)}\r\n\r\n`, '431 Request Header Fields Too Large'],
    ['bad percent-encoding', 'GET /%zz/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', '400 malformed URL: bad percent-encoding'],
  ]
  for (const [what, bytes, status] of cases) {
    const answer = await rawExchange(w.port, bytes)
    const [head, body] = answer.split('\r\n\r\n') as [string, string]
    t.match(head, new RegExp(`^HTTP/1.1 ${status}\r\n`), `${what}: ${status}`)
    t.match(head.toLowerCase(), 'content-type: text/plain', `${what}: plain text`)
    t.match(body, /^[^\n{]+\n$/, `${what}: one line (${JSON.stringify(body)})`)
  }
  t.equal((await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack')).status, 200, 'the worker serves on')
})

t.test('credentials in an absolute-form target or a query are never logged', async (t) => {
  const w = await startWorker(t)
  await rawExchange(w.port, 'GET http://alice:hunter2-pw@127.0.0.1/demo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack&access_token=tok-secret-1&private_token=tok-secret-2&x=keep-me')
  await waitFor(() => w.logs().filter((l) => l.msg === 'request').length >= 2, 5000, 'both access lines')
  const text = w.logText()
  for (const secret of ['hunter2-pw', 'tok-secret-1', 'tok-secret-2']) t.notOk(text.includes(secret), `no ${secret} in the log`)
  const urls = w.logs().filter((l) => l.msg === 'request').map((l) => l.url)
  t.same(urls, [
    'http://[redacted]@127.0.0.1/demo.git/info/refs?service=git-upload-pack',
    '/demo.git/info/refs?service=git-upload-pack&access_token=[redacted]&private_token=[redacted]&x=keep-me',
  ], 'the rest of each URL is kept')
})
