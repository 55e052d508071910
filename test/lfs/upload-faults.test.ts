import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { readdir, stat } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import { clientEnv, FIXTURE_REPOS, fixtureDir, run, smallFilesystem, spawnWorker, startWorker, TEST_SCRYPT, waitFor } from '../helpers/worker.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { hashPassword } from '../../src/auth/password.js'

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const alice = `Basic ${Buffer.from('alice:alice-pw').toString('base64')}`

t.test('LFS uploads the disk cannot take: 507 with the LFS error body, nothing left behind', async (t) => {
  const w = await startWorker(t, { 'disk-free-floor-bytes': '0' })
  const repo = path.join(w.reposDir, 'small.git')
  await smallFilesystem(t, repo, '3m')
  t.equal((await run('git', ['init', '-q', '--bare', repo], { env: clientEnv(w.dir) })).code, 0)
  await w.store.setRepo('small.git', 'git', false)
  await w.addUser('alice', 'alice-pw', { 'small.git': 'write' })
  // each fits the free space alone (the check before a byte is read lets both in); together they do not
  const objects = [randomBytes(2 * 1024 * 1024), randomBytes(2 * 1024 * 1024)]
  const answers = await Promise.all(objects.map(async (data) => {
    const res = await fetch(`${w.url}/small.git/info/lfs/objects/${sha(data)}`, { method: 'PUT', headers: { authorization: alice, 'content-type': 'application/octet-stream' }, body: data })
    return { status: res.status, type: res.headers.get('content-type'), body: await res.text() }
  }))
  const full = answers.filter((a) => a.status === 507)
  t.ok(full.length >= 1, `the disk filled: ${JSON.stringify(answers.map((a) => a.status))}`)
  for (const a of full) {
    t.match(a.type, /^application\/vnd\.git-lfs\+json/, 'the LFS error body')
    t.same(JSON.parse(a.body), { message: 'the server has no room for this upload; try again later' })
  }
  t.ok(answers.every((a) => a.status === 200 || a.status === 507), 'nothing else')
  t.same(await readdir(path.join(repo, 'lfs', 'tmp')).catch(() => []), [], 'no temp file left')
  for (const [i, a] of answers.entries()) {
    const file = path.join(repo, 'lfs', 'objects', sha(objects[i]!).slice(0, 2), sha(objects[i]!).slice(2, 4), sha(objects[i]!))
    const size = await stat(file).then((s) => s.size, () => -1)
    t.equal(size, a.status === 200 ? objects[i]!.length : -1, a.status === 200 ? 'the one accepted is whole' : 'the one refused is not there')
  }
  t.notOk(w.logs().some((l) => Number(l.status) >= 500 && l.status !== 507), 'no other 5xx')
  t.notOk(w.logs().some((l) => l.msg === 'internal server error' || (l.level === 50 && String(l.msg).includes('unhandled'))), 'no unhandled error')
})

t.test('a worker killed with -9 mid-upload: the temp file is swept once provably stale, after a restart, by later uploads', async (t) => {
  const { reposDir, dataDir } = await fixtureDir(t)
  const store = openSqliteStore(path.join(dataDir, 'auth.sqlite'))
  for (const [name, kind] of FIXTURE_REPOS) await store.setRepo(name, kind, true)
  await store.addUser('alice', await hashPassword('alice-pw', TEST_SCRYPT))
  await store.setGrant('alice', 'demo.git', 'write')
  store.close()
  const args = ['--repos', reposDir, '--data', dataDir, '--quarantine-stale-ms', '1000']
  const first = await spawnWorker(t, args)
  const data = randomBytes(8 * 1024 * 1024)
  const tmp = path.join(reposDir, 'demo.git', 'lfs', 'tmp')
  // 3 MiB of an 8 MiB upload, then the worker is killed
  const req = http.request(`${first.url}/demo.git/info/lfs/objects/${sha(data)}`, { method: 'PUT', headers: { authorization: alice, 'content-length': String(data.length) } })
  req.on('error', () => {})
  req.write(data.subarray(0, 3 * 1024 * 1024))
  await waitFor(async () => {
    const names = await readdir(tmp).catch(() => [] as string[])
    return names.length === 1 && (await stat(path.join(tmp, names[0]!))).size >= 2 * 1024 * 1024
  }, 20_000, 'the upload to be under way')
  first.proc.kill('SIGKILL')
  await new Promise((resolve) => first.proc.once('exit', resolve))
  req.destroy()
  const left = await readdir(tmp)
  t.equal(left.length, 1, 'the killed upload left its temp file')

  const second = await spawnWorker(t, args)
  // later uploads sweep the repo; the file is removed once unchanged for quarantineStaleMs
  const small = randomBytes(1024)
  await waitFor(async () => {
    const res = await fetch(`${second.url}/demo.git/info/lfs/objects/${sha(small)}`, { method: 'PUT', headers: { authorization: alice }, body: small })
    if (res.status !== 200) throw new Error(`upload: ${res.status}`)
    return !(await readdir(tmp)).includes(left[0]!)
  }, 30_000, 'the stale temp file to be swept')
  t.match(second.output(), 'removed a stale Git LFS upload temp file', 'logged')
  const full = await fetch(`${second.url}/demo.git/info/lfs/objects/${sha(data)}`, { method: 'PUT', headers: { authorization: alice }, body: data })
  t.equal(full.status, 200, 'the object uploads whole afterwards')
  t.same(await readdir(tmp), [], 'and nothing is left in the temp dir')
})
