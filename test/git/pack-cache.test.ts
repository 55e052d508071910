import t from 'tap'
import type * as Tap from 'tap'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import { addBigRepo, gitClient, gitWrapper, metric, startWorker, waitFor, type Worker } from '../helpers/worker.js'
import { checkArgs, PackObjectsCache } from '../../src/git/pack-cache.js'
import { HookService } from '../../src/git/hook-service.js'
import { HOOK_PROTOCOL } from '../../src/git/hook-protocol.js'

const outcomes = (w: { logs(): Record<string, unknown>[] }, from = 0) =>
  // requests that ran pack-objects (a v2 ls-refs does not)
  w.logs().slice(from).filter((l) => l.msg === 'request' && l.route === 'git_upload_pack' && l.pack_cache !== undefined).map((l) => l.pack_cache)

/** many.git: 100 commits on main, commit c adding file f<c>.txt of `content(c)`; their ids, newest first. */
async function manyCommits(t: Tap.Test, w: Worker, content: (c: number) => string): Promise<string[]> {
  const repo = path.join(w.reposDir, 'many.git')
  const git = gitClient(w.dir)
  t.equal((await git(['init', '-q', '--bare', repo])).code, 0)
  const parts: string[] = []
  for (let c = 1; c <= 100; c++) {
    const msg = `commit ${c}\n`
    const file = `file ${c}\n${content(c)}\n`
    parts.push(`commit refs/heads/main\ncommitter T <t@example.invalid> ${1_700_000_000 + c} +0000\ndata ${msg.length}\n${msg}M 100644 inline f${c}.txt\ndata ${file.length}\n${file}\n`)
  }
  t.equal((await git(['--git-dir', repo, 'fast-import', '--quiet'], w.dir, { input: parts.join('') })).code, 0)
  await w.store.setRepo('many.git', 'git', true)
  return (await git(['--git-dir', repo, 'rev-list', 'main'])).stdout.trim().split('\n')
}

const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, '0')}${s}`
/** a protocol v2 fetch of `oid` at depth 1 */
const depthOneFetch = (oid: string) => `${pkt('command=fetch\n')}${pkt('object-format=sha1\n')}0001${pkt('ofs-delta\n')}${pkt('deepen 1\n')}${pkt(`want ${oid}\n`)}${pkt('done\n')}0000`

t.test('the arguments pack-objects runs with are rebuilt from what upload-pack sends, flags only', async (t) => {
  t.same(checkArgs(['git', '--shallow-file', '', 'pack-objects', '--revs', '--thin', '--stdout', '--shallow', '--delta-base-offset', '--include-tag']),
    ['--shallow-file', '', 'pack-objects', '--revs', '--thin', '--stdout', '--shallow', '--delta-base-offset', '--include-tag'])
  t.same(checkArgs(['git', 'pack-objects', '--revs', '--filter=blob:none']), ['pack-objects', '--revs', '--filter=blob:none'])
  for (const bad of [['sh', 'pack-objects'], ['git', 'upload-pack'], ['git', '--shallow-file', '/etc/passwd', 'pack-objects'], ['git', 'pack-objects', 'HEAD'], ['git', 'pack-objects', '--exec=sh'], ['git', 'pack-objects', '--x=a b']]) {
    t.equal(checkArgs(bad), undefined, `refused: ${bad.join(' ')}`)
  }
})

t.test('a pack asked for again is computed once: direct, then written, then served from disk; the same repo on every clone', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true })
  const git = gitClient(w.dir)
  const heads: string[] = []
  for (const name of ['c1', 'c2', 'c3']) {
    const r = await git(['clone', '-q', `${w.url}/demo.git`, name])
    t.equal(r.code, 0, r.stderr)
    heads.push((await git(['rev-parse', 'HEAD'], path.join(w.dir, name))).stdout.trim())
    t.equal((await git(['fsck', '--strict'], path.join(w.dir, name))).code, 0)
  }
  t.same(outcomes(w), ['miss', 'miss', 'hit'], 'first seen: run directly; second: written; third: a hit')
  t.equal(new Set(heads).size, 1)
  const entries = (await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.endsWith('.pack'))
  t.equal(entries.length, 1, 'one entry on disk')
  const m = (await (await fetch(`${w.url}/metrics`)).text())
  t.same([metric(m, 'vcs_pack_cache_hits_total'), metric(m, 'vcs_pack_cache_misses_total'), metric(m, 'vcs_pack_cache_entries')], [1, 2, 1], 'metrics: one hit, two misses, one entry')
  t.ok(metric(m, 'vcs_pack_cache_served_bytes_total') > 0 && metric(m, 'vcs_pack_cache_bytes') > 0)

  // an entry truncated by hand is never served: the clone is served directly and correctly
  const file = path.join(w.config.dataDir, 'pack-cache', entries[0]!)
  await truncate(file, 100)
  const b2 = w.logs().length
  const r5 = await git(['clone', '-q', `${w.url}/demo.git`, 'c5'])
  t.equal(r5.code, 0, r5.stderr)
  t.notSame(outcomes(w, b2), ['hit'], 'not a hit')
  t.ok(w.logs().some((l) => l.msg === 'pack cache entry has the wrong size: removed'), 'the bad entry removed')

  // a push between two clones: the next clone asks for other objects, and gets them
  const work = path.join(w.dir, 'c1')
  await writeFile(path.join(work, 'new.txt'), 'new\n')
  await git(['add', '.'], work)
  await git(['commit', '-qm', 'after the cache'], work)
  await w.addUser('pia', 'pia-password', { 'demo.git': 'write' })
  const pushed = await git(['push', '-q', `${w.urlAs('pia', 'pia-password')}/demo.git`, 'HEAD:refs/heads/main'], work)
  t.equal(pushed.code, 0, pushed.stderr)
  const r = await git(['clone', '-q', `${w.url}/demo.git`, 'c4'])
  t.equal(r.code, 0, r.stderr)
  t.match((await git(['log', '--format=%s', '-1'], path.join(w.dir, 'c4'))).stdout, 'after the cache', 'the new commit is there')
  const before = w.logs().length
  t.equal((await git(['fetch', '-q', 'origin'], path.join(w.dir, 'c2'))).code, 0)
  t.match((await git(['log', '--format=%s', '-1', 'origin/main'], path.join(w.dir, 'c2'))).stdout, 'after the cache', 'and a fetch after the push too')
  // a relayed answer's access line comes when the relay has reported, which may be after git returned
  await waitFor(() => outcomes(w, before).length > 0, 5000, 'the fetch\'s access line')
  t.same(outcomes(w, before), ['miss'])

})

t.test('a pack-objects input larger than a pipe holds (1,800 wants): run directly by the hook, then written, then a hit', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true })
  const repo = path.join(w.reposDir, 'wide.git')
  const git = gitClient(w.dir)
  t.equal((await git(['init', '-q', '--bare', repo])).code, 0)
  // 1,800 commits, each the tip of its own branch: a clone wants every one, 41 bytes each on
  // pack-objects' stdin (74 KB, past the 64 KiB a pipe takes before the hook must write it from another process)
  const parts: string[] = []
  for (let c = 1; c <= 1800; c++) {
    const msg = `commit ${c}\n`
    parts.push(`commit refs/heads/main\nmark :${c}\ncommitter T <t@example.invalid> ${1_700_000_000 + c} +0000\ndata ${msg.length}\n${msg}M 100644 inline f.txt\ndata ${msg.length}\n${msg}\n`)
  }
  for (let c = 1; c <= 1800; c++) parts.push(`reset refs/heads/b${c}\nfrom :${c}\n\n`)
  t.equal((await git(['--git-dir', repo, 'fast-import', '--quiet'], w.dir, { input: parts.join('') })).code, 0)
  await w.store.setRepo('wide.git', 'git', true)
  for (const name of ['w1', 'w2', 'w3']) {
    const r = await git(['clone', '-q', '--mirror', `${w.url}/wide.git`, name])
    t.equal(r.code, 0, r.stderr)
    t.equal((await git(['--git-dir', path.join(w.dir, name), 'for-each-ref', '--format=x', 'refs/heads/'])).stdout.trim().split('\n').length, 1801, `${name}: every branch`)
    t.equal((await git(['--git-dir', path.join(w.dir, name), 'fsck', '--strict'])).code, 0, `${name}: fsck`)
  }
  t.same(outcomes(w), ['miss', 'miss', 'hit'], 'first seen: run directly; second: written; third: a hit')
})

t.test('concurrent identical clones follow one pack-objects run', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true })
  await addBigRepo(w.dir, w.reposDir, 8)
  await w.store.setRepo('big.git', 'git', true)
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${w.url}/big.git`, 'first'])).code, 0, 'seen once')
  const before = w.logs().length
  const results = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => git(['clone', '-q', `${w.url}/big.git`, `b${i}`])))
  t.same(results.map((r) => r.code), [0, 0, 0, 0, 0, 0], results.map((r) => r.stderr).join(''))
  const o = outcomes(w, before)
  t.equal(o.filter((x) => x === 'miss').length, 1, `one run of pack-objects; the others followed it or hit its entry: ${o.join(' ')}`)
  for (let i = 1; i <= 6; i++) t.equal((await git(['fsck'], path.join(w.dir, `b${i}`))).code, 0)
})

t.test('a cache dir that cannot be used: clones served directly, marked off', async (t) => {
  const { dir } = await startWorker(t) // only for a temp dir
  const notADir = path.join(dir, 'a-file')
  await writeFile(notADir, 'x')
  const w = await startWorker(t, { 'pack-cache': true, 'pack-cache-dir': path.join(notADir, 'cache') })
  const git = gitClient(w.dir)
  for (const name of ['d1', 'd2']) t.equal((await git(['clone', '-q', `${w.url}/demo.git`, name])).code, 0)
  t.same(outcomes(w), ['off', 'off'])
})

t.test('the producing pack-objects killed mid-write: its clients fail cleanly, the entry is gone, the next request makes it again', async (t) => {
  // pack-objects run for the cache (through gitBin) dies with SIGKILL after 100 KB, once
  const wrapper = await gitWrapper(t, '#!/bin/sh\nfor a in "$@"; do if [ "$a" = pack-objects ] && [ ! -e @DIR@/killed ]; then touch @DIR@/killed; git "$@" | head -c 100000; kill -9 $$; fi; done\nexec git "$@"\n')
  const w = await startWorker(t, { 'pack-cache': true, 'git-bin': wrapper })
  await addBigRepo(w.dir, w.reposDir, 4)
  await w.store.setRepo('big.git', 'git', true)
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${w.url}/big.git`, 'seen'])).code, 0, 'seen once (run by the hook itself, not through the wrapper)')
  const cut = await git(['clone', '-q', `${w.url}/big.git`, 'cut'])
  t.not(cut.code, 0, 'the client of the killed run fails')
  t.match(cut.stderr, /fatal|error/, `and says so: ${cut.stderr.trim()}`)
  // the client can be done before the worker hears of the failure (the relay cut its answer)
  await waitFor(() => w.logs().some((l) => l.msg === 'pack-objects for the cache failed: entry removed'), 10_000, 'the failure logged')
  t.same((await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.includes('.pack')), [], 'nothing left in the cache, not even a temp file')
  const again = await git(['clone', '-q', `${w.url}/big.git`, 'again'])
  t.equal(again.code, 0, `the next clone is made again and succeeds: ${again.stderr}`)
  t.equal((await git(['fsck'], path.join(w.dir, 'again'))).code, 0)
  t.equal((await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.endsWith('.pack')).length, 1, 'and cached')
})

t.test('the disk floor: a cache that would write below it steps aside; the health report says degraded, never red', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true, 'disk-free-floor-bytes': String(Number.MAX_SAFE_INTEGER), 'health-interval-ms': '200' })
  const git = gitClient(w.dir)
  for (const name of ['f1', 'f2', 'f3']) t.equal((await git(['clone', '-q', `${w.url}/demo.git`, name])).code, 0)
  t.same(outcomes(w), ['miss', 'miss', 'miss'], 'every fetch ran its own pack-objects')
  t.same((await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.includes('.pack')), [], 'nothing written')

  // an unusable dir is reported as degraded in /health/ready, which stays about the disk only
  await writeFile(path.join(w.config.dataDir, 'pack-cache', 'f'), 'a file where the dir should be')
  const w2 = await startWorker(t, { 'pack-cache': true, 'pack-cache-dir': path.join(w.config.dataDir, 'pack-cache', 'f'), 'health-interval-ms': '200' })
  await waitFor(async () => /degraded/.test(JSON.stringify((await (await fetch(`${w2.url}/health/ready`)).json()).checks.pack_cache)), 10_000, 'the degraded report')
  const ready = await (await fetch(`${w2.url}/health/ready`)).json() as { checks: Record<string, { status: string; message: string }> }
  t.equal(ready.checks.pack_cache!.status, 'ok', 'degraded, not down')
  t.match(ready.checks.pack_cache!.message, /^degraded \(clones served directly\): cache dir not writable/)
  t.equal((await git(['clone', '-q', `${w2.url}/demo.git`, 'g1'])).code, 0, 'clones still served')
})

t.test('two workers with separate data dirs on one repos dir: each its own cache, both serving correct packs', async (t) => {
  const a = await startWorker(t, { 'pack-cache': true })
  const b = await startWorker(t, { 'pack-cache': true }, { reposDir: a.reposDir })
  const git = gitClient(a.dir)
  for (const [w, name] of [[a, 'a1'], [b, 'b1'], [a, 'a2'], [b, 'b2'], [a, 'a3'], [b, 'b3']] as const) {
    const r = await git(['clone', '-q', `${w.url}/demo.git`, name])
    t.equal(r.code, 0, r.stderr)
    t.equal((await git(['fsck', '--strict'], path.join(a.dir, name))).code, 0)
  }
  t.same(outcomes(a), ['miss', 'miss', 'hit'])
  t.same(outcomes(b), ['miss', 'miss', 'hit'], 'b keeps its own count and entries')
  for (const w of [a, b]) t.equal((await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.endsWith('.pack')).length, 1)
})

t.test('the size cap: a pack larger than it is never kept; its clients get it whole from memory', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true, 'pack-cache-max-bytes': String(1024 * 1024) })
  await addBigRepo(w.dir, w.reposDir, 12) // past the cap and the 4 MiB held in memory for its readers: pack-objects waits for them
  await w.store.setRepo('big.git', 'git', true)
  const git = gitClient(w.dir)
  // the first is seen once (run directly); then two at once: one production, the other following it or running its own
  for (const names of [['s1'], ['s2', 's3']]) {
    await Promise.all(names.map(async (name) => {
      const cloned = await git(['clone', '-q', `${w.url}/big.git`, name])
      t.equal(cloned.code, 0, cloned.stderr)
      t.equal((await git(['fsck', '--strict'], path.join(w.dir, name))).code, 0, `${name}: whole`)
    }))
  }
  await waitFor(() => outcomes(w).length === 3, 5000, 'the access lines')
  t.notOk(outcomes(w).includes('hit'), 'never a hit: nothing was kept')
  t.ok(w.logs().some((l) => l.msg === 'pack cache full: this pack is not kept, its readers are served from memory'), 'the log says why')
  await waitFor(async () => (await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.includes('.pack')).length === 0, 5000, 'the temp file to go')
})

t.test('100 distinct keys at once under a 1 MiB cap: the cache dir never holds more, entries being written included; every pack whole', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true, 'pack-cache-max-bytes': String(1024 * 1024), 'pack-cache-write-on': '1', 'heavy-limit': '16', 'queue-limit': '100' })
  const commits = await manyCommits(t, w, () => randomBytes(40_000).toString('base64'))
  const dir = path.join(w.config.dataDir, 'pack-cache')
  let peak = 0
  let running = true
  // a sample counts the files listed both before and after their sizes were read: they were all
  // there at the second listing, each at least that large (temp files only grow), so the sum is
  // what the dir held at one moment, or less
  const sampler = (async () => {
    while (running) {
      const first = (await readdir(dir).catch(() => [] as string[])).filter((n) => n.includes('.pack'))
      const sizes = await Promise.all(first.map((n) => stat(path.join(dir, n)).then((s) => s.size, () => 0)))
      const second = new Set(await readdir(dir).catch(() => [] as string[]))
      peak = Math.max(peak, first.reduce((sum, n, i) => sum + (second.has(n) ? sizes[i]! : 0), 0))
      await new Promise((r) => setImmediate(r))
    }
  })()
  const answers = await Promise.all(commits.map(async (oid) => {
    const res = await fetch(`${w.url}/many.git/git-upload-pack`, { method: 'POST', headers: { 'content-type': 'application/x-git-upload-pack-request', 'git-protocol': 'version=2' }, body: depthOneFetch(oid) })
    return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) }
  }))
  running = false
  await sampler
  t.equal(answers.filter((a) => a.status === 200 && a.bytes.includes('PACK')).length, 100, 'every fetch got its pack')
  t.ok(answers.every((a) => a.bytes.subarray(-4).toString() === '0000'), 'each answer ends with its flush: whole')
  t.ok(peak > 0 && peak <= 1024 * 1024, `the cache dir's peak: ${peak} bytes, never past the 1 MiB cap`)
  await waitFor(() => outcomes(w).length === 100, 10_000, 'the access lines')
  t.ok(outcomes(w).every((o) => o === 'miss'), 'each key asked for once: never a hit nor a follow')
  t.ok(metric(await (await fetch(`${w.url}/metrics`)).text(), 'vcs_pack_cache_evictions_total') > 0, 'the oldest entries made room')
})

t.test('a pack served from the cache, or followed as it is made, shows the progress pack-objects showed', async (t) => {
  const w = await startWorker(t, { 'pack-cache': true })
  const git = gitClient(w.dir)
  const errs: string[] = []
  for (const name of ['p1', 'p2', 'p3']) {
    const r = await git(['clone', '--progress', `${w.url}/demo.git`, name])
    t.equal(r.code, 0, r.stderr)
    errs.push(r.stderr)
  }
  t.same(outcomes(w), ['miss', 'miss', 'hit'])
  t.match(errs[0], /remote: Enumerating objects/, 'pack-objects run directly shows progress')
  t.match(errs[1], /remote: (Enumerating|Counting)[\s\S]*remote: Total/, `so does the clone that follows the run making the entry (what was shown when it joined, the rest at the end): ${errs[1]}`)
  t.match(errs[2], /remote: (Enumerating|Counting|Total)/, `and so does the hit: ${errs[2]}`)
})

t.test('the endpoint answers only the upload-pack it was opened for: no token, a closed session, another dir, other arguments, a body too large', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vcs-pack-endpoint-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const repoDir = path.join(dir, 'r.git')
  await mkdir(repoDir)
  const hooks = new HookService(path.join(dir, 'hooks'))
  await hooks.start()
  t.teardown(() => hooks.stop())
  const cache = new PackObjectsCache({
    dir: path.join(dir, 'cache'), hooks, gitBin: 'git', env: { PATH: process.env.PATH! },
    maxAgeMs: 60_000, maxBytes: 1 << 30, writeOnOccurrence: 2, diskFloorBytes: 0, maxProductions: 1,
    maxInputBytes: 1024, killGraceMs: 1000, nice: 0, viaHelper: false, log: pino({ level: 'silent' }),
  })
  cache.start()
  const seen: string[] = []
  const session = cache.open(repoDir, (o) => seen.push(o))
  const url = `${session.env.VCS_WORKER_HOOK_URL!}/pack-objects`
  const call = async (headers: Record<string, string>, body = 'want\n') => {
    const res = await fetch(url, { method: 'POST', headers, body })
    return { status: res.status, text: await res.text() }
  }
  const good = { 'x-vcs-hook-protocol': String(HOOK_PROTOCOL), 'x-vcs-token': session.env.VCS_WORKER_HOOK_TOKEN!, 'x-vcs-cwd': repoDir, 'x-vcs-args': 'git pack-objects --revs --stdout' }
  t.same(await call({ 'x-vcs-hook-protocol': String(HOOK_PROTOCOL), 'x-vcs-cwd': repoDir, 'x-vcs-args': good['x-vcs-args'] }), { status: 403, text: 'unknown hook call\n' }, 'no token')
  t.same(await call({ ...good, 'x-vcs-hook-protocol': String(HOOK_PROTOCOL + 1) }), { status: 409, text: `the hook program speaks protocol ${HOOK_PROTOCOL + 1}, this worker ${HOOK_PROTOCOL}: restart the workers sharing this data dir on one version\n` }, 'a hook of another protocol')
  const { 'x-vcs-hook-protocol': _, ...unversioned } = good
  t.same(await call(unversioned), { status: 409, text: `the hook program speaks protocol none, this worker ${HOOK_PROTOCOL}: restart the workers sharing this data dir on one version\n` }, 'a hook that names no protocol')
  t.same(await call({ ...good, 'x-vcs-token': 'guessed' }), { status: 403, text: 'unknown hook call\n' }, 'a token never issued')
  const push = hooks.open('push', repoDir, {})
  t.same(await call({ ...good, 'x-vcs-token': push.token }), { status: 403, text: 'unknown hook call\n' }, 'a push\'s session may not ask the pack cache')
  push.close()
  t.same(await call({ ...good, 'x-vcs-cwd': dir }), { status: 403, text: 'unknown hook call\n' }, 'another directory')
  t.same(await call({ ...good, 'x-vcs-args': 'git pack-objects --stdout --exec=sh' }), { status: 400, text: 'unexpected pack-objects arguments\n' }, 'an argument upload-pack never passes')
  t.same(await call(good, 'x'.repeat(2048)), { status: 400, text: 'pack-objects input too large\n' }, 'a body over maxInputBytes')
  t.same(seen, [], 'none of them counted as a cache outcome')
  t.equal((await call(good)).status, 204, 'the session it was opened for: first seen, run it yourself')
  t.same(seen, ['miss'])
  session.close()
  t.equal((await call(good)).status, 403, 'a closed session answers nothing')
  t.same(await readdir(path.join(dir, 'cache')), [], 'nothing written by any of them')
})

t.test('100 distinct fetches at once: git runs stay within the admission limit; each client gets a pack or "server busy"', async (t) => {
  // git as the worker starts it, counting the upload-pack (and pack-objects) runs alive as each starts
  const wrapper = await gitWrapper(t, `#!/bin/sh
for a in "$@"; do [ "$a" = --advertise-refs ] && exec git "$@"; done
case " $* " in *" upload-pack "*|*" pack-objects "*) ;; *) exec git "$@" ;; esac
touch @DIR@/running.$$
ls @DIR@ | grep -c '^running' >> @DIR@/counts
git "$@"; rc=$?
rm -f @DIR@/running.$$
exit $rc
`)
  // 4 heavy slots; one repo and one client may hold half of them (repoHeavyLimit, clientHeavyLimit)
  const w = await startWorker(t, { 'pack-cache': true, 'heavy-limit': '4', 'queue-limit': '40', 'git-bin': wrapper })
  // 100 commits, each a distinct depth-1 fetch: 100 keys, none repeated
  const commits = await manyCommits(t, w, () => randomBytes(20_480).toString('hex'))
  t.equal(commits.length, 100)

  const answers = await Promise.all(commits.map(async (oid) => {
    const res = await fetch(`${w.url}/many.git/git-upload-pack`, { method: 'POST', headers: { 'content-type': 'application/x-git-upload-pack-request', 'git-protocol': 'version=2' }, body: depthOneFetch(oid) })
    const bytes = Buffer.from(await res.arrayBuffer())
    // refused, upload-pack answers as git does: an ERR packet the client prints as "remote error"
    return { status: res.status, pack: bytes.includes('PACK'), busy: bytes.subarray(0, 40).toString().startsWith('0058ERR server busy') }
  }))
  const served = answers.filter((a) => a.status === 200 && a.pack)
  const refused = answers.filter((a) => a.status === 200 && a.busy)
  t.equal(served.length + refused.length, 100, `only packs and "server busy": ${JSON.stringify(answers.filter((a) => !a.pack && !a.busy))}`)
  t.ok(served.length >= 40 && refused.length >= 1, `those running and the 40 waiting are served (${served.length}); the rest are told the server is busy (${refused.length})`)
  const counts = (await readFile(path.join(path.dirname(wrapper), 'counts'), 'utf8')).trim().split('\n').map(Number)
  t.equal(counts.length, served.length, 'one git run per pack served (each key seen once: run inside its own upload-pack)')
  t.ok(Math.max(...counts) >= 1 && Math.max(...counts) <= 2, `at most 2 at once: one repo's and one client's half of heavyLimit (peak ${Math.max(...counts)})`)
  const outcomes100 = outcomes(w)
  t.equal(outcomes100.filter((o) => o === 'hit' || o === 'follow').length, 0, 'distinct keys: nothing shared')
  t.equal((await readdir(path.join(w.config.dataDir, 'pack-cache'))).filter((n) => n.includes('.pack')).length, 0, 'and nothing written: each key seen once')
  t.equal((await fetch(`${w.url}/health/live`)).status, 200, 'the worker is fine')
})
