/**
 * `npm run bench:health`: what a balancer's probes cost and see. wrk and a paced prober on
 * /health/git of one worker, first idle, then while 8 clones of the large bench repo run (each
 * clone loop bounded in count and by the wrk run), in one run: on the health port (the probe
 * thread, where the generated HAProxy config sends its checks) and on the worker's own port,
 * with the spawn helper (default), then on the worker's port of a worker spawning git itself.
 * As the floor of this machine, nginx answering a constant `200 ok` (C, no I/O) is measured in
 * the same runs: whatever it sees under the clones' load, no HTTP responder here can beat.
 * Prints requests per second, p50 and p99 latency; target: p99 <= 5 ms while the clones run.
 * README records it.
 */
import { mkdirSync, rmSync } from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { CLI, ROOT, freePort, makeLargeRepo, sh, startNginx, startWorker, table, timeAsync, wrk, wrkAsync, type WrkResult } from './lib.js'

type Paced = { sent: number; errors: number; p50Ms: number; p99Ms: number; maxMs: number }
/** The paced prober, in its own process (probe.ts). */
function paced(url: string, perSecond: number, seconds: number): Promise<Paced> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(path.dirname(fileURLToPath(import.meta.url)), 'probe.js'), url, String(perSecond), String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    p.stdout.on('data', (c) => { out += c })
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as Paced) : reject(new Error(`probe failed (${code})`))))
  })
}

const BENCH = path.join(ROOT, 'data', 'bench')

/** nginx with one worker process answering every request with a constant 200: the floor. */
async function startFloor(): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = path.join(BENCH, 'health-floor')
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  return startNginx(dir, port, 1, "location / { return 200 'ok'; }")
}
const REPOS = path.join(BENCH, 'repos')
const CLONES = 8
const SECONDS = Number(process.env.BENCH_SECONDS ?? 15)
const PROBE_CONNECTIONS = 4
const MAX_CLONES_PER_LOOP = 50
/** probes per second of the paced run: 100 balancers probing every second */
const PROBE_RATE = 100

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeLargeRepo(path.join(REPOS, 'large.git'))
  const data = path.join(BENCH, 'worker-data')
  sh(process.execPath, [CLI, 'repo', 'visibility', 'large', 'public', '--repos', REPOS, '--data', data, '--init'])
  const floor = await startFloor()
  try {
    for (const helper of [true, false]) await measure(data, helper, helper ? floor.url : undefined)
  } finally {
    await floor.stop()
  }
}

interface Target { name: string; url: string }

/** One worker, with or without the spawn helper: the idle and busy runs of each target, and their table. */
async function measure(data: string, helper: boolean, floorUrl?: string): Promise<void> {
  const worker = await startWorker(['--repos', REPOS, '--data', data, '--hg-processes', '0', '--health-port', '0', '--no-pack-cache'], { VCS_WORKER_SPAWN_HELPER: String(helper) })
  console.log(`\n${helper ? 'git started through the spawn helper (default)' : 'git spawned by the worker itself (VCS_WORKER_SPAWN_HELPER=false)'}:`)
  const env = { ...process.env, HOME: path.join(BENCH, 'home'), GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0' }
  mkdirSync(env.HOME, { recursive: true })
  const healthPort = /health checks on (http:\/\/\S+?)\//.exec(worker.output())![1]!
  const targets: Target[] = [
    ...(helper ? [{ name: 'health port', url: `${healthPort}/health/git` }] : []),
    { name: 'worker port', url: `${worker.url}/health/git` },
    ...(floorUrl ? [{ name: 'nginx floor', url: `${floorUrl}/health/git` }] : []),
  ]
  try {
    const idle = targets.map((p) => wrk(p.url, PROBE_CONNECTIONS, SECONDS))
    const idlePaced: Paced[] = []
    for (const p of targets) idlePaced.push(await paced(p.url, PROBE_RATE, SECONDS))

    // 8 clone loops, each until the busy runs are over (and at most MAX_CLONES_PER_LOOP clones)
    let running = true
    let done = 0
    let failed = 0
    const loops = Array.from({ length: CLONES }, async (_, i) => {
      const dir = path.join(BENCH, `health-clone-${i}`)
      for (let n = 0; running && n < MAX_CLONES_PER_LOOP; n++) {
        await rm(dir, { recursive: true, force: true })
        // The clients run at the lowest priority: in production they are elsewhere, here their
        // index-pack would otherwise take the worker's two cores and measure the clients' load.
        const r = await timeAsync('nice', ['-n', '19', 'git', 'clone', '-q', '--bare', `${worker.url}/large.git`, dir], { env })
        if (r.code === 0) done++
        else failed++
      }
      await rm(dir, { recursive: true, force: true })
    })
    await new Promise((r) => setTimeout(r, 2000)) // let the clones get going
    const busy: WrkResult[] = []
    const busyPaced: Paced[] = []
    for (const p of targets) {
      busy.push(await wrkAsync(p.url, PROBE_CONNECTIONS, SECONDS))
      busyPaced.push(await paced(p.url, PROBE_RATE, SECONDS))
    }
    running = false
    await Promise.all(loops)

    const ms = (x: number) => x.toFixed(2)
    console.log(table([
      ['/health/git', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors'],
      ...targets.flatMap((p, i) => [
        [`${p.name}: wrk flood, idle worker`, idle[i]!.rps.toFixed(0), ms(idle[i]!.p50Ms), ms(idle[i]!.p99Ms), '', idle[i]!.errors],
        [`${p.name}: wrk flood, ${CLONES} clones running`, busy[i]!.rps.toFixed(0), ms(busy[i]!.p50Ms), ms(busy[i]!.p99Ms), '', busy[i]!.errors],
        [`${p.name}: ${PROBE_RATE}/s paced, idle worker`, PROBE_RATE, ms(idlePaced[i]!.p50Ms), ms(idlePaced[i]!.p99Ms), ms(idlePaced[i]!.maxMs), idlePaced[i]!.errors],
        [`${p.name}: ${PROBE_RATE}/s paced, ${CLONES} clones running`, PROBE_RATE, ms(busyPaced[i]!.p50Ms), ms(busyPaced[i]!.p99Ms), ms(busyPaced[i]!.maxMs), busyPaced[i]!.errors],
      ]),
    ]))
    console.log(`clones completed during the busy runs: ${done}, failed: ${failed}`)
    targets.forEach((p, i) => {
      const b = busyPaced[i]!
      console.log(`${p.name}: paced p99 busy/idle ${(b.p99Ms / idlePaced[i]!.p99Ms).toFixed(2)}; target p99 <= 5 ms while clones run: ${b.p99Ms <= 5 ? 'met' : 'NOT met'} (paced ${ms(b.p99Ms)} ms, flood ${ms(busy[i]!.p99Ms)} ms)`)
    })
  } finally {
    await worker.stop()
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
