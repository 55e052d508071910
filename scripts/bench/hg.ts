/**
 * `npm run bench:hg`: in one run, interleaved: clone of a large hg repo through the worker vs
 * straight from a bare `hg serve` vs a local `hg clone --pull` (the limit: the same bundle work,
 * no HTTP); then 4 concurrent server-side bundle streams (curl fetches `getbundle` and throws
 * the bytes away, so the servers' work is what is measured) with N=1 vs N=2 children; and the
 * worker's own CPU per MB proxied. The repo is generated once under data/bench-hg/.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { CLI, ROOT, freePort, median, sh, startWorker, stopProcess, table, timeAsync, waitHttp } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-hg')
const REPOS = path.join(BENCH, 'repos')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const HGENV = { ...process.env, HGPLAIN: '1', HGRCPATH: '', HGUSER: 'Bench <bench@example.invalid>', HGDEMANDIMPORT: 'disable' }

function makeLargeRepo(dir: string): void {
  if (existsSync(path.join(dir, '.hg'))) return
  console.error('bench: generating the large hg repo (once)...')
  const tmp = `${dir}.tmp`
  rmSync(tmp, { recursive: true, force: true })
  sh('hg', ['init', tmp], { env: HGENV })
  let seed = 0x12345678
  const rand = (n: number): Buffer => {
    const b = Buffer.allocUnsafe(n)
    for (let i = 0; i < n; i++) { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; b[i] = seed & 0xff }
    return b
  }
  for (let c = 0; c < 60; c++) {
    writeFileSync(path.join(tmp, `file${c % 20}.bin`), rand(512 * 1024))
    sh('hg', ['-R', tmp, 'commit', '-A', '-q', '-m', `commit ${c}`, '-d', `${1_700_000_000 + c * 60} 0`], { env: HGENV })
  }
  sh('mv', [tmp, dir])
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12]) // utime + stime, in clock ticks (100 Hz)
}

async function bareServe(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort()
  const conf = path.join(BENCH, 'bare.conf')
  writeFileSync(conf, `[paths]\n/ = ${REPOS}/**\n`)
  const proc = spawn('hg', ['serve', '--web-conf', conf, '--address', '127.0.0.1', '--port', String(port), '-A', '/dev/null', '-E', '/dev/null'], { env: HGENV, stdio: 'ignore', detached: true })
  const url = `http://127.0.0.1:${port}`
  await waitHttp(url)
  return { url, stop: () => stopProcess(proc) }
}

/** 4 concurrent getbundle streams of the whole repo, bytes discarded; wall time in ms. */
async function bundleStreams(base: string, tip: string): Promise<number> {
  const t0 = Date.now()
  const runs = await Promise.all(Array.from({ length: 4 }, () => timeAsync('curl', ['-sSf', '-o', '/dev/null',
    '-H', `X-HgArg-1: common=${'0'.repeat(40)}&heads=${tip}`, `${base}/large-hg?cmd=getbundle`])))
  if (runs.some((r) => r.code !== 0)) throw new Error(`getbundle failed: ${runs.map((r) => r.stderr).join(' ')}`)
  return Date.now() - t0
}

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeLargeRepo(path.join(REPOS, 'large-hg'))
  const data = path.join(BENCH, 'worker-data')
  sh(process.execPath, [CLI, 'repo', 'visibility', 'large-hg', 'public', '--repos', REPOS, '--data', data])
  const tip = sh('hg', ['-R', path.join(REPOS, 'large-hg'), 'log', '-r', 'tip', '-T', '{node}'], { env: HGENV })
  const sizeMb = Number(sh('du', ['-sm', path.join(REPOS, 'large-hg', '.hg')]).split('\t')[0])
  const worker = await startWorker(['--repos', REPOS, '--data', data, '--hg-processes', '2'])
  const one = await startWorker(['--repos', REPOS, '--data', path.join(BENCH, 'worker-data-1'), '--hg-processes', '1'])
  sh(process.execPath, [CLI, 'repo', 'visibility', 'large-hg', 'public', '--repos', REPOS, '--data', path.join(BENCH, 'worker-data-1')])
  const bare = await bareServe()
  const dest = path.join(BENCH, 'clone')
  const clone = async (src: string, extra: string[] = []): Promise<number> => {
    rmSync(dest, { recursive: true, force: true })
    const r = await timeAsync('hg', ['clone', '-U', '-q', ...extra, src, dest], { env: HGENV })
    if (r.code !== 0) throw new Error(`hg clone ${src} failed: ${r.stderr}`)
    return r.ms
  }
  try {
    const t = { worker: [] as number[], bare: [] as number[], limit: [] as number[], n1: [] as number[], n2: [] as number[] }
    await clone(`${worker.url}/large-hg`)
    let ticks = 0
    for (let round = 0; round < ROUNDS; round++) {
      const before = cpuTicks(worker.proc.pid!)
      t.worker.push(await clone(`${worker.url}/large-hg`))
      ticks += cpuTicks(worker.proc.pid!) - before
      t.bare.push(await clone(`${bare.url}/large-hg`))
      t.limit.push(await clone(path.join(REPOS, 'large-hg'), ['--pull']))
      t.n1.push(await bundleStreams(one.url, tip))
      t.n2.push(await bundleStreams(worker.url, tip))
    }
    const bundleMb = Number(sh('du', ['-sm', dest]).split('\t')[0])
    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>
    const cpuMsPerMb = (ticks * 10) / (ROUNDS * Math.max(bundleMb, 1))
    const results = { repo_mb: sizeMb, clone_ms: { worker: m.worker, bare: m.bare, limit: m.limit }, bundle_streams_ms: { n1: m.n1, n2: m.n2 }, worker_cpu_ms_per_mb: cpuMsPerMb }
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      ['clone worker/bare hg serve', (m.worker / m.bare).toFixed(2), '<= 1.05', m.worker / m.bare <= 1.05 ? 'yes' : 'NO'],
      ['clone worker/local --pull (limit)', (m.worker / m.limit).toFixed(2), '(reference)', ''],
      ['4 bundle streams, N=2 speed-up over N=1', (m.n1 / m.n2).toFixed(2), '>= 1.2', m.n1 / m.n2 >= 1.2 ? 'yes' : 'NO'],
      ['worker CPU per MB proxied (ms)', cpuMsPerMb.toFixed(1), '', ''],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-hg-results.json'), JSON.stringify(results, null, 2))
  } finally {
    rmSync(dest, { recursive: true, force: true })
    await worker.stop()
    await one.stop()
    await bare.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:hg failed: ${(err as Error).message}`)
  process.exitCode = 1
})
