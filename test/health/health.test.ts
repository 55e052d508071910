import t from 'tap'
import path from 'node:path'
import { chmod, rename, rm, writeFile } from 'node:fs/promises'
import { startWorker, rawRequest, waitFor, gitClient, type Worker, gitWrapper, PASS_THROUGH_GIT } from '../helpers/worker.js'

interface HealthBody { status: string; failing: string[]; checks: Record<string, { status: string; last_run: string | null; duration_ms: number; message: string }> }
const health = async (w: Worker, which: string) => {
  const res = await rawRequest(w.port, 'GET', `/health/${which}`)
  return { status: res.status, body: JSON.parse(res.body.toString()) as HealthBody }
}
const until = (w: Worker, which: string, status: number, what: string) =>
  waitFor(async () => (await health(w, which)).status === status, 10_000, what)

t.test('all green: every check reported with status, last run, duration and message', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '2' })
  t.equal((await rawRequest(w.port, 'GET', '/health/live')).body.toString(), 'ok\n')
  for (const which of ['git', 'hg', 'ready']) {
    const { status, body } = await health(w, which)
    t.equal(status, 200, which)
    t.equal(body.status, 'ok')
    t.same(body.failing, [])
    for (const c of Object.values(body.checks)) {
      t.equal(c.status, 'ok')
      t.match(c.last_run, /^\d{4}-\d\d-\d\dT/)
      t.type(c.duration_ms, 'number')
    }
  }
  t.same(Object.keys((await health(w, 'git')).body.checks).sort(), ['disk', 'draining', 'git_binary', 'git_canary', 'repos_dir', 'saturation'])
  t.match((await health(w, 'hg')).body.checks.hg_children!.message, '2 of 2 hg serve children ready')
  // answered from cache: rapid probes see the same run, no check runs per probe
  const a = await health(w, 'git')
  const b = await health(w, 'git')
  t.equal(a.body.checks.git_canary!.last_run, b.body.checks.git_canary!.last_run, 'a probe does not run the checks')
})

t.test('each check fails for real, turns the endpoint 503 naming it, and recovers', async (t) => {
  const wrapper = await gitWrapper(t)
  const w = await startWorker(t, { 'hg-processes': '2', 'health-interval-ms': '100', 'git-bin': wrapper })
  await until(w, 'git', 200, 'green at first')

  await rename(w.reposDir, `${w.reposDir}.away`)
  await until(w, 'git', 503, 'repos dir gone')
  t.match((await health(w, 'git')).body.failing, ['repos_dir'])
  t.equal((await health(w, 'hg')).status, 503, 'hg needs the repos dir too')
  await rename(`${w.reposDir}.away`, w.reposDir)
  await until(w, 'git', 200, 'repos dir back')

  await rm(wrapper)
  await until(w, 'git', 503, 'git missing')
  // both checks that run git fail (each after its own two failed runs)
  await waitFor(async () => {
    const { failing } = (await health(w, 'git')).body
    return failing.includes('git_binary') && failing.includes('git_canary')
  }, 10_000, 'git_binary and git_canary to fail')
  t.equal((await health(w, 'hg')).status, 200, 'hg does not depend on git')
  await writeFile(wrapper, PASS_THROUGH_GIT)
  await chmod(wrapper, 0o755)
  await until(w, 'git', 200, 'git back')

  const canaryHead = path.join(w.config.dataDir, 'canary.git', 'HEAD')
  await rm(canaryHead)
  await until(w, 'git', 503, 'canary corrupted')
  t.same((await health(w, 'git')).body.failing, ['git_canary'])
  await writeFile(canaryHead, 'ref: refs/heads/main\n')
  await until(w, 'git', 200, 'canary repaired')

  for (const c of w.app.hgPool!.children) process.kill(c.pid!, 'SIGKILL')
  await until(w, 'hg', 503, 'all hg children dead')
  t.match((await health(w, 'hg')).body.failing, ['hg_children'])
  t.equal((await health(w, 'git')).status, 200, 'git still healthy')
  await until(w, 'hg', 200, 'hg children back')

  w.app.health.draining = true
  t.same((await health(w, 'ready')).body.failing, ['draining'])
  w.app.health.draining = false
  t.equal((await health(w, 'ready')).status, 200)
})

t.test('a disk floor above the free space, and hg disabled', async (t) => {
  const w = await startWorker(t, { 'disk-free-floor-bytes': String(Number.MAX_SAFE_INTEGER) })
  const git = await health(w, 'git')
  t.equal(git.status, 503)
  t.same(git.body.failing, ['disk'])
  t.match(git.body.checks.disk!.message, /bytes free, floor/)
  const w2 = await startWorker(t, { 'hg-processes': '0' })
  t.equal((await health(w2, 'git')).status, 200)
  const hg = await health(w2, 'hg')
  t.equal(hg.status, 503)
  t.match(hg.body.checks.hg_children!.message, 'hg is disabled')
})

t.test('1,000 health probes during clones change nothing for the clones', async (t) => {
  const w = await startWorker(t)
  const git = gitClient(w.dir)
  const probes = (async () => {
    for (let i = 0; i < 1000; i++) if ((await rawRequest(w.port, 'GET', '/health/git')).status !== 200) return false
    return true
  })()
  const clones = await Promise.all(Array.from({ length: 4 }, (_, i) => git(['clone', '-q', `${w.url}/demo.git`, `p${i}`])))
  t.ok(await probes, '1,000 probes all green')
  t.same(clones.map((c) => c.code), [0, 0, 0, 0])
})
