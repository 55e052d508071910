/**
 * `npm run bench:health`: what a balancer's probes cost and see. wrk on /health/git of one
 * worker, first idle, then while 8 clones of the large bench repo run (each clone loop bounded
 * in count and by the wrk run), in one run. Prints requests per second, p50 and p99 latency,
 * and the busy/idle ratios; target: p99 <= 5 ms while the clones run. README records it.
 */
import { mkdirSync, rmSync } from 'node:fs'
import path from 'node:path'
import { CLI, ROOT, makeLargeRepo, sh, startWorker, table, timeAsync, wrk, wrkAsync } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench')
const REPOS = path.join(BENCH, 'repos')
const CLONES = 8
const SECONDS = Number(process.env.BENCH_SECONDS ?? 15)
const PROBE_CONNECTIONS = 4
const MAX_CLONES_PER_LOOP = 50

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeLargeRepo(path.join(REPOS, 'large.git'))
  const data = path.join(BENCH, 'worker-data')
  sh(process.execPath, [CLI, 'repo', 'visibility', 'large', 'public', '--repos', REPOS, '--data', data])
  const worker = await startWorker(['--repos', REPOS, '--data', data, '--hg-processes', '0'])
  const env = { ...process.env, HOME: path.join(BENCH, 'home'), GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0' }
  mkdirSync(env.HOME, { recursive: true })
  const probe = `${worker.url}/health/git`
  try {
    const idle = wrk(probe, PROBE_CONNECTIONS, SECONDS)

    // 8 clone loops, each until the busy wrk run is over (and at most MAX_CLONES_PER_LOOP clones)
    let running = true
    let done = 0
    let failed = 0
    const loops = Array.from({ length: CLONES }, async (_, i) => {
      const dir = path.join(BENCH, `health-clone-${i}`)
      for (let n = 0; running && n < MAX_CLONES_PER_LOOP; n++) {
        rmSync(dir, { recursive: true, force: true })
        const r = await timeAsync('git', ['clone', '-q', '--bare', `${worker.url}/large.git`, dir], { env })
        if (r.code === 0) done++
        else failed++
      }
      rmSync(dir, { recursive: true, force: true })
    })
    await new Promise((r) => setTimeout(r, 2000)) // let the clones get going
    const busy = await wrkAsync(probe, PROBE_CONNECTIONS, SECONDS)
    running = false
    await Promise.all(loops)

    console.log(table([
      ['health /health/git', 'req/s', 'p50 ms', 'p99 ms', 'errors'],
      ['idle worker', idle.rps.toFixed(0), idle.p50Ms.toFixed(2), idle.p99Ms.toFixed(2), idle.errors],
      [`${CLONES} clones running`, busy.rps.toFixed(0), busy.p50Ms.toFixed(2), busy.p99Ms.toFixed(2), busy.errors],
    ]))
    console.log(`clones completed during the run: ${done}, failed: ${failed}`)
    console.log(`busy/idle p99: ${(busy.p99Ms / idle.p99Ms).toFixed(2)}; target p99 <= 5 ms while clones run: ${busy.p99Ms <= 5 ? 'met' : 'NOT met'} (${busy.p99Ms.toFixed(2)} ms)`)
  } finally {
    await worker.stop()
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
