/**
 * `npm run bench:pool`: many concurrent clones, in one run, interleaved over rounds:
 *   direct   — straight to worker w1 (no HAProxy)
 *   pool of 1 — through HAProxy with w2 disabled on the admin socket
 *   pool of 2 — through HAProxy with both workers
 * Each measure: CONCURRENT clone loops until TOTAL clones are done; clones per second and
 * failed clones. Prints the ratios README records: HAProxy's overhead (direct / pool of 1,
 * target <= 1.05 in time) and two workers against one (target: at least as fast, on 2 cores).
 */
import { mkdirSync, rmSync } from 'node:fs'
import path from 'node:path'
import { ROOT, median, sh, table, timeAsync, freePort, CLI } from './lib.js'
import { adminCommand, Pool } from '../../tools/pool/launch.js'
import type { PoolSpec } from '../../tools/pool/haproxy-config.js'

const BENCH = path.join(ROOT, 'data', 'bench-pool')
const REPOS = path.join(BENCH, 'repos')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const CONCURRENT = 16
const TOTAL = 96

async function clones(url: string, env: NodeJS.ProcessEnv): Promise<{ seconds: number; failed: number }> {
  let next = 0
  let failed = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CONCURRENT }, async (_, k) => {
    const dir = path.join(BENCH, `clone-${k}`)
    while (next < TOTAL) {
      next++
      rmSync(dir, { recursive: true, force: true })
      // clients at the lowest priority: in production they are elsewhere
      const r = await timeAsync('nice', ['-n', '19', 'git', 'clone', '-q', '--bare', `${url}/small.git`, dir], { env })
      if (r.code !== 0) failed++
    }
    rmSync(dir, { recursive: true, force: true })
  }))
  return { seconds: (performance.now() - t0) / 1000, failed }
}

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  rmSync(path.join(REPOS, 'small.git'), { recursive: true, force: true })
  sh('cp', ['-a', path.join(ROOT, 'repos-fixture', 'demo.git'), path.join(REPOS, 'small.git')])
  sh(process.execPath, [CLI, 'repo', 'visibility', 'small', 'public', '--repos', REPOS, '--data', BENCH, '--init'])
  const spec: PoolSpec = {
    frontend: `127.0.0.1:${await freePort()}`, stats: `127.0.0.1:${await freePort()}`, web: `127.0.0.1:${await freePort()}`,
    adminSocket: path.join(BENCH, 'haproxy.sock'),
    workers: [{ name: 'w1', address: '127.0.0.1:0', agentPort: 0 }, { name: 'w2', address: '127.0.0.1:0', agentPort: 0 }],
    balance: 'leastconn', checkIntervalMs: 1000, fall: 2, rise: 2, slowstartMs: 0, idleTimeoutMs: 600_000,
  }
  const pool = await Pool.start({ spec, reposDir: REPOS, dataDir: BENCH, runDir: path.join(BENCH, 'run'), workerArgs: ['--log-level', 'warn', '--hg-processes', '0', '--heavy-limit', '32', '--queue-limit', '256'] })
  const env = { ...process.env, HOME: path.join(BENCH, 'home'), GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0' }
  mkdirSync(env.HOME, { recursive: true })
  const set = async (w2: boolean) => {
    await adminCommand(spec.adminSocket, `${w2 ? 'enable' : 'disable'} server servers-git/w2`)
  }
  const r = { direct: [] as number[], one: [] as number[], two: [] as number[] }
  let failed = 0
  try {
    await clones(`http://${spec.workers[0]!.address}`, env) // warm-up
    for (let round = 0; round < ROUNDS; round++) {
      const direct = await clones(`http://${spec.workers[0]!.address}`, env)
      await set(false)
      const one = await clones(pool.url, env)
      await set(true)
      const two = await clones(pool.url, env)
      r.direct.push(direct.seconds)
      r.one.push(one.seconds)
      r.two.push(two.seconds)
      failed += direct.failed + one.failed + two.failed
    }
  } finally {
    await pool.stop()
  }
  const rate = (s: number) => (TOTAL / s).toFixed(1)
  const d = median(r.direct)
  const one = median(r.one)
  const two = median(r.two)
  console.log(table([
    [`${TOTAL} clones of small.git, ${CONCURRENT} at once`, 'median s', 'clones/s'],
    ['worker direct', d.toFixed(2), rate(d)],
    ['HAProxy, pool of 1', one.toFixed(2), rate(one)],
    ['HAProxy, pool of 2', two.toFixed(2), rate(two)],
  ]))
  console.log(`failed clones: ${failed} (target 0)`)
  console.log(`HAProxy overhead, pool of 1 / direct (time): ${(one / d).toFixed(3)} (target <= 1.05: ${one / d <= 1.05 ? 'met' : 'NOT met'})`)
  console.log(`pool of 2 / pool of 1 (throughput): ${(one / two).toFixed(3)} (target >= 1.0: ${one / two >= 1 ? 'met' : 'NOT met'})`)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
