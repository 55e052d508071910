/**
 * `npm run bench:git`: our worker against the limit (`git clone --no-local` from the path, no
 * HTTP at all), the classic deployment (nginx + fcgiwrap + git http-backend) and, for the large
 * clone, the HTTP floor (http-floor.ts: git's pack written straight into the socket), in one
 * run, interleaved. Prints ratios; README records them. Generated repos live in data/bench/ (not
 * committed) and are reused by later runs.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { CLI, ROOT, cpuTicks, freePort, makeLargeRepo, median, rssOf, sh, startFloor, startNginx, startWorker, stopProcess, table, timeAsync, wrk } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench')
const REPOS = path.join(BENCH, 'repos')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const SMALL_REPS = 10
const CONCURRENT = 16

/** nginx + fcgiwrap + git http-backend on loopback: the classic smart-HTTP deployment. */
async function startClassic(reposDir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = path.join(BENCH, 'classic')
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  // TCP rather than a unix socket: nginx's workers drop to www-data when started as root and
  // could not open a root-owned socket.
  const fcgiPort = await freePort()
  const fcgi = spawn('fcgiwrap', ['-c', String(CONCURRENT), '-s', `tcp:127.0.0.1:${fcgiPort}`], { stdio: 'inherit', detached: true })
  const nginx = await startNginx(dir, port, 2, `
    client_max_body_size 0;
    location / {
      fastcgi_pass 127.0.0.1:${fcgiPort};
      fastcgi_buffering off;
      fastcgi_request_buffering off;
      fastcgi_read_timeout 3600s;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT ${reposDir};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;
      fastcgi_param REMOTE_ADDR $remote_addr;
    }`).catch(async (err: unknown) => {
    await stopProcess(fcgi)
    throw err
  })
  return {
    url: nginx.url,
    async stop() {
      await nginx.stop()
      await stopProcess(fcgi)
    },
  }
}

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeLargeRepo(path.join(REPOS, 'large.git'))
  if (!existsSync(path.join(REPOS, 'small.git'))) sh('cp', ['-a', path.join(ROOT, 'repos-fixture', 'demo.git'), path.join(REPOS, 'small.git')])
  const packMb = Number(sh('du', ['-sm', path.join(REPOS, 'large.git')]).split('\t')[0])
  const commits = sh('git', ['--git-dir', path.join(REPOS, 'large.git'), 'rev-list', '--count', 'main']).trim()
  console.error(`bench: large repo ${packMb} MB, ${commits} commits`)

  const data = path.join(BENCH, 'worker-data')
  for (const repo of ['large', 'small']) sh(process.execPath, [CLI, 'repo', 'visibility', repo, 'public', '--repos', REPOS, '--data', data, '--init'])
  // everything started is stopped, also when a later start fails
  const started: { stop(): Promise<void> }[] = []
  const start = async <T extends { stop(): Promise<void> }>(p: Promise<T>): Promise<T> => {
    const s = await p
    started.push(s)
    return s
  }
  let worker, worker0, classic, floor
  try {
    // the cold path: every clone computed, as the references do; the
    // pack cache (on by default) is bench:storm's subject
    worker = await start(startWorker(['--repos', REPOS, '--data', data, '--no-pack-cache']))
    // the same worker with its git children at the priority the references' servers run at
    worker0 = await start(startWorker(['--repos', REPOS, '--data', data, '--child-nice', '0', '--no-pack-cache']))
    classic = await start(startClassic(REPOS))
    floor = await start(startFloor(REPOS))
  } catch (err) {
    for (const s of started.reverse()) await s.stop()
    throw err
  }
  const work = path.join(BENCH, 'work')
  const env = { ...process.env, HOME: path.join(BENCH, 'home'), GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0' }
  mkdirSync(env.HOME, { recursive: true })
  const clone = async (src: string, extra: string[] = []): Promise<number> => {
    rmSync(work, { recursive: true, force: true })
    const r = await timeAsync('git', ['clone', '-q', '--bare', ...extra, src, work], { env })
    if (r.code !== 0) throw new Error(`clone of ${src} failed: ${r.stderr}`)
    return r.ms
  }
  try {
    const t = { largeWorker: [] as number[], largeClassic: [] as number[], largeLimit: [] as number[], largeFloor: [] as number[], largeWorker0: [] as number[], smallWorker: [] as number[], smallClassic: [] as number[] }
    const workerCpuMs: number[] = []
    await clone(`${worker.url}/large.git`) // warm the page cache for every contender
    for (let round = 0; round < ROUNDS; round++) {
      const ticks = cpuTicks(worker.proc.pid!)
      t.largeWorker.push(await clone(`${worker.url}/large.git`))
      // the worker's node process only (git runs apart): what the copy through it costs
      workerCpuMs.push((cpuTicks(worker.proc.pid!) - ticks) * 10)
      t.largeClassic.push(await clone(`${classic.url}/large.git`))
      t.largeLimit.push(await clone(path.join(REPOS, 'large.git'), ['--no-local']))
      t.largeFloor.push(await clone(`${floor.url}/large.git`))
      t.largeWorker0.push(await clone(`${worker0.url}/large.git`))
      for (let i = 0; i < SMALL_REPS; i++) {
        t.smallWorker.push(await clone(`${worker.url}/small.git`))
        t.smallClassic.push(await clone(`${classic.url}/small.git`))
      }
    }
    const rps: Record<string, { rps: number; errors: number }> = {}
    const refs = (base: string) => `${base}/large.git/info/refs?service=git-upload-pack`
    for (const round of [0, 1]) {
      for (const [name, base] of [['worker', worker.url], ['classic', classic.url]] as const) {
        for (const v of ['v0', 'v2']) {
          const r = wrk(refs(base), CONCURRENT, 5, v === 'v2' ? { 'Git-Protocol': 'version=2' } : {})
          const key = `${name}-${v}`
          if (!rps[key] || round === 1) rps[key] = rps[key] ? { rps: (rps[key]!.rps + r.rps) / 2, errors: rps[key]!.errors + r.errors } : r
        }
      }
    }
    // worker RSS (the node process only, git children excluded) during 16 concurrent large clones
    let peakRss = rssOf(worker.proc.pid!)
    const baseRss = peakRss
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, rssOf(worker.proc.pid!)) }, 50)
    const conc = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => {
      const dest = path.join(BENCH, `conc-${i}`)
      rmSync(dest, { recursive: true, force: true })
      return timeAsync('git', ['clone', '-q', '--bare', `${worker.url}/large.git`, dest], { env })
    }))
    clearInterval(sampler)
    for (let i = 0; i < CONCURRENT; i++) rmSync(path.join(BENCH, `conc-${i}`), { recursive: true, force: true })
    const concFailures = conc.filter((c) => c.code !== 0).length

    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>
    const r2 = (x: number) => x.toFixed(2)
    const wins = t.largeWorker.filter((w, i) => w <= t.largeClassic[i]!).length
    // the floor does less than classic by construction: where it loses a round, noise decided it
    const floorWins = t.largeFloor.filter((f, i) => f <= t.largeClassic[i]!).length
    const results = {
      large_pack_mb: packMb,
      large_clone_rounds_ms: { worker: t.largeWorker.map(Math.round), classic: t.largeClassic.map(Math.round), http_floor: t.largeFloor.map(Math.round) },
      large_clone_worker_cpu_ms: median(workerCpuMs),
      large_clone_ms: { worker: m.largeWorker, worker_child_nice_0: m.largeWorker0, classic: m.largeClassic, limit: m.largeLimit, http_floor: m.largeFloor },
      small_clone_ms: { worker: m.smallWorker, classic: m.smallClassic },
      info_refs_rps: Object.fromEntries(Object.entries(rps).map(([k, v]) => [k, Math.round(v.rps)])),
      info_refs_errors: Object.values(rps).reduce((a, b) => a + b.errors, 0),
      worker_rss_mb: { idle: Math.round(baseRss / 1048576), peak_16_large_clones: Math.round(peakRss / 1048576) },
      concurrent_clone_failures: concFailures,
    }
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      ['large clone worker/limit', r2(m.largeWorker / m.largeLimit), '<= 1.10', m.largeWorker / m.largeLimit <= 1.1 ? 'yes' : 'NO'],
      ['large clone worker (childNice 0)/limit', r2(m.largeWorker0 / m.largeLimit), '(git at nice 0, as the references)', ''],
      ['large clone classic/limit', r2(m.largeClassic / m.largeLimit), '(reference)', ''],
      ['large clone HTTP floor/limit', r2(m.largeFloor / m.largeLimit), '(the least HTTP costs)', ''],
      ['large clone worker/HTTP floor', r2(m.largeWorker / m.largeFloor), '<= 1.05 (the worker\'s own cost)', m.largeWorker / m.largeFloor <= 1.05 ? 'yes' : 'NO'],
      [`large clone rounds worker <= classic (of ${ROUNDS})`, wins, `${ROUNDS}`, wins === ROUNDS ? 'yes' : 'NO'],
      [`large clone rounds HTTP floor <= classic (of ${ROUNDS})`, floorWins, '(how far one round can be trusted)', ''],
      ['large clone worker node CPU (ms, median)', results.large_clone_worker_cpu_ms, '(the copy through the worker)', ''],
      ['small clone worker/classic', r2(m.smallWorker / m.smallClassic), '<= 0.90', m.smallWorker / m.smallClassic <= 0.9 ? 'yes' : 'NO'],
      ['info/refs v0 worker/classic', r2(rps['worker-v0']!.rps / rps['classic-v0']!.rps), '>= 1.0', rps['worker-v0']!.rps >= rps['classic-v0']!.rps ? 'yes' : 'NO'],
      ['info/refs v2 worker/classic', r2(rps['worker-v2']!.rps / rps['classic-v2']!.rps), '>= 3.0', rps['worker-v2']!.rps >= 3 * rps['classic-v2']!.rps ? 'yes' : 'NO'],
      ['worker RSS peak, 16 large clones (MB)', results.worker_rss_mb.peak_16_large_clones, '<= 150', results.worker_rss_mb.peak_16_large_clones <= 150 ? 'yes' : 'NO'],
      ['failed concurrent clones', concFailures, '0', concFailures === 0 ? 'yes' : 'NO'],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(BENCH, 'git-results.json'), JSON.stringify(results, null, 2))
  } finally {
    rmSync(work, { recursive: true, force: true })
    for (const s of started.reverse()) await s.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:git failed: ${(err as Error).message}`)
  process.exitCode = 1
})
