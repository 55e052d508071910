import t from 'tap'
import type * as Tap from 'tap'
import path from 'node:path'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { gitClient, gitWrapper, metric, processesMatching, waitFor } from '../helpers/worker.js'
import { startTestPool, workerMetrics, type TestPool } from '../helpers/pool.js'

type Git = ReturnType<typeof gitClient>
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Clone loops and a push loop through the pool until `stop()` (each bounded to 200 rounds).
 * A failed clone is retried once when `retry`; pushes go to a new branch each.
 */
function traffic(p: TestPool, git: Git, opts: { clones: number; retry: boolean }) {
  let stopped = false
  const clones: { code: number | null; stderr: string; retried: boolean }[] = []
  const pushes: { branch: string; sha: string; ok: boolean; stderr: string }[] = []
  const cloneLoop = async (k: number) => {
    for (let i = 0; !stopped && i < 200; i++) {
      const dir = path.join(p.dir, `clone-${k}-${i}`)
      let r = await git(['clone', '-q', `${p.url}/demo.git`, dir])
      let retried = false
      if (r.code !== 0 && opts.retry) {
        retried = true
        await rm(dir, { recursive: true, force: true })
        await sleep(1000) // as a user or a CI job retries: a moment later
        r = await git(['clone', '-q', `${p.url}/demo.git`, dir])
      }
      clones.push({ code: r.code, stderr: r.stderr, retried })
      await rm(dir, { recursive: true, force: true })
    }
  }
  const work = path.join(p.dir, 'pusher')
  const pushLoop = async () => {
    const c = await git(['clone', '-q', `${p.alice}/demo.git`, work])
    if (c.code !== 0) throw new Error(`pusher clone failed: ${c.stderr}`)
    for (let i = 0; !stopped && i < 200; i++) {
      const branch = `push-${i}`
      await writeFile(path.join(work, `${branch}.txt`), `${branch}\n`)
      await git(['add', `${branch}.txt`], work)
      await git(['commit', '-qm', branch], work)
      const sha = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()
      const r = await git(['push', '-q', 'origin', `HEAD:refs/heads/${branch}`], work)
      pushes.push({ branch, sha, ok: r.code === 0, stderr: r.stderr })
    }
  }
  const all = Promise.all([...Array.from({ length: opts.clones }, (_, k) => cloneLoop(k)), pushLoop()])
  return {
    clones,
    pushes,
    async stop() {
      stopped = true
      await all
    },
  }
}

/** Every acknowledged push is in the repo, at its branch, and the repo is sound. */
async function checkPushes(t: Tap.Test, git: Git, p: TestPool, pushes: { branch: string; sha: string; ok: boolean }[]) {
  const server = path.join(p.reposDir, 'demo.git')
  for (const push of pushes.filter((x) => x.ok)) {
    t.equal((await git(['rev-parse', `refs/heads/${push.branch}`], server)).stdout.trim(), push.sha, `acknowledged push ${push.branch} is present`)
  }
  const fsck = await git(['fsck', '--no-progress', '--strict'], server)
  t.equal(fsck.code, 0, `git fsck clean: ${fsck.stderr}`)
}

const gitRequests = async (p: TestPool, i: number) => metric(await workerMetrics(p, i), 'vcs_requests_total', { backend: 'git' })

t.test('kill -9 of a worker during clones and pushes: marked down by its checks, retried clients served, no push lost or half-applied', async (t) => {
  const p = await startTestPool(t)
  const git = gitClient(p.dir)
  const load = traffic(p, git, { clones: 2, retry: true })
  await waitFor(() => load.clones.length >= 2 && load.pushes.length >= 1, 60_000, 'traffic to flow')
  await p.pool.stopWorker(0, 'SIGKILL')
  await waitFor(async () => (await p.pool.status('servers-git', 'w1')).startsWith('DOWN'), 30_000, 'HAProxy to mark w1 down')
  t.match(await p.pool.status('servers-git', 'w1'), /^DOWN/, 'w1 marked down by its checks (inter 500 ms x fall 2)')
  await waitFor(async () => (await p.pool.status('servers-hg', 'w1')).startsWith('DOWN'), 10_000, 'w1 down in servers-hg too')
  const w2Before = await gitRequests(p, 1)
  const seen = load.clones.length + load.pushes.length
  await waitFor(() => load.clones.length + load.pushes.length >= seen + 6, 60_000, 'more traffic after the kill')
  await load.stop()
  t.ok(await gitRequests(p, 1) > w2Before, 'w2 serves what w1 no longer does')
  const failed = load.clones.filter((c) => c.code !== 0)
  const log503 = failed.length ? (await readFile(path.join(p.dir, 'run', 'haproxy.log'), 'utf8')).split('\n').filter((l) => / 50\d /.test(l)).join('\n') : ''
  t.same(failed.map((c) => c.stderr), [], `every clone succeeded, at worst on its retry ${log503}`)
  t.ok(load.pushes.filter((x) => x.ok).length >= 2, 'pushes were acknowledged')
  await checkPushes(t, git, p, load.pushes)
  t.same(await processesMatching(p.reposDir).then((ps) => ps.filter((x) => x.cmd.includes('upload-pack') || x.cmd.includes('receive-pack'))), [], 'no git process of the dead worker left')
})

t.test('a worker whose hg alone is unhealthy leaves servers-hg and keeps serving git', async (t) => {
  const hgWrapper = await gitWrapper(t, '#!/bin/sh\n[ -e @DIR@/broken ] && exit 1\nexec hg "$@"\n')
  const broken = path.join(path.dirname(hgWrapper), 'broken')
  const p = await startTestPool(t, { workerArgs: ['--health-interval-ms', '250'], argsOf: (i) => (i === 0 ? ['--hg-bin', hgWrapper] : []) })
  const w1 = p.pool.workers[0]!.pid!
  await writeFile(broken, '')
  const children = (await processesMatching(`web-${w1}.conf`)).filter((x) => x.cmd.includes('serve'))
  t.equal(children.length, 1, 'w1 has its hg serve child')
  process.kill(children[0]!.pid, 'SIGKILL') // it will not come back: hg is broken on w1
  await waitFor(async () => (await p.pool.status('servers-hg', 'w1')).startsWith('DOWN'), 15_000, 'w1 to leave servers-hg')
  t.match(await p.pool.status('servers-git', 'w1'), /^UP/, 'w1 stays in servers-git')
  t.match(await p.pool.status('servers-hg', 'w2'), /^UP/)

  const git = gitClient(p.dir)
  const before = await gitRequests(p, 0)
  const hgBefore = metric(await workerMetrics(p, 0), 'vcs_requests_total', { backend: 'hg' })
  for (let i = 0; i < 4; i++) {
    t.equal((await p.hg(['clone', '-q', `${p.url}/demo-hg`, path.join(p.dir, `h${i}`)])).code, 0, `hg clone ${i} served (by w2)`)
    t.equal((await git(['clone', '-q', `${p.url}/demo.git`, `g${i}`])).code, 0, `git clone ${i} served`)
  }
  t.ok(await gitRequests(p, 0) > before, 'w1 still served git clones')
  t.equal(metric(await workerMetrics(p, 0), 'vcs_requests_total', { backend: 'hg' }), hgBefore, 'and no hg request reached w1')
  await rm(broken, { force: true })
})

t.test('a worker drained with SIGTERM while clones and pushes run: zero failed operations; restarted, it rejoins', async (t) => {
  const p = await startTestPool(t)
  const git = gitClient(p.dir)
  const load = traffic(p, git, { clones: 2, retry: false })
  await waitFor(() => load.clones.length >= 2 && load.pushes.length >= 1, 60_000, 'traffic to flow')
  const exit = await p.pool.stopWorker(0, 'SIGTERM')
  t.equal(exit, 0, 'w1 drained and exited 0')
  const seen = load.clones.length + load.pushes.length
  await waitFor(() => load.clones.length + load.pushes.length >= seen + 4, 60_000, 'more traffic after the drain')
  await load.stop()
  t.same(load.clones.filter((c) => c.code !== 0).map((c) => c.stderr), [], 'no clone failed')
  t.same(load.pushes.filter((x) => !x.ok).map((x) => x.stderr), [], 'no push failed')
  await checkPushes(t, git, p, load.pushes)

  await p.pool.startWorker(0)
  await waitFor(async () => (await p.pool.status('servers-git', 'w1')).startsWith('UP') && (await p.pool.status('servers-hg', 'w1')).startsWith('UP'), 20_000, 'w1 to pass its checks and rejoin')
  // slowstart: w1's weight climbs back to w2's
  const weight = async (server: string) => (await p.pool.stats()).find((r) => r.pxname === 'servers-git' && r.svname === server)!.weight
  await waitFor(async () => (await weight('w1')) === (await weight('w2')), 20_000, 'w1 back at full weight')
  for (let i = 0; i < 6 && await gitRequests(p, 0) === 0; i++) t.equal((await git(['clone', '-q', `${p.url}/demo.git`, `after-${i}`])).code, 0)
  t.ok(await gitRequests(p, 0) > 0, 'the restarted w1 serves clones again')
})
