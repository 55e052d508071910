import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import { startWorker, run, rawRequest, fixtureDir, waitFor, CLI } from '../helpers/worker.js'
import { lfsUser, routeRequests } from '../helpers/lfs.js'
import { FsLfsStore } from '../../src/lfs/store.js'
import { Readable } from 'node:stream'

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

const lfsRequests = routeRequests

t.test('git lfs: push three objects (one 30 MB), clone them back byte for byte, nothing sent twice, a reader cannot upload', async (t) => {
  const w = await startWorker(t)
  await w.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  await w.addUser('rita', 'rita-password', { 'demo.git': 'read' })
  const lena = await lfsUser(w, 'lena')
  const work = path.join(w.dir, 'work')
  let r = await lena(['clone', '-q', `${w.urlAs('lena', 'lena-password')}/demo.git`, work])
  t.equal(r.code, 0, r.stderr)
  t.equal((await lena(['lfs', 'track', '*.bin'], work)).code, 0)
  const files: Record<string, Buffer> = { 'big.bin': randomBytes(30 * 1024 * 1024), 'small.bin': randomBytes(1000), 'mid.bin': randomBytes(100_000) }
  for (const [name, data] of Object.entries(files)) await writeFile(path.join(work, name), data)
  await lena(['add', '.gitattributes', ...Object.keys(files)], work)
  t.equal((await lena(['commit', '-q', '-m', 'assets'], work)).code, 0)
  r = await lena(['push', 'origin', 'HEAD:refs/heads/assets'], work)
  t.equal(r.code, 0, r.stderr)
  for (const [name, data] of Object.entries(files)) {
    const stored = path.join(w.reposDir, 'demo.git', 'lfs', 'objects', sha(data).slice(0, 2), sha(data).slice(2, 4), sha(data))
    t.ok((await readFile(stored)).equals(data), `${name} is stored in the repo, whole`)
  }
  const uploads = lfsRequests(w, 0, 'lfs_upload')
  t.equal(uploads.length, 3, 'three uploads')
  t.same(uploads.map((l) => [l.method, l.status, l.oid]).sort(), Object.values(files).map((d) => ['PUT', 200, sha(d)]).sort(), 'each logged with its oid')

  // a second push of the same objects sends none of them
  const mark = w.logs().length
  r = await lena(['lfs', 'push', '--all', 'origin'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal(lfsRequests(w, mark, 'lfs_upload').length + lfsRequests(w, mark, 'lfs_download').length, 0, 'no transfer: the server has them')
  t.ok(lfsRequests(w, mark, 'lfs_batch').length >= 1, 'only a batch request')

  // an anonymous clone of the public repo gets the files, not pointers
  const anon = await lfsUser(w, 'anon')
  r = await anon(['clone', '-q', '-b', 'assets', `${w.url}/demo.git`, 'anon-clone'])
  t.equal(r.code, 0, r.stderr)
  for (const [name, data] of Object.entries(files)) t.ok((await readFile(path.join(w.dir, 'anon-clone', name))).equals(data), `${name} smudged byte for byte`)
  const downloads = lfsRequests(w, mark, 'lfs_download')
  t.equal(downloads.length, 3, 'three downloads logged')
  t.ok(downloads.some((l) => l.oid === sha(files['big.bin']!) && l.bytes_out === 30 * 1024 * 1024), 'with the oid and the bytes sent')

  // a reader's upload is refused, and nothing is stored
  const rita = await lfsUser(w, 'rita')
  const ritaWork = path.join(w.dir, 'rita-work')
  t.equal((await rita(['clone', '-q', '-b', 'assets', `${w.urlAs('rita', 'rita-password')}/demo.git`, ritaWork])).code, 0)
  const hers = randomBytes(5000)
  await writeFile(path.join(ritaWork, 'hers.bin'), hers)
  await rita(['add', 'hers.bin'], ritaWork)
  await rita(['commit', '-q', '-m', 'mine'], ritaWork)
  r = await rita(['push', 'origin', 'HEAD:refs/heads/rita'], ritaWork)
  t.not(r.code, 0, 'the push fails')
  t.match(r.stderr, /rita may read demo\.git but not push to it/, 'with the reason')
  t.equal((await readFile(path.join(w.reposDir, 'demo.git', 'lfs', 'objects', sha(hers).slice(0, 2), sha(hers).slice(2, 4), sha(hers))).catch(() => undefined)), undefined, 'her object is not stored')
})

t.test('the LFS API refuses bad input with its JSON error, stores nothing, and resumes a download with Range', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  await w.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  const auth = `Basic ${Buffer.from('lena:lena-password').toString('base64')}`
  const lfs = 'application/vnd.git-lfs+json'
  const batch = (body: unknown, headers: Record<string, string> = {}) => fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers: { accept: lfs, 'content-type': lfs, authorization: auth, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
  const error = async (res: Response) => [res.status, res.headers.get('content-type'), ((await res.json()) as { message: string }).message]

  const anon = await fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers: { accept: lfs }, body: '{}' })
  t.equal(anon.status, 401, 'a private repo asks for credentials')
  t.match(anon.headers.get('lfs-authenticate'), /^Basic /, 'with LFS-Authenticate')
  t.match(await error(anon), [401, lfs, /authentication required/])
  t.match(await error(await batch('{"operation": "download", "objects": [', {})), [422, lfs, /not JSON/])
  t.match(await error(await batch({ operation: 'download', objects: [] }, { accept: 'application/json' })), [406, lfs, /Accept must include/])
  t.match(await error(await batch({ operation: 'delete', objects: [] })), [422, lfs, /operation must be/])
  t.match(await error(await batch({ operation: 'download', objects: [], hash_algo: 'sha512' })), [409, lfs, /only the sha256/])
  t.match(await error(await batch({ operation: 'download', objects: Array.from({ length: 1001 }, () => ({ oid: 'a'.repeat(64), size: 1 })) })), [413, lfs, /at most 1000 objects/])
  t.match(await error(await batch(' '.repeat(2 * 1024 * 1024))), [413, lfs, /larger than 1048576 bytes/])

  const data = randomBytes(200_000)
  const oid = sha(data)
  const res = await batch({ operation: 'upload', objects: [{ oid, size: data.length }, { oid: '../../etc/passwd', size: 1 }, { oid: 'b'.repeat(64), size: -1 }, { oid: 'c'.repeat(64), size: 6 * 1024 ** 3 }] })
  t.equal(res.status, 200)
  const objects = ((await res.json()) as { objects: { oid: string; error?: { code: number; message: string }; actions?: Record<string, { href: string; header: Record<string, string> }> }[] }).objects
  t.match(objects[1]!.error, { code: 422, message: /64 lowercase hex/ }, 'a path as an oid: that object refused')
  t.match(objects[2]!.error, { code: 422, message: /whole number/ }, 'a negative size')
  t.match(objects[3]!.error, { code: 422, message: /larger than this server accepts/ }, 'past lfsMaxObjectBytes')
  const upload = objects[0]!.actions!.upload!
  t.equal(upload.href, `${w.url}/demo.git/info/lfs/objects/${oid}`, 'the href is the URL the client came in on')
  const put = (body: Buffer) => fetch(upload.href, { method: 'PUT', headers: upload.header, body: new Uint8Array(body) })
  t.match(await error(await put(randomBytes(200_000))), [422, lfs, /does not hash to its oid/])
  // a PUT's size is its Content-Length: one byte short is another object, whose bytes are not this oid
  t.match(await error(await put(data.subarray(1))), [422, lfs, /does not hash to its oid/], 'a body of another size')
  const stored = path.join(w.reposDir, 'demo.git', 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid)
  t.equal(await readFile(stored).catch(() => undefined), undefined, 'nothing stored for either')
  t.equal((await put(data)).status, 200)
  const verify = await fetch(objects[0]!.actions!.verify!.href, { method: 'POST', headers: { accept: lfs, 'content-type': lfs, authorization: auth }, body: JSON.stringify({ oid, size: data.length }) })
  t.equal(verify.status, 200, 'verify confirms it')

  // a download cut off resumes where it stopped
  const part = await fetch(upload.href, { headers: { authorization: auth, range: 'bytes=150000-' } })
  t.equal(part.status, 206)
  t.ok(Buffer.from(await part.arrayBuffer()).equals(data.subarray(150_000)))
  t.match(await error(await fetch(`${w.url}/demo.git/info/lfs/objects/${'d'.repeat(64)}`, { headers: { authorization: auth } })), [404, lfs, /object not found/])
})

t.test('under the disk floor an upload is refused with 507 and nothing is written; downloads go on', async (t) => {
  const w = await startWorker(t, { 'disk-free-floor-bytes': String(Number.MAX_SAFE_INTEGER) })
  await w.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  const headers = { accept: 'application/vnd.git-lfs+json', 'content-type': 'application/vnd.git-lfs+json', authorization: `Basic ${Buffer.from('lena:lena-password').toString('base64')}` }
  const data = randomBytes(1000)
  const res = await fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers, body: JSON.stringify({ operation: 'upload', objects: [{ oid: sha(data), size: 1000 }] }) })
  t.equal(res.status, 507)
  t.match(((await res.json()) as { message: string }).message, /no room/)
  const put = await fetch(`${w.url}/demo.git/info/lfs/objects/${sha(data)}`, { method: 'PUT', headers: { authorization: headers.authorization }, body: new Uint8Array(data) })
  t.equal(put.status, 507)
  const down = await fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers, body: JSON.stringify({ operation: 'download', objects: [{ oid: sha(data), size: 1000 }] }) })
  t.equal(down.status, 200, 'a download batch is still answered')
  t.same(await readFile(path.join(w.reposDir, 'demo.git', 'lfs', 'objects', sha(data).slice(0, 2), sha(data).slice(2, 4), sha(data))).catch(() => 'absent'), 'absent')
})

t.test('a Host header that cannot name a server gets no hrefs built from it', async (t) => {
  // from a trusted proxy the Host would name the hrefs (a direct client's Host is never read: test/http/routes.test.ts)
  const w = await startWorker(t, { 'trusted-proxies': '127.0.0.1' })
  const body = JSON.stringify({ operation: 'download', objects: [] })
  const res = await rawRequest(w.port, 'POST', '/demo.git/info/lfs/objects/batch', { host: 'evil.example/"x', accept: 'application/vnd.git-lfs+json', 'content-length': String(body.length) }, body)
  t.equal(res.status, 400)
  t.match(JSON.parse(res.body.toString()), { message: /Host header/ })
})

t.test('vcs-worker lfs fsck names the objects whose bytes are not their oid, deletes nothing', async (t) => {
  const { reposDir, dataDir } = await fixtureDir(t)
  const store = new FsLfsStore()
  const repo = path.join(reposDir, 'demo.git')
  const good = randomBytes(5000)
  const rotten = randomBytes(7000)
  for (const data of [good, rotten]) await store.put(repo, sha(data), data.length, Readable.from([data]))
  const cli = (args: string[]) => run(process.execPath, [CLI, 'lfs', ...args, '--repos', reposDir, '--data', dataDir], { env: { PATH: process.env.PATH } })
  let r = await cli(['fsck', 'demo'])
  t.same([r.code, r.stdout], [0, 'demo.git: 2 LFS objects checked, 0 bad\n'])
  await writeFile(store.pathOf(repo, sha(rotten)), randomBytes(7000))
  r = await cli(['fsck', 'demo.git'])
  t.equal(r.code, 1)
  t.equal(r.stdout, `bad ${sha(rotten)} (7000 bytes): its content does not hash to its name\ndemo.git: 2 LFS objects checked, 1 bad (nothing was deleted)\n`)
  t.equal(await store.size(repo, sha(rotten)), 7000, 'still there')
  r = await cli(['fsck', 'empty'])
  t.same([r.code, r.stdout], [0, 'empty.git: 0 LFS objects checked, 0 bad\n'], 'a repo without objects')
  r = await cli(['fsck', 'no-such-repo'])
  t.equal(r.code, 1)
  t.match(r.stderr, /^vcs-worker: .*not found/)
  for (const bad of [['fsck'], ['fsck', 'demo', 'extra']]) {
    r = await cli(bad)
    t.equal(r.code, 2, bad.join(' '))
    t.match(r.stderr, /usage: vcs-worker lfs fsck PATH/)
  }
  r = await cli(['check', 'demo'])
  t.same([r.code, r.stderr], [2, 'vcs-worker: unknown command: lfs check; lfs has fsck\nsee: vcs-worker lfs --help\n'], 'a wrong subcommand: the ones there are')
})

t.test('bad input of every size: 10,000 objects, a 50 MB body, an upload cut off mid-way; nothing stored, nothing left', async (t) => {
  const w = await startWorker(t)
  await w.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  const auth = `Basic ${Buffer.from('lena:lena-password').toString('base64')}`
  const lfs = 'application/vnd.git-lfs+json'
  const batch = (body: BodyInit) => fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers: { accept: lfs, 'content-type': lfs, authorization: auth }, body })
  const many = JSON.stringify({ operation: 'upload', objects: Array.from({ length: 10_000 }, (_, i) => ({ oid: sha(Buffer.from(String(i))), size: 1 })) })
  let res = await batch(many)
  t.equal(res.status, 413, '10,000 objects: 413 (not paged)')
  t.match(((await res.json()) as { message: string }).message, /larger than 1048576 bytes|at most 1000 objects/)
  res = await batch(new Uint8Array(50 * 1024 * 1024).fill(0x20))
  t.equal(res.status, 413, 'a 50 MB body')
  t.match(((await res.json()) as { message: string }).message, /larger than 1048576 bytes/)

  // an upload whose client goes away after 100 KB of 1 MB
  const data = randomBytes(1024 * 1024)
  const oid = sha(data)
  await new Promise<void>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: w.port, method: 'PUT', path: `/demo.git/info/lfs/objects/${oid}`, headers: { authorization: auth, 'content-length': data.length } })
    req.on('error', () => resolve())
    req.on('response', () => resolve())
    req.write(data.subarray(0, 100_000), () => setTimeout(() => { req.destroy(); resolve() }, 100))
  })
  const tmp = path.join(w.reposDir, 'demo.git', 'lfs', 'tmp')
  await waitFor(async () => (await readdir(tmp).catch(() => [])).length === 0, 5000, 'the temp file to go')
  t.equal(await readFile(path.join(w.reposDir, 'demo.git', 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid)).catch(() => 'absent'), 'absent', 'nothing stored')
  // the same upload whole, afterwards: stored
  const put = await fetch(`${w.url}/demo.git/info/lfs/objects/${oid}`, { method: 'PUT', headers: { authorization: auth }, body: new Uint8Array(data) })
  t.equal(put.status, 200)
  t.equal((await fetch(`${w.url}/health/live`)).status, 200, 'the worker is alive after all of it')
})

t.test('throttled logins get 429 as the API\'s JSON; a silent upload is cut at idleTimeoutMs and leaves nothing', async (t) => {
  const w = await startWorker(t, { 'login-failure-limit': '2', 'idle-timeout-ms': '1000' }, { private: true })
  await w.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  const lfs = 'application/vnd.git-lfs+json'
  const tryWith = (password: string) => fetch(`${w.url}/demo.git/info/lfs/objects/batch`, { method: 'POST', headers: { accept: lfs, 'content-type': lfs, authorization: `Basic ${Buffer.from(`lena:${password}`).toString('base64')}` }, body: JSON.stringify({ operation: 'download', objects: [] }) })
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await tryWith('wrong')).status)
  t.same(statuses, [401, 401, 429], 'two failures, then throttled')
  const throttled = await tryWith('lena-password')
  t.equal(throttled.status, 429, 'even the right password, for now')
  t.ok(throttled.headers.get('retry-after'), 'with Retry-After')
  t.equal(throttled.headers.get('content-type')?.split(';')[0], lfs)
  t.match(((await throttled.json()) as { message: string }).message, /too many/i)

  // an upload that sends 10 KB of 1 MB and then nothing
  const w2 = await startWorker(t, { 'idle-timeout-ms': '1000' })
  await w2.addUser('lena', 'lena-password', { 'demo.git': 'write' })
  const data = randomBytes(1024 * 1024)
  const oid = sha(data)
  const started = Date.now()
  const ended = await new Promise<string>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: w2.port, method: 'PUT', path: `/demo.git/info/lfs/objects/${oid}`, headers: { authorization: `Basic ${Buffer.from('lena:lena-password').toString('base64')}`, 'content-length': data.length } })
    req.on('error', (err) => resolve(`error: ${err.message}`))
    req.on('response', (res) => resolve(`status ${res.statusCode}`))
    req.write(data.subarray(0, 10_000)) // and then silence
  })
  t.ok(Date.now() - started >= 900, `cut after the idle time, not before (${Date.now() - started} ms; ${ended})`)
  const tmp = path.join(w2.reposDir, 'demo.git', 'lfs', 'tmp')
  await waitFor(async () => (await readdir(tmp).catch(() => [])).length === 0, 5000, 'the temp file to go')
  t.equal(await readFile(path.join(w2.reposDir, 'demo.git', 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid)).catch(() => 'absent'), 'absent', 'nothing stored')
})
