import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { Readable } from 'node:stream'
import { FsLfsStore, LfsObjectError, isOid } from '../../src/lfs/store.js'

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
/** `data` as a request body arriving in pieces */
const body = (data: Buffer, piece = 64 * 1024) => Readable.from((function* () { for (let i = 0; i < data.length; i += piece) yield data.subarray(i, i + piece) })())
const collect = async (r: AsyncIterable<unknown>) => { const parts: Buffer[] = []; for await (const c of r) parts.push(c as Buffer); return Buffer.concat(parts) }
const leftovers = async (repo: string) => (await readdir(path.join(repo, 'lfs', 'tmp')).catch(() => [] as string[]))

t.test('an object is stored under oid[0:2]/oid[2:4]/oid, read whole or by range', async (t) => {
  const repo = t.testdir()
  const store = new FsLfsStore()
  const data = randomBytes(300_000)
  const oid = sha(data)
  t.equal(await store.size(repo, oid), undefined, 'absent before')
  await store.put(repo, oid, data.length, body(data))
  t.equal(await store.size(repo, oid), data.length)
  t.ok((await readFile(path.join(repo, 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid))).equals(data), 'the layout git-lfs uses')
  t.ok((await collect(store.read(repo, oid))).equals(data))
  t.ok((await collect(store.read(repo, oid, { start: 1000, end: 1999 }))).equals(data.subarray(1000, 2000)), 'a range, end inclusive')
  t.same(await leftovers(repo), [], 'no temp file left')
})

t.test('a body that is not what was announced stores nothing', async (t) => {
  const repo = t.testdir()
  const store = new FsLfsStore()
  const data = randomBytes(200_000)
  const oid = sha(data)
  const cases: [string, Buffer, number, RegExp][] = [
    ['wrong bytes', randomBytes(200_000), data.length, /does not hash/],
    ['short', data.subarray(0, 100_000), data.length, /100000 bytes, not the 200000/],
    ['long', Buffer.concat([data, Buffer.from('x')]), data.length, /longer than the 200000/],
    ['a size of 0 for a body', data, 0, /longer than the 0/],
  ]
  for (const [what, bytes, size, message] of cases) {
    await t.rejects(store.put(repo, oid, size, body(bytes)), message, what)
    t.equal(await store.size(repo, oid), undefined, `${what}: nothing stored`)
    t.same(await leftovers(repo), [], `${what}: temp file removed`)
  }
  const err = await store.put(repo, oid, data.length, body(randomBytes(10))).catch((e: unknown) => e)
  t.ok(err instanceof LfsObjectError && err.reason === 'size')
})

t.test('a client that goes away mid-upload leaves nothing', async (t) => {
  const repo = t.testdir()
  const store = new FsLfsStore()
  const data = randomBytes(500_000)
  const broken = new Readable({ read() {} })
  broken.push(data.subarray(0, 100_000))
  setTimeout(() => broken.destroy(new Error('client disconnected')), 20)
  await t.rejects(store.put(repo, sha(data), data.length, broken), /client disconnected/)
  t.equal(await store.size(repo, sha(data)), undefined)
  t.same(await leftovers(repo), [])
})

t.test('two uploads of one oid at once both succeed and leave one whole file', async (t) => {
  const repo = t.testdir()
  const store = new FsLfsStore()
  const data = randomBytes(1_000_000)
  const oid = sha(data)
  await Promise.all([store.put(repo, oid, data.length, body(data, 10_000)), store.put(repo, oid, data.length, body(data, 70_000))])
  t.ok((await collect(store.read(repo, oid))).equals(data))
  t.same(await readdir(path.join(repo, 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4))), [oid])
  t.same(await leftovers(repo), [])
})

t.test('object ids: 64 lowercase hex digits, nothing else reaches the filesystem', async (t) => {
  const store = new FsLfsStore()
  const good = sha(Buffer.from('x'))
  t.ok(isOid(good))
  for (const bad of ['../../../etc/passwd', good.toUpperCase(), good.slice(1), `${good}0`, `${good.slice(0, 62)}/.`, '', 42, null]) {
    t.notOk(isOid(bad), `refused: ${String(bad)}`)
  }
  t.throws(() => store.pathOf('/repo', '../x'), /not an LFS object id/)
})

t.test('check re-hashes every object and names the bad ones, deleting nothing', async (t) => {
  const repo = t.testdir()
  const store = new FsLfsStore()
  const a = randomBytes(1000)
  const b = randomBytes(2000)
  await store.put(repo, sha(a), a.length, body(a))
  await store.put(repo, sha(b), b.length, body(b))
  await writeFile(store.pathOf(repo, sha(b)), randomBytes(2000)) // rotted on disk
  const seen = []
  for await (const r of store.check(repo)) seen.push(r)
  t.same(seen.map((r) => [r.oid, r.ok]).sort(), [[sha(a), true], [sha(b), false]].sort())
  t.equal(await store.size(repo, sha(b)), 2000, 'the bad one is still there')
  const none = []
  for await (const r of store.check(t.testdir())) none.push(r)
  t.same(none, [], 'a repo without objects: nothing')
})
