import t from 'tap'
import path from 'node:path'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { clientEnv, fixtureDir, gitClient, metric, processesMatching, rawRequest, run, CLI, waitFor } from '../helpers/worker.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { startTestPool, workerMetrics, type TestPool } from '../helpers/pool.js'

const cli = (args: string[]) => run(process.execPath, [CLI, ...args])
const portOf = (p: TestPool) => Number(new URL(p.url).port)
const backendTotal = async (p: TestPool, backend: string) =>
  (await p.pool.stats()).find((r) => r.pxname === backend && r.svname === 'BACKEND')?.stot ?? 0
const workerTotal = async (p: TestPool, backend: string) => {
  let sum = 0
  for (let i = 0; i < p.spec.workers.length; i++) sum += metric(await workerMetrics(p, i), 'vcs_requests_total', { backend })
  return sum
}

/** Commits a file in `work` and pushes it to a new branch; the commit id, or undefined when the push failed. */
async function pushBranch(git: ReturnType<typeof gitClient>, work: string, name: string): Promise<string | undefined> {
  await writeFile(path.join(work, `${name}.txt`), `${name}\n`)
  await git(['add', `${name}.txt`], work)
  await git(['commit', '-qm', name], work)
  const sha = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()
  const r = await git(['push', '-q', 'origin', `HEAD:refs/heads/${name}`], work)
  return r.code === 0 ? sha : undefined
}

t.test('haproxy-config: a valid HAProxy config for the default pool and for a pool file; bad pool files named', async (t) => {
  const dir = t.testdir()
  const def = await cli(['haproxy-config'])
  t.equal(def.code, 0, def.stderr)
  await writeFile(path.join(dir, 'default.cfg'), def.stdout)
  const check = await run('haproxy', ['-c', '-f', path.join(dir, 'default.cfg')])
  t.equal(check.code, 0, check.stdout + check.stderr)
  t.match(def.stdout, /backend servers-git[\s\S]*server w1 127\.0\.0\.1:8081 weight 100 check port 9181 inter[^\n]*agent-port 9081[^\n]*agent-send "git\\n"/)
  t.match(def.stdout, /option httpchk GET \/health\/hg/)
  t.notMatch(def.stdout, /user-agent/i, 'never routed by User-Agent')
  t.equal((await cli(['haproxy-config', '--workers', '3'])).stdout.match(/^ {2}server w\d/gm)!.length, 6, 'three workers in each of the two backends')

  await writeFile(path.join(dir, 'pool.json'), JSON.stringify({ balance: 'repo-hash', workers: [{ name: 'a', address: '10.0.0.5:8080', agentPort: 9000 }] }))
  const custom = await cli(['haproxy-config', '--pool', path.join(dir, 'pool.json')])
  t.equal(custom.code, 0, custom.stderr)
  t.match(custom.stdout, /balance hash var\(txn\.repo\)\n {2}hash-type consistent/)
  t.match(custom.stdout, /server a 10\.0\.0\.5:8080 weight 100 check/)
  await writeFile(path.join(dir, 'custom.cfg'), custom.stdout)
  t.equal((await run('haproxy', ['-c', '-f', path.join(dir, 'custom.cfg')])).code, 0)

  await writeFile(path.join(dir, 'bad.json'), JSON.stringify({ balance: 'random', frontend: 'nowhere', workers: [{ name: 'a b', address: 'x', agentPort: 0, healthPort: 70000 }], extra: 1 }))
  const bad = await cli(['haproxy-config', '--pool', path.join(dir, 'bad.json')])
  t.equal(bad.code, 2)
  for (const key of ['extra: unknown pool key', 'frontend: expected host:port', 'balance: must be', 'workers[0].name', 'workers[0].address', 'workers[0].agentPort', 'workers[0].healthPort']) t.match(bad.stderr, key)
  t.equal(bad.stdout, '', 'nothing printed')
  await writeFile(path.join(dir, 'broken.json'), '{ not json')
  t.match((await cli(['haproxy-config', '--pool', path.join(dir, 'broken.json')])).stderr, /^vcs-worker: bad configuration: pool file .*broken\.json: /)
  t.equal((await cli(['haproxy-config', '--pool', path.join(dir, 'missing.json')])).code, 2)
})

t.test('through HAProxy: git and hg reach the workers, web pages reach the web stand-in and never a worker', async (t) => {
  const p = await startTestPool(t, { workerArgs: ['--hg-clone-bundle-delay-ms', '0'] })
  const git = gitClient(p.dir)
  t.equal((await git(['clone', '-q', `${p.alice}/demo.git`, 'g'])).code, 0)
  t.ok(await pushBranch(git, path.join(p.dir, 'g'), 'through-haproxy'), 'git push through HAProxy')
  t.equal((await git(['-c', 'protocol.version=0', 'clone', '-q', `${p.url}/team/project.git`, 'g0'])).code, 0, 'protocol v0 too')
  const hgWork = path.join(p.dir, 'h')
  t.equal((await p.hg(['clone', '-q', `${p.url}/demo-hg`, hgWork])).code, 0)
  await writeFile(path.join(hgWork, 'n.txt'), 'n\n')
  t.equal((await p.hg(['commit', '-Am', 'through haproxy'], hgWork)).code, 0)
  const hgPush = await p.hg(['push', '-q'], hgWork)
  t.equal(hgPush.code, 0, hgPush.stderr)
  // the clone bundles that push had made: a clone fetches one through HAProxy, from any worker
  await waitFor(async () => (await rawRequest(portOf(p), 'GET', '/demo-hg?cmd=clonebundles')).body.toString().includes('stream-v2.hg'), 20_000, 'clone bundles')
  const viaBundle = await p.hg(['clone', '-U', `${p.url}/demo-hg`, path.join(p.dir, 'hb')])
  t.equal(viaBundle.code, 0, viaBundle.stderr)
  t.match(viaBundle.stdout, `applying clone bundle from ${p.url}/demo-hg/.hg/clonebundles/stream-v2.hg`)
  t.match(viaBundle.stdout, 'finished applying clone bundle')
  t.equal((await p.hg(['log', '-R', path.join(p.dir, 'hb'), '-r', 'tip', '-T', '{desc}'])).stdout, 'through haproxy', 'with the pushed changeset')

  // a big hg discovery: 8 X-HgArg headers of 16 KiB pass HAProxy's buffers
  const nodes = Array.from({ length: 3000 }, (_, i) => i.toString(16).padStart(40, 'a')).join('+')
  const args = `cmds=heads+%3Bknown+nodes%3D${nodes}`
  const headers: Record<string, string> = {}
  for (let i = 0; i * 16000 < args.length; i++) headers[`x-hgarg-${i + 1}`] = args.slice(i * 16000, (i + 1) * 16000)
  t.ok(Object.keys(headers).length >= 7)
  const big = await rawRequest(portOf(p), 'GET', '/demo-hg?cmd=batch', headers)
  t.equal(big.status, 200, 'not 400 from HAProxy')

  const hitsBefore = p.pool.webHits
  for (const page of ['/', '/explore/repos', '/demo.git', '/demo-hg', '/demo-hg/file/tip', '/login?next=/', '/demo.git/tree/main']) {
    const r = await rawRequest(portOf(p), 'GET', page, { 'user-agent': 'git/2.39.5' })
    t.equal(r.status, 200, page)
    t.match(r.body.toString(), 'the web application (stand-in)', `${page} served by the web application`)
  }
  t.ok(p.pool.webHits - hitsBefore >= 7, 'the stand-in counted them (and the checks HAProxy sends it)')
  // the workers' own URLs never reach a worker from the public frontend, whatever the request carries
  const own: [string, Record<string, string>][] = [
    ['/metrics?cmd=capabilities', {}], ['/metrics', { 'git-protocol': 'version=2' }], ['/metrics', { 'x-hgproto-1': '0.1 0.2' }],
    ['/metrics', { 'x-hgarg-1': 'cmds=heads' }], ['/metrics', { 'content-type': 'application/x-git-upload-pack-request' }],
    ['/health/git', { 'content-type': 'application/x-git-upload-pack-request' }], ['/health/ready?service=git-upload-pack', {}],
    ['/health/hg?cmd=heads', {}], ['//metrics?cmd=heads', {}], ['/%6detrics', { 'git-protocol': 'version=2' }],
    ['/metrics/', { 'git-protocol': 'version=2' }], ['/health/live', { 'content-type': 'application/mercurial-0.1' }],
    ['/%68ealth/ready', { 'x-hgproto-1': '0.1' }],
  ]
  for (const [url, headers] of own) {
    const r = await rawRequest(portOf(p), 'GET', url, headers)
    t.match(r.body.toString(), 'the web application (stand-in)', `${url} ${JSON.stringify(headers)}: the web application's, not a worker's`)
    t.notMatch(r.body.toString(), /vcs_|"checks"/, 'no metrics, no health report')
  }
  // no web page reached a worker: nothing but git, hg (and HAProxy's health checks) on the workers
  for (let i = 0; i < 2; i++) {
    const text = await workerMetrics(p, i)
    t.equal(metric(text, 'vcs_requests_total', { backend: 'other' }), 0, `w${i + 1} saw no web request`)
    t.equal(metric(text, 'vcs_requests_total', { backend: 'hg', service: 'hgweb' }), 0, `w${i + 1} served no hgweb page`)
  }
  t.ok(await workerTotal(p, 'git') > 0 && await workerTotal(p, 'hg') > 0, 'the workers served git and hg')
  // the per-backend sessions HAProxy counted agree with the workers' own metrics
  t.equal(await backendTotal(p, 'servers-git'), await workerTotal(p, 'git'), 'servers-git requests = workers\' git requests')
  t.equal(await backendTotal(p, 'servers-hg'), await workerTotal(p, 'hg'), 'servers-hg requests = workers\' hg requests')
  // pool:stats prints the same, per second and in total
  const specFile = path.join(p.dir, 'pool.json')
  await writeFile(specFile, JSON.stringify(p.spec))
  const stats = await run(process.execPath, [path.join(path.dirname(CLI), '..', '..', 'tools', 'pool', 'stats.js'), '--pool', specFile, '--seconds', '2'])
  t.equal(stats.code, 0, stats.stderr)
  t.match(stats.stdout, /servers-git sess\/s {2}servers-hg sess\/s {2}servers-web sess\/s/)
  const gitTotal = await backendTotal(p, 'servers-git')
  t.match(stats.stdout, `totals since HAProxy started: servers-git ${gitTotal}, servers-hg ${await backendTotal(p, 'servers-hg')}, servers-web`)
  t.match(stats.stdout, `workers' metrics (vcs_requests_total, since each worker started): git ${gitTotal}, hg`)
})

t.test('git lfs through HAProxy with two workers: pushed through the pool, cloned back through it byte for byte', async (t) => {
  const p = await startTestPool(t)
  const home = path.join(p.dir, 'lfs-home')
  await mkdir(home, { recursive: true })
  const env = clientEnv(home)
  const git = (args: string[], cwd = p.dir) => run('git', args, { cwd, env })
  t.equal((await git(['lfs', 'install', '--skip-repo'])).code, 0)
  const work = path.join(p.dir, 'lfs-work')
  t.equal((await git(['clone', '-q', `${p.alice}/demo.git`, work])).code, 0)
  await git(['lfs', 'track', '*.bin'], work)
  const data = randomBytes(3 * 1024 * 1024)
  await writeFile(path.join(work, 'asset.bin'), data)
  await git(['add', '.gitattributes', 'asset.bin'], work)
  await git(['commit', '-q', '-m', 'an asset'], work)
  const before = await backendTotal(p, 'servers-git')
  const push = await git(['push', 'origin', 'HEAD:refs/heads/lfs'], work)
  t.equal(push.code, 0, push.stderr)
  const clone = await git(['clone', '-q', '-b', 'lfs', `${p.url}/demo.git`, 'lfs-clone'])
  t.equal(clone.code, 0, clone.stderr)
  t.ok((await readFile(path.join(p.dir, 'lfs-clone', 'asset.bin'))).equals(data), 'the object came back whole, not its pointer')
  const lfsServed = async (i: number) => {
    const text = await workerMetrics(p, i)
    return ['lfs-batch', 'lfs-download', 'lfs-upload', 'lfs-verify'].reduce((sum, service) => sum + metric(text, 'vcs_requests_total', { backend: 'git', service }), 0)
  }
  const served = (await lfsServed(0)) + (await lfsServed(1))
  t.ok(served >= 4, `the workers answered the LFS requests (${served}: batches, the upload, the verify, the download)`)
  t.ok((await backendTotal(p, 'servers-git')) - before >= served, 'all of them through servers-git')

  // locks through the pool: taken, listed and removed, whichever worker answers each request
  let r = await git(['lfs', 'lock', 'asset.bin'], work)
  t.equal(r.code, 0, r.stderr)
  r = await git(['lfs', 'locks'], work)
  t.match(r.stdout, /asset\.bin\s+alice\s+ID:\d+/, 'listed through the pool')
  r = await git(['lfs', 'unlock', 'asset.bin'], work)
  t.equal(r.code, 0, r.stderr)
  let locks = 0
  for (const i of [0, 1]) locks += metric(await workerMetrics(p, i), 'vcs_requests_total', { backend: 'git', service: 'lfs-locks' })
  t.ok(locks >= 3, `the workers answered the locks requests (${locks}), routed by the lfs_path ACL`)
})

t.test('the web application stopped: clones and pushes keep working', async (t) => {
  const p = await startTestPool(t)
  await p.pool.stopWeb()
  await waitFor(async () => (await p.pool.status('servers-web', 'web')).startsWith('DOWN'), 10_000, 'HAProxy to see the web app down')
  t.equal((await rawRequest(portOf(p), 'GET', '/')).status, 503, 'web pages fail')
  const git = gitClient(p.dir)
  t.equal((await git(['clone', '-q', `${p.alice}/demo.git`, 'g'])).code, 0)
  t.ok(await pushBranch(git, path.join(p.dir, 'g'), 'web-down'))
  t.equal((await p.hg(['clone', '-q', `${p.url}/demo-hg`, path.join(p.dir, 'h')])).code, 0)
})

t.test('npm run pool: starts HAProxy, workers and the web stand-in, prints the URLs; Ctrl-C leaves no process behind', async (t) => {
  const { dir } = await fixtureDir(t)
  const store = openSqliteStore(path.join(dir, 'auth.sqlite'))
  await store.setRepo('demo.git', 'git', true)
  store.close()
  const proc = spawn(process.execPath, [path.join(path.dirname(CLI), '..', '..', 'tools', 'pool', 'main.js'), '--workers', '1', '--data', dir, '--ports', 'auto'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout.on('data', (c) => { out += c })
  proc.stderr.on('data', (c) => { out += c })
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  await waitFor(() => out.includes('Ctrl-C stops everything.') || proc.exitCode !== null, 60_000, 'the pool to start')
  t.match(out, /pool of 1 workers behind HAProxy/)
  const url = /git clone (http:\/\/127\.0\.0\.1:\d+)\/demo\.git/.exec(out)![1]!
  t.match(out, /HAProxy stats: {2}http:\/\/127\.0\.0\.1:\d+\//)
  t.match(out, /worker w1: http:\/\/127\.0\.0\.1:\d+\/ {2}agent \d+/)
  t.equal((await gitClient(dir)(['clone', '-q', `${url}/demo.git`, 'c'])).code, 0, 'a clone through the pool')
  t.ok((await processesMatching(dir)).length >= 2, 'HAProxy and the worker run')
  proc.kill('SIGINT')
  await new Promise((r) => proc.once('exit', r))
  t.equal(proc.exitCode, 0)
  await waitFor(async () => (await processesMatching(dir)).length === 0, 10_000, 'every process of the pool to be gone')
})
