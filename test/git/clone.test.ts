import t from 'tap'
import path from 'node:path'
import { readFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import http from 'node:http'
import { gzipSync } from 'node:zlib'
import { addBigRepo, startWorker, gitClient, processesMatching, rawRequest, waitFor } from '../helpers/worker.js'
import { FLUSH, pkt } from '../../src/git/pktline.js'

const MAIN = '5ac674cbf899a6fbcdfc314785e2e58c31ca95a2'

for (const version of ['0', '1', '2']) {
  t.test(`protocol v${version}: ls-remote, clone, fetch`, async (t) => {
    const w = await startWorker(t)
    const git = gitClient(w.dir)
    const ls = await git(['-c', `protocol.version=${version}`, 'ls-remote', `${w.url}/demo.git`])
    t.equal(ls.code, 0, ls.stderr)
    t.match(ls.stdout, `${MAIN}\trefs/heads/main`)
    t.match(ls.stdout, 'refs/tags/v1.1^{}')
    t.match(ls.stdout, 'refs/heads/release/1.x')

    const clone = await git(['-c', `protocol.version=${version}`, 'clone', `${w.url}/demo.git`, 'c'])
    t.equal(clone.code, 0, clone.stderr)
    t.equal((await git(['rev-parse', 'HEAD'], path.join(w.dir, 'c'))).stdout.trim(), MAIN)
    t.equal((await git(['fsck', '--strict'], path.join(w.dir, 'c'))).code, 0)
    const fetch = await git(['-c', `protocol.version=${version}`, 'fetch', 'origin', 'refs/tags/*:refs/tags/*'], path.join(w.dir, 'c'))
    t.equal(fetch.code, 0, fetch.stderr)
    const access = w.logs().filter((l) => l.msg === 'request' && l.route === 'git_upload_pack')
    t.ok(access.length >= 1, 'upload-pack requests logged')
    t.equal(access[0]!.protocol, `v${version}`, 'the access line names the protocol git used')
    t.equal(access[0]!.exit_code, 0)
    t.ok((access[0]!.bytes_out as number) > 0)
    t.equal(access[0]!.repo, 'demo.git')
  })
}

t.test('URLs with and without .git, nested paths, the empty repo', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  for (const url of ['demo', 'demo.git', 'team/project', 'team/project.git']) {
    const r = await git(['clone', `${w.url}/${url}`, `c-${url.replace(/\//g, '_')}`])
    t.equal(r.code, 0, `${url}: ${r.stderr}`)
  }
  const empty = await git(['clone', `${w.url}/empty.git`, 'c-empty'])
  t.equal(empty.code, 0, empty.stderr)
  t.match(empty.stderr, 'You appear to have cloned an empty repository')
  // without credentials a missing repo looks private: git asks for credentials
  const missing = await git(['clone', `${w.url}/nope.git`, 'c-nope'])
  t.not(missing.code, 0)
  t.match(missing.stderr, /could not read Username/)
  await w.addUser('una', 'una-password')
  const known = await git(['clone', `${w.urlAs('una', 'una-password')}/nope.git`, 'c-nope2'])
  t.not(known.code, 0)
  t.match(known.stderr, /repository not found/, 'a signed-in user learns it is missing')
})

t.test('shallow clones: --depth, --deepen, --shallow-since, --unshallow', async (t) => {
  const w = await startWorker(t)
  for (const v of ['0', '2']) {
    const git = gitClient(w.dir, { GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'protocol.version', GIT_CONFIG_VALUE_0: v })
    const dir = path.join(w.dir, `shallow-v${v}`)
    t.equal((await git(['clone', '--depth', '1', `${w.url}/demo.git`, dir])).code, 0)
    t.equal((await git(['rev-list', '--count', 'HEAD'], dir)).stdout.trim(), '1')
    t.equal((await git(['fetch', '--deepen', '2'], dir)).code, 0)
    t.equal((await git(['rev-list', '--count', 'HEAD'], dir)).stdout.trim(), '3')
    const since = path.join(w.dir, `since-v${v}`)
    // fixture commits are one hour apart from 2024-01-01T01:00Z; main has 4 commits
    const r = await git(['clone', '--shallow-since', '2024-01-01T02:30:00Z', `${w.url}/demo.git`, since])
    t.equal(r.code, 0, r.stderr)
    t.equal((await git(['rev-list', '--count', 'HEAD'], since)).stdout.trim(), '2', `v${v} shallow-since cut at the date`)
    t.equal((await git(['fetch', '--unshallow'], dir)).code, 0)
    t.equal((await git(['rev-list', '--count', 'HEAD'], dir)).stdout.trim(), '4')
  }
})

t.test('partial clone --filter=blob:none, with lazy fetches of missing blobs', async (t) => {
  const w = await startWorker(t)
  for (const v of ['0', '2']) {
    const git = gitClient(w.dir, { GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'protocol.version', GIT_CONFIG_VALUE_0: v })
    const dir = path.join(w.dir, `partial-v${v}`)
    const r = await git(['clone', '--no-checkout', '--filter=blob:none', `${w.url}/demo.git`, dir])
    t.equal(r.code, 0, r.stderr)
    t.equal((await git(['config', 'remote.origin.promisor'], dir)).stdout.trim(), 'true', `v${v}: a real partial clone`)
    const missing = await git(['rev-list', '--objects', '--all', '--missing=print'], dir)
    t.match(missing.stdout, /^\?[0-9a-f]{40}/m, 'blobs are missing after the clone')
    const co = await git(['checkout', 'main'], dir)
    t.equal(co.code, 0, co.stderr)
    t.equal(await readFile(path.join(dir, 'src.txt'), 'utf8'), 'one\ntwo\n', 'checkout fetched the blobs lazily')
  }
})

t.test('20 concurrent clones', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => git(['clone', '-q', `${w.url}/demo.git`, `cc${i}`])))
  t.same(results.map((r) => r.code), Array(20).fill(0), results.map((r) => r.stderr).join(''))
  for (let i = 0; i < 20; i++) t.equal((await git(['rev-parse', 'HEAD'], path.join(w.dir, `cc${i}`))).stdout.trim(), MAIN)
  await waitFor(async () => (await processesMatching(w.reposDir)).length === 0, 5000, 'git children to be reaped')
  t.same(await processesMatching(w.reposDir), [], 'no git process left, no zombie')
})

t.test('the v2 advertisement is served without a git process', async (t) => {
  const w = await startWorker(t)
  const get = () => fetch(`${w.url}/demo.git/info/refs?service=git-upload-pack`, { headers: { 'git-protocol': 'version=2' } })
  const first = await get()
  t.equal(first.status, 200)
  t.equal(first.headers.get('content-type'), 'application/x-git-upload-pack-advertisement')
  const body = await first.text()
  t.match(body, /^000eversion 2\n/)
  t.match(body, 'fetch=shallow')
  t.match(body, 'filter', 'partial clone advertised')
  for (let i = 0; i < 5; i++) t.equal(await (await get()).text(), body)
  const spawned = w.logs().filter((l) => l.msg === 'request' && l.route === 'git_info_refs' && l.child_pid !== undefined)
  t.equal(spawned.length, 0, 'no request spawned git')
  // v0 still gets the service header and refs from git
  const v0 = await fetch(`${w.url}/demo.git/info/refs?service=git-upload-pack`)
  const v0body = await v0.text()
  t.match(v0body, /^001e# service=git-upload-pack\n0000/)
  t.match(v0body, MAIN)
  // a malformed Git-Protocol header is ignored, not passed to git
  const bad = await fetch(`${w.url}/demo.git/info/refs?service=git-upload-pack`, { headers: { 'git-protocol': 'version=2;rm -rf' } })
  t.match(await bad.text(), /^001e# service=git-upload-pack/)
})

t.test('object-info is neither advertised nor served: one request can no longer cost git minutes', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  const adv = await (await fetch(`${w.url}/demo.git/info/refs?service=git-upload-pack`, { headers: { 'git-protocol': 'version=2' } })).text()
  t.notMatch(adv, 'object-info', 'not in the v2 advertisement')
  t.match(adv, 'ls-refs', 'the other capabilities are')
  // what git 2.39 itself would serve: a request for 1.3 M object ids in 185 KB of gzip
  const lines = Buffer.concat([pkt('command=object-info\n'), pkt('agent=attacker\n'), Buffer.from('0001'), pkt('size\n'), ...Array.from({ length: 200_000 }, () => pkt(`oid ${MAIN}\n`)), FLUSH])
  const before = w.logs().length
  const res = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { 'content-type': 'application/x-git-upload-pack-request', 'git-protocol': 'version=2', 'content-encoding': 'gzip' }, gzipSync(lines))
  t.same([res.status, res.body.toString()], [400, 'protocol v2 command object-info is not served here\n'])
  const line = w.logs().slice(before).find((l) => l.msg === 'request' && l.route === 'git_upload_pack')!
  t.equal(line.child_pid, undefined, 'no git process was started for it')
  // the commands clients use still work
  const clone = await git(['-c', 'protocol.version=2', 'clone', '-q', `${w.url}/demo.git`, 'v2'])
  t.equal(clone.code, 0, clone.stderr)
})

/** An upload-pack answer read `slowly` (a pause after every chunk, as a slow client's socket does) or at once. */
function fetchPack(port: number, oid: string, slowly: boolean): Promise<{ status: number; body: Buffer }> {
  const body = Buffer.concat([pkt(`want ${oid} ofs-delta side-band-64k no-progress\n`), FLUSH, pkt('done\n')])
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/big.git/git-upload-pack', headers: { 'content-type': 'application/x-git-upload-pack-request', 'content-length': body.length } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => {
        chunks.push(c)
        if (slowly) {
          res.pause()
          setTimeout(() => res.resume(), 2)
        }
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

t.test('git output crosses the worker in reused buffers: slow and fast readers at once all get the whole pack, byte for byte', async (t) => {
  const w = await startWorker(t, { 'heavy-limit': '16' })
  const oid = await addBigRepo(w.dir, w.reposDir, 6)
  await w.store.setRepo('big.git', 'git', true)
  const reference = await fetchPack(w.port, oid, false)
  t.equal(reference.status, 200)
  t.ok(reference.body.length > 6 * 1024 * 1024, `a pack of ${reference.body.length} bytes`)
  // git frames its side-band packets as its reads fall, so the answers differ in framing; the
  // pack inside is the same every time, and ends with the SHA-1 of itself
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
  const packOf = (b: Buffer): Buffer => {
    const out: Buffer[] = []
    for (let i = 8; i < b.length;) { // past "0008NAK\n"
      const n = parseInt(b.subarray(i, i + 4).toString(), 16)
      if (n === 0) { i += 4; continue }
      if (b[i + 4] === 1) out.push(b.subarray(i + 5, i + n))
      i += n
    }
    return Buffer.concat(out)
  }
  const whole = (pack: Buffer): boolean => pack.length > 20 && createHash('sha1').update(pack.subarray(0, -20)).digest().equals(pack.subarray(-20))
  const expected = packOf(reference.body)
  t.ok(whole(expected), 'the reference pack checks out')
  // slow readers keep buffers in flight while fast ones take and give back others
  const runs = await Promise.all([true, false, true, false, true, false].map((slow) => fetchPack(w.port, oid, slow)))
  for (const [i, r] of runs.entries()) {
    const pack = packOf(r.body)
    t.same([r.status, whole(pack), sha(pack)], [200, true, sha(expected)], `reader ${i} (${i % 2 ? 'fast' : 'slow'}) got the same pack, whole`)
  }
  // and a real client takes such a pack whole
  const git = gitClient(w.dir)
  const clone = await git(['clone', '-q', '--bare', `${w.url}/big.git`, 'big-clone'])
  t.equal(clone.code, 0, clone.stderr)
  t.equal((await git(['fsck', '--strict'], path.join(w.dir, 'big-clone'))).code, 0)
  const lines = w.logs().filter((l) => l.msg === 'request' && l.route === 'git_upload_pack' && l.status === 200)
  const sent = [reference, ...runs].map((r) => r.body.length).sort()
  t.same(lines.slice(0, 7).map((l) => l.bytes_out).sort(), sent, 'the access log counts every byte sent')
})
