import t from 'tap'
import path from 'node:path'
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { randomBytes } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { clientEnv, gitWrapper, rawRequest, run, startWorker, waitFor, type Worker } from '../helpers/worker.js'

/** An hg client with its own hgrc (identity only: credentials, when any, go in the URL). */
async function hgClient(w: Worker) {
  const rc = path.join(w.dir, 'hgrc-client')
  await writeFile(rc, '[ui]\nusername = Test User <test@example.invalid>\ninteractive = false\n')
  const env = clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc })
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env })
}

const bundleDir = (w: Worker) => path.join(w.reposDir, 'demo-hg', '.hg', 'clonebundles')
const meta = async (w: Worker) => JSON.parse(await readFile(path.join(bundleDir(w), 'meta.json'), 'utf8')) as { state: string; generatedAt: number; bundles: { name: string; spec: string }[] }
const bundlesMade = (w: Worker) => waitFor(async () => (await meta(w).catch(() => undefined)) !== undefined, 20_000, 'clone bundles to be made')
/** a generation's lock file goes a moment after its meta.json is written */
const generationEnded = (w: Worker) => waitFor(async () => !(await readdir(bundleDir(w)).catch(() => [] as string[])).includes('.generating'), 5000, 'the generation to end')
const serverLog = (w: Worker) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), 'log', '-T', '{node}\n'], { env: clientEnv(w.dir, { HGRCPATH: '' }) })

t.test('a clone applies the repo\'s clone bundle, then pulls only what was pushed since; a push makes them again', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '1500' })
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'write' })
  const hg = await hgClient(w)

  // no bundles yet: a plain clone, and the manifest request has them made
  let r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c1'])
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout, 'applying clone bundle', 'nothing to apply yet')
  await bundlesMade(w)
  const made = await meta(w)
  t.same(made.bundles.map((b) => b.name), ['stream-v2.hg', 'zstd-v2.hg'], 'a stream bundle and a zstd bundle')
  t.match(made.bundles[0]!.spec, /^none-v2;stream=v2;requirements%3D/)
  t.equal(made.bundles[1]!.spec, 'zstd-v2')

  r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c2'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, new RegExp(`applying clone bundle from ${w.url}/demo-hg/\\.hg/clonebundles/(stream|zstd)-v2\\.hg`), r.stdout)
  t.match(r.stdout, 'finished applying clone bundle')
  t.equal((await hg(['log', '-R', 'c2', '-T', '{node}\n'])).stdout, (await serverLog(w)).stdout, 'the same history as the server')
  t.equal((await hg(['verify', '-q', '-R', 'c2'])).code, 0)
  const served = w.logs().filter((l) => l.msg === 'request' && l.route === 'hg_clonebundle')
  t.equal(served.length, 1, 'the bundle came from the worker')
  t.equal(served[0]!.status, 200)
  t.equal(served[0]!.url, '/demo-hg/.hg/clonebundles/stream-v2.hg', 'this client takes the stream bundle (listed first; it has the repo\'s requirements)')
  t.match(r.stdout, /files to transfer[\s\S]*finished applying clone bundle/, 'streamed: store files, no changegroup to apply')

  // a push: the bundles are now stale; a clone applies them and pulls the rest
  const work = path.join(w.dir, 'c2')
  await hg(['update', '-R', work, 'default'])
  await writeFile(path.join(work, 'after.txt'), 'after the bundle\n')
  await hg(['add', '-R', work, path.join(work, 'after.txt')])
  await hg(['commit', '-R', work, '-m', 'after the bundle'])
  r = await hg(['push', '-R', work, `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])
  t.equal(r.code, 0, r.stderr + r.stdout)
  r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c3'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'applying clone bundle')
  t.match(r.stdout, /searching for changes[\s\S]*added 1 changesets/, 'and pulled what the bundle lacks')
  t.equal((await hg(['log', '-R', 'c3', '-r', 'tip', '-T', '{desc}'])).stdout, 'after the bundle')

  // made again once the push settled: the new bundle holds the new changeset
  await waitFor(async () => (await meta(w)).generatedAt > made.generatedAt, 20_000, 'the bundles made again')
  r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c4'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'applying clone bundle')
  t.notMatch(r.stdout, 'added 1 changesets', 'nothing left to pull')
  t.equal((await hg(['log', '-R', 'c4', '-T', '{node}\n'])).stdout, (await serverLog(w)).stdout)
})

t.test('a private repo\'s bundles need its read permission: the clone URL\'s credentials are offered to them', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0' }, { private: true })
  await w.addUser('pia', 'pia-password', { 'demo-hg': 'read' })
  await w.addUser('olaf', 'olaf-password')
  const hg = await hgClient(w)
  const as = (user: string) => `http://${user}:${user}-password@${w.url.slice('http://'.length)}/demo-hg`
  t.equal((await hg(['clone', '-U', as('pia'), 'p1'])).code, 0)
  await bundlesMade(w)
  const r = await hg(['clone', '-U', as('pia'), 'p2'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'applying clone bundle', r.stdout)
  t.match(r.stdout, 'finished applying clone bundle')
  t.equal((await hg(['log', '-R', 'p2', '-T', '{node}\n'])).stdout, (await serverLog(w)).stdout)
  const anon = await hg(['clone', '-U', `${w.url}/demo-hg`, 'p3'])
  t.not(anon.code, 0, 'anonymous: no clone')

  const file = `/demo-hg/.hg/clonebundles/${(await meta(w)).bundles[0]!.name}`
  const onDisk = await readFile(path.join(w.reposDir, file.slice(1)))
  const get = (user?: string, headers: Record<string, string> = {}) => fetch(`${w.url}${file}`, { headers: { ...headers, ...(user ? { authorization: `Basic ${Buffer.from(`${user}:${user}-password`).toString('base64')}` } : {}) } })
  t.equal((await get()).status, 401, 'anonymous: 401 with a challenge, as for the repo')
  t.equal((await get('olaf')).status, 404, 'a user who may not read the repo: 404, as for the repo')
  const whole = await get('pia')
  t.equal(whole.status, 200)
  t.equal(whole.headers.get('accept-ranges'), 'bytes')
  t.same(Buffer.from(await whole.arrayBuffer()), onDisk, 'the bundle, byte for byte')
  // a download that broke off resumes where it stopped
  const part = await get('pia', { range: 'bytes=10-19' })
  t.equal(part.status, 206)
  t.equal(part.headers.get('content-range'), `bytes 10-19/${onDisk.length}`)
  t.same(Buffer.from(await part.arrayBuffer()), onDisk.subarray(10, 20))
  const rest = await get('pia', { range: `bytes=${onDisk.length - 5}-` })
  t.same(Buffer.from(await rest.arrayBuffer()), onDisk.subarray(-5))
  t.equal((await get('pia', { range: `bytes=${onDisk.length + 10}-` })).status, 416, 'a range past the end: 416')
})

t.test('bad bundle URLs: only the bundle files, only under the repo itself, GET only; a bad Host gets no bundles', async (t) => {
  // the test's requests come from 127.0.0.1, here a trusted proxy: its Host names the URLs
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0', 'trusted-proxies': '127.0.0.1' })
  const hg = await hgClient(w)
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'b1'])).code, 0)
  await bundlesMade(w)
  const status = async (p: string, method = 'GET') => (await fetch(`${w.url}${p}`, { method })).status
  t.equal(await status('/demo-hg/.hg/clonebundles/zstd-v2.hg'), 200)
  t.equal(await status('/demo-hg/.hg/clonebundles/zstd-v2.hg', 'HEAD'), 200)
  for (const p of ['/demo-hg/.hg/clonebundles/meta.json', '/demo-hg/.hg/clonebundles/.generating', '/demo-hg/.hg/clonebundles/..%2F..%2Fhgrc', '/demo-hg/.hg/clonebundles/zstd-v2.hg.tmp-1']) {
    t.equal(await status(p), 404, `not a bundle: ${p}`)
  }
  t.equal(await status('/demo-hg/file/.hg/clonebundles/zstd-v2.hg'), 401, 'a path under the repo is no repo: to an anonymous caller, as a private one')
  t.equal(await status('/demo-hg/.hg/clonebundles/zstd-v2.hg', 'POST'), 405)
  t.equal(await status('/no-such-repo/.hg/clonebundles/zstd-v2.hg'), 401, 'a repo that does not exist answers as a private one does')
  t.equal(await status('/.hg/clonebundles/zstd-v2.hg'), 400, 'no repo path at all')
  t.equal(await status('/demo-hg/.hg/hgrc'), 400, 'the rest of .hg is no URL at all')
  const m = await rawRequest(Number(new URL(w.url).port), 'GET', '/demo-hg?cmd=clonebundles', { host: 'evil host' })
  t.equal(m.status, 200)
  t.equal(m.body.toString(), '', 'no URL built from a Host that is not one')
  const proxied = await rawRequest(Number(new URL(w.url).port), 'GET', '/demo-hg?cmd=clonebundles', { host: 'hg.example:8443', 'x-forwarded-proto': 'https' })
  t.match(proxied.body.toString(), /^https:\/\/hg\.example:8443\/demo-hg\/\.hg\/clonebundles\/zstd-v2\.hg BUNDLESPEC=zstd-v2$/m, 'the proxy\'s Host and scheme')
  const good = await (await fetch(`${w.url}/demo-hg?cmd=clonebundles`)).text()
  t.match(good, `${w.url}/demo-hg/.hg/clonebundles/zstd-v2.hg BUNDLESPEC=zstd-v2\n`)
  t.equal((await stat(bundleDir(w))).isDirectory(), true)
})

t.test('an empty repo gets no bundles and clones as before; a secret changeset keeps the stream bundle away', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0' })
  const hg = await hgClient(w)
  const server = (args: string[]) => run('hg', args, { env: clientEnv(w.dir, { HGRCPATH: '' }) })
  await server(['init', path.join(w.reposDir, 'empty-hg')])
  await w.store.setRepo('empty-hg', 'hg', true)
  t.equal((await hg(['clone', `${w.url}/empty-hg`, 'e1'])).code, 0)
  const madeFor = (name: string) => w.logs().filter((l) => l.msg === 'hg clone bundles made' && String(l.repo_dir).endsWith(name))
  const manifests = () => w.logs().filter((l) => l.msg === 'request' && l.url === '/empty-hg?cmd=clonebundles').length
  await waitFor(() => madeFor('empty-hg').length === 1, 10_000, 'the first manifest\'s generation')
  t.equal((await fetch(`${w.url}/empty-hg?cmd=clonebundles`).then((r) => r.text())), '', 'no bundles for nothing')
  t.notOk(w.logs().some((l) => l.msg === 'hg clone bundles: generation failed'), 'and no failure')
  const asked = manifests()
  t.equal((await hg(['clone', `${w.url}/empty-hg`, 'e2'])).code, 0)
  await waitFor(() => manifests() > asked, 5000, 'the second clone\'s manifest')
  // the event that must come later: a changeset makes the next clone's manifest schedule one
  const emptyRepo = path.join(w.reposDir, 'empty-hg')
  await writeFile(path.join(emptyRepo, 'a.txt'), 'a\n')
  t.equal((await server(['-R', emptyRepo, 'commit', '-A', '-q', '-u', 'T <t@example.invalid>', '-m', 'a'])).code, 0)
  t.equal((await hg(['clone', `${w.url}/empty-hg`, 'e3'])).code, 0)
  await waitFor(() => madeFor('empty-hg').length === 2, 10_000, 'the generation after the changeset')
  const made = madeFor('empty-hg')
  t.same(made[0]!.bundles, [], 'an empty repo is noted as such once')
  t.ok((made[1]!.bundles as string[]).length > 0, 'the clone between them made nothing again; the changeset did')

  const repo = path.join(w.reposDir, 'demo-hg')
  await server(['-R', repo, 'phase', '--force', '--secret', '-r', 'tip'])
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 's1'])).code, 0)
  await bundlesMade(w)
  t.same((await meta(w)).bundles.map((b) => b.name), ['zstd-v2.hg'], 'only the zstd bundle: a stream bundle would carry the secret changeset')
  const r = await hg(['clone', '-U', `${w.url}/demo-hg`, 's2'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'applying clone bundle')
  t.equal((await hg(['log', '-R', 's2', '-r', 'secret()', '-T', 'x'])).stdout, '', 'no secret changeset reached the client')
})

t.test('a generation lock held by a live process is respected; one left by a killed worker, and its temp files, are cleared', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0' })
  const hg = await hgClient(w)
  await mkdir(bundleDir(w), { recursive: true })
  const lock = path.join(bundleDir(w), '.generating')
  await writeFile(lock, `${hostname()} ${process.ppid} now\n`) // a live process of this host
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'l1'])).code, 0)
  await waitFor(async () => w.logs().some((l) => l.msg === 'hg clone bundles: another worker is making them'), 10_000, 'the lock respected')
  t.equal(await readFile(path.join(bundleDir(w), 'meta.json'), 'utf8').catch(() => 'none'), 'none', 'nothing made')

  // a worker killed mid-generation: its lock names a pid that is gone, its temp file stays
  const dead = spawnSync('true').pid!
  await writeFile(lock, `${hostname()} ${dead} then\n`)
  await writeFile(path.join(bundleDir(w), `zstd-v2.hg.tmp-${dead}`), 'half a bundle')
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'l2'])).code, 0)
  await bundlesMade(w)
  await generationEnded(w)
  t.same((await readdir(bundleDir(w))).sort(), ['meta.json', 'stream-v2.hg', 'zstd-v2.hg'], 'made; the lock and the temp file gone')
})

t.test('a bundle removed or cut by hand is never listed: the clone takes the other, and both are made again', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '300' })
  const hg = await hgClient(w)
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'm1'])).code, 0)
  await bundlesMade(w)
  const first = await meta(w)
  await rm(path.join(bundleDir(w), 'stream-v2.hg'))
  let r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'm2'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'clonebundles/zstd-v2.hg', 'the zstd bundle, the one still there')
  await waitFor(async () => (await meta(w).catch(() => first)).generatedAt > first.generatedAt, 20_000, 'made again')
  await generationEnded(w)
  t.same((await readdir(bundleDir(w))).sort(), ['meta.json', 'stream-v2.hg', 'zstd-v2.hg'])

  const second = await meta(w)
  await truncate(path.join(bundleDir(w), 'zstd-v2.hg'), 10)
  await truncate(path.join(bundleDir(w), 'stream-v2.hg'), 10)
  r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'm3'])
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout, 'applying clone bundle', 'neither cut bundle listed: a plain clone')
  t.equal((await hg(['log', '-R', 'm3', '-T', '{node}\n'])).stdout, (await serverLog(w)).stdout)
  await waitFor(async () => (await meta(w).catch(() => second)).generatedAt > second.generatedAt, 20_000, 'made again')
})

t.test('one generation at a time however many repos ask; none below the disk floor', async (t) => {
  // hg as the worker starts it: each `hg bundle` counts the bundle runs alive as it starts
  const wrapper = await gitWrapper(t, `#!/bin/sh
for a in "$@"; do
  if [ "$a" = bundle ]; then
    touch @DIR@/running.$$
    ls @DIR@ | grep -c '^running' >> @DIR@/counts
    sleep 0.3
    hg "$@"; rc=$?
    rm -f @DIR@/running.$$
    exit $rc
  fi
done
exec hg "$@"
`)
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0', 'hg-bin': wrapper })
  const repos = ['demo-hg', 'r1', 'r2', 'r3']
  for (const name of repos.slice(1)) {
    await run('hg', ['clone', '-U', '-q', path.join(w.reposDir, 'demo-hg'), path.join(w.reposDir, name)], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
    await w.store.setRepo(name, 'hg', true)
  }
  // four manifests asked for at once: four generations due together
  await Promise.all(repos.map((r) => fetch(`${w.url}/${r}?cmd=clonebundles`).then((res) => res.text())))
  await waitFor(async () => (await Promise.all(repos.map((r) => stat(path.join(w.reposDir, r, '.hg', 'clonebundles', 'meta.json')).then(() => true, () => false)))).every(Boolean), 60_000, 'bundles for the four repos')
  const counts = (await readFile(path.join(path.dirname(wrapper), 'counts'), 'utf8')).trim().split('\n').map(Number)
  t.equal(counts.length, 8, 'two bundles for each of four repos')
  t.equal(Math.max(...counts), 1, 'never two hg bundle runs at once')

  const low = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0', 'disk-free-floor-bytes': String(Number.MAX_SAFE_INTEGER) })
  const hg = await hgClient(low)
  t.equal((await hg(['clone', '-U', `${low.url}/demo-hg`, 'f1'])).code, 0)
  await waitFor(async () => low.logs().some((l) => l.msg === 'hg clone bundles: not made, free disk space is under diskFreeFloorBytes'), 10_000, 'the floor respected')
  t.equal(await readFile(path.join(low.reposDir, 'demo-hg', '.hg', 'clonebundles', 'meta.json'), 'utf8').catch(() => 'none'), 'none', 'no bundles')
  t.equal((await hg(['clone', '-U', `${low.url}/demo-hg`, 'f2'])).code, 0, 'clones as before')
})

t.test('a bundle of 1 MiB or more goes out through the relay (sendfile): the real client applies it whole, the access line counts it', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0' })
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'write' })
  const hg = await hgClient(w)
  t.equal((await hg(['clone', `${w.url}/demo-hg`, 'big'])).code, 0)
  const work = path.join(w.dir, 'big')
  await writeFile(path.join(work, 'noise.bin'), randomBytes(3 * 1024 * 1024)) // incompressible: the bundles stay over 1 MiB
  await hg(['add', '-R', work, path.join(work, 'noise.bin')])
  await hg(['commit', '-R', work, '-m', 'noise'])
  const r0 = await hg(['push', '-R', work, `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])
  t.equal(r0.code, 0, r0.stderr + r0.stdout)
  await waitFor(async () => {
    const m = await meta(w).catch(() => undefined)
    return m !== undefined && (await stat(path.join(bundleDir(w), 'stream-v2.hg')).then((s) => s.size, () => 0)) > 3 * 1024 * 1024
  }, 30_000, 'bundles holding the pushed file')
  await generationEnded(w)
  const size = (await stat(path.join(bundleDir(w), 'stream-v2.hg'))).size

  const r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'from-bundle'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, 'finished applying clone bundle')
  t.notMatch(r.stdout, 'added', 'nothing left to pull')
  t.equal((await hg(['verify', '-q', '-R', 'from-bundle'])).code, 0, 'verified')
  t.equal((await hg(['log', '-R', 'from-bundle', '-T', '{node}\n'])).stdout, (await serverLog(w)).stdout, 'the same history as the server')
  await waitFor(() => w.logs().some((l) => l.msg === 'request' && l.route === 'hg_clonebundle'), 5000, 'the access line')
  const line = w.logs().find((l) => l.msg === 'request' && l.route === 'hg_clonebundle')!
  t.equal(line.handed_over, true, 'relayed')
  t.equal(line.bytes_out, size, 'counted: the whole bundle')
  t.equal(line.status, 200)
})
