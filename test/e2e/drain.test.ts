import t from 'tap'
import type * as Tap from 'tap'
import net from 'node:net'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { appendFile, rm, writeFile } from 'node:fs/promises'
import type { ChildProcess } from 'node:child_process'
import { spawnWorker, fixtureDir, gitClient, gateWrapper, metric, rawRequest, waitFor, run, clientEnv, processesMatching, FIXTURE_REPOS, TEST_SCRYPT } from '../helpers/worker.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { hashPassword } from '../../src/auth/password.js'

/** A fixture dir with public repos and alice, who may push to demo.git and demo-hg. */
async function setUp(t: Tap.Test) {
  const fx = await fixtureDir(t)
  const store = openSqliteStore(path.join(fx.dataDir, 'auth.sqlite'))
  for (const [name, kind] of FIXTURE_REPOS) await store.setRepo(name, kind, true)
  await store.addUser('alice', await hashPassword('alice-pw', TEST_SCRYPT))
  await store.setGrant('alice', 'demo.git', 'write')
  await store.setGrant('alice', 'demo-hg', 'write')
  store.close()
  return fx
}

const portOf = (url: string) => Number(new URL(url).port)
const withAlice = (url: string) => url.replace('http://', 'http://alice:alice-pw@')
const exited = (proc: ChildProcess) => new Promise<number | null>((resolve) => {
  if (proc.exitCode !== null) resolve(proc.exitCode)
  else proc.once('exit', (code) => resolve(code))
})
function agentAnswer(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('git\n'))
    let text = ''
    s.on('data', (c: Buffer) => { text += c.toString() })
    s.on('end', () => resolve(text))
    s.on('error', reject)
  })
}

/** A working clone of demo.git as alice with one new commit of `mib` MiB of random bytes, not pushed yet. */
async function pendingPush(t: Tap.Test, git: ReturnType<typeof gitClient>, dir: string, url: string, mib: number): Promise<string> {
  const work = path.join(dir, 'work')
  t.equal((await git(['clone', '-q', `${withAlice(url)}/demo.git`, work])).code, 0)
  await writeFile(path.join(work, 'blob.bin'), randomBytes(mib * 1024 * 1024))
  t.equal((await git(['add', 'blob.bin'], work)).code, 0)
  t.equal((await git(['commit', '-qm', 'big'], work)).code, 0)
  return work
}

t.test('SIGTERM: draining shows at once, the grace still serves, in-flight clone and push finish, hg stops, exit 0', async (t) => {
  const { dir, reposDir, dataDir } = await setUp(t)
  const gate = await gateWrapper(t)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--git-bin', gate.bin, '--agent-port', '0', '--health-port', '0', '--hg-processes', '1', '--drain-grace-ms', '6000'])
  const port = portOf(worker.url)
  const agentPort = Number(/agent-check on 127\.0\.0\.1:(\d+)/.exec(worker.output())![1])
  const healthPort = Number(/health checks on http:\/\/127\.0\.0\.1:(\d+)\//.exec(worker.output())![1])
  const git = gitClient(dir)
  const hgrc = path.join(dir, 'hgrc')
  await writeFile(hgrc, `[ui]\nusername = Test <t@example.invalid>\n[auth]\nw.prefix = ${worker.url}\nw.username = alice\nw.password = alice-pw\n`)
  const hgEnv = clientEnv(path.join(dir, 'client-home'), { HGRCPATH: hgrc })
  const hg = (args: string[], cwd = dir) => run('hg', args, { cwd, env: hgEnv })
  const work = await pendingPush(t, git, dir, worker.url, 8)
  const hgWork = path.join(dir, 'hgwork')
  t.equal((await hg(['clone', '-q', `${worker.url}/demo-hg`, hgWork])).code, 0)
  await writeFile(path.join(hgWork, 'during-drain.txt'), 'x\n')
  t.equal((await hg(['commit', '-Am', 'pushed during the drain'], hgWork)).code, 0)
  t.equal(await agentAnswer(agentPort), 'up ready 100% maxconn:80\n')

  await gate.close({ pushes: true })
  const push = git(['push', '-q', 'origin', 'HEAD:main'], work)
  const clone = git(['-c', 'protocol.version=0', 'clone', '-q', `${worker.url}/demo.git`, 'inflight'])
  await waitFor(async () => metric((await rawRequest(port, 'GET', '/metrics')).body.toString(), 'vcs_heavy_in_flight') === 2, 15_000, 'the push and the clone to be in flight')

  worker.proc.kill('SIGTERM')
  await waitFor(async () => (await rawRequest(port, 'GET', '/health/git')).status === 503, 2_000, 'health to report draining')
  t.same(JSON.parse((await rawRequest(port, 'GET', '/health/ready')).body.toString()).failing, ['draining'])
  t.equal(await agentAnswer(agentPort), 'drain\n', 'the agent tells HAProxy to drain')
  const onHealthPort = await rawRequest(healthPort, 'GET', '/health/git')
  t.equal(onHealthPort.status, 503, 'the health port too')
  t.same(JSON.parse(onHealthPort.body.toString()).failing, ['draining'])

  // the grace period: what the balancer still sends is served, git and hg, pushes too
  const late = await git(['clone', '-q', `${worker.url}/team/project.git`, 'late'])
  t.equal(late.code, 0, `a clone during the grace is served: ${late.stderr}`)
  const hgPush = await hg(['push', '-q'], hgWork)
  t.equal(hgPush.code, 0, `an hg push during the grace is served: ${hgPush.stderr}`)

  // after the grace: new sessions refused; the push and the clone in flight are still running
  await waitFor(async () => (await rawRequest(port, 'GET', '/demo.git/info/refs?service=git-upload-pack')).status === 503, 15_000, 'new sessions to be refused after the grace')
  const refused = await git(['clone', '-q', `${worker.url}/demo.git`, 'refused'])
  t.not(refused.code, 0)
  t.match(refused.stderr, /remote: server is restarting; try again in a few seconds/, 'git shows why')
  const hgRefused = await hg(['clone', '-q', `${worker.url}/demo-hg`, 'hg-refused'])
  t.match(hgRefused.stderr, /503: server is restarting/, 'hg shows why')
  t.equal(worker.proc.exitCode, null, 'still running: work in flight')

  await gate.open()
  const pushed = await push
  t.equal(pushed.code, 0, `the push in flight finished: ${pushed.stderr}`)
  t.equal((await clone).code, 0, 'the clone in flight finished')
  t.equal(await exited(worker.proc), 0, 'exit 0')
  const server = path.join(reposDir, 'demo.git')
  t.equal((await git(['rev-parse', 'main'], server)).stdout, (await git(['rev-parse', 'HEAD'], work)).stdout, 'the pushed commit is on main')
  t.equal((await git(['fsck', '--no-progress'], server)).code, 0, 'git fsck clean')
  t.equal((await run('hg', ['-R', path.join(reposDir, 'demo-hg'), 'log', '-r', 'tip', '-T', '{desc}'], { env: hgEnv })).stdout, 'pushed during the drain')
  t.equal((await run('hg', ['-R', path.join(reposDir, 'demo-hg'), 'verify', '-q'], { env: hgEnv })).code, 0, 'hg verify clean')
  t.match(worker.output(), /"msg":"drained"/)
  t.same(await processesMatching(reposDir), [], 'no git or hg serve process left')
})

t.test('a second SIGTERM forces the exit (1); the push it cut is refused whole', async (t) => {
  const { dir, reposDir, dataDir } = await setUp(t)
  const gate = await gateWrapper(t)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--git-bin', gate.bin, '--drain-grace-ms', '60000'])
  const git = gitClient(dir)
  const work = await pendingPush(t, git, dir, worker.url, 2)
  const server = path.join(reposDir, 'demo.git')
  const before = (await git(['rev-parse', 'main'], server)).stdout
  await gate.close({ pushes: true })
  const push = git(['push', '-q', 'origin', 'HEAD:main'], work)
  await waitFor(async () => metric((await rawRequest(portOf(worker.url), 'GET', '/metrics')).body.toString(), 'vcs_heavy_in_flight') === 1, 15_000, 'the push to be in flight')
  worker.proc.kill('SIGTERM')
  await waitFor(async () => (await rawRequest(portOf(worker.url), 'GET', '/health/git')).status === 503, 2_000, 'draining')
  worker.proc.kill('SIGTERM')
  t.equal(await exited(worker.proc), 1, 'forced: exit 1')
  t.not((await push).code, 0, 'the client is told its push failed')
  await gate.open()
  await waitFor(async () => (await processesMatching(reposDir)).length === 0, 15_000, 'the orphaned receive-pack to end')
  t.equal((await git(['rev-parse', 'main'], server)).stdout, before, 'no ref moved')
  t.equal((await git(['fsck', '--no-progress'], server)).code, 0, 'git fsck clean')
})

t.test('drainTimeoutMs bounds the drain: a clone that outlasts it is cut, exit 1', async (t) => {
  const { dir, reposDir, dataDir } = await setUp(t)
  const gate = await gateWrapper(t)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--git-bin', gate.bin, '--drain-grace-ms', '200', '--drain-timeout-ms', '1500'])
  const git = gitClient(dir)
  await gate.close()
  const clone = git(['-c', 'protocol.version=0', 'clone', '-q', `${worker.url}/demo.git`, 'held'])
  await waitFor(async () => metric((await rawRequest(portOf(worker.url), 'GET', '/metrics')).body.toString(), 'vcs_heavy_in_flight') === 1, 15_000, 'the clone to be in flight')
  const t0 = Date.now()
  worker.proc.kill('SIGTERM')
  t.equal(await exited(worker.proc), 1, 'exit 1 when the bound cut the drain short')
  t.ok(Date.now() - t0 >= 1400, 'not before the bound')
  t.match(worker.output(), /drain timed out/)
  t.not((await clone).code, 0)
  await gate.open()
})

t.test('SIGTERM with an hg push in flight: the push finishes and lands whole, hg serve stops, exit 0', async (t) => {
  const { dir, reposDir, dataDir } = await setUp(t)
  const gate = path.join(dir, 'hg-gate')
  // the server repo's own hook holds the push inside its transaction until the test opens the gate
  await appendFile(path.join(reposDir, 'demo-hg', '.hg', 'hgrc'), `[hooks]\npretxnchangegroup.hold = while [ -e ${gate} ]; do sleep 0.05; done\n`)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--hg-processes', '1', '--drain-grace-ms', '300'])
  const port = portOf(worker.url)
  const hgrc = path.join(dir, 'hgrc')
  await writeFile(hgrc, `[ui]\nusername = Test <t@example.invalid>\n[auth]\nw.prefix = ${worker.url}\nw.username = alice\nw.password = alice-pw\n`)
  const hgEnv = clientEnv(path.join(dir, 'client-home'), { HGRCPATH: hgrc })
  const hg = (args: string[], cwd = dir) => run('hg', args, { cwd, env: hgEnv })
  const work = path.join(dir, 'hgwork')
  t.equal((await hg(['clone', '-q', `${worker.url}/demo-hg`, work])).code, 0)
  await writeFile(path.join(work, 'blob.bin'), randomBytes(4 * 1024 * 1024))
  t.equal((await hg(['commit', '-Am', 'in flight during the drain'], work)).code, 0)

  await writeFile(gate, '')
  const push = hg(['push', '-q'], work)
  await waitFor(async () => metric((await rawRequest(port, 'GET', '/metrics')).body.toString(), 'vcs_heavy_in_flight') === 1, 15_000, 'the unbundle to be in flight')
  worker.proc.kill('SIGTERM')
  await waitFor(async () => (await rawRequest(port, 'GET', '/health/hg')).status === 503, 2_000, 'draining')
  await waitFor(() => worker.output().includes('drain grace over'), 15_000, 'the grace period to end')
  t.equal(worker.proc.exitCode, null, 'past the grace, the push still held in its transaction: the worker waits for it')
  await rm(gate)
  const pushed = await push
  t.equal(pushed.code, 0, `the hg push in flight finished: ${pushed.stderr}`)
  t.equal(await exited(worker.proc), 0, 'exit 0')
  const server = (args: string[]) => run('hg', ['-R', path.join(reposDir, 'demo-hg'), ...args], { env: clientEnv(dir, { HGRCPATH: '' }) })
  t.equal((await server(['log', '-r', 'tip', '-T', '{desc}'])).stdout, 'in flight during the drain', 'the push landed')
  t.equal((await server(['verify', '-q'])).code, 0, 'hg verify clean')
  t.same(await processesMatching(dataDir), [], 'no hg serve child left')
})
