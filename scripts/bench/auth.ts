/**
 * `npm run bench:auth`: what authentication costs. In one run, on a public repo, interleaved:
 * info/refs requests per second anonymous vs with Basic credentials (warm credential cache),
 * for protocol v2 (no git process: auth is most of the work) and v0 (a git process per
 * request); then the cost of a cache miss, with the cache turned off (every request runs
 * scrypt). wrk at concurrency 16, 5 s per measurement, 127.0.0.1 only.
 */
import { mkdirSync, rmSync, writeFileSync, cpSync } from 'node:fs'
import path from 'node:path'
import { CLI, ROOT, sh, startWorker, table, wrk } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-auth')

async function main(): Promise<void> {
  rmSync(BENCH, { recursive: true, force: true })
  mkdirSync(BENCH, { recursive: true })
  const repos = path.join(BENCH, 'repos')
  cpSync(path.join(ROOT, 'repos-fixture'), repos, { recursive: true })
  const data = path.join(BENCH, 'data')
  const admin = (args: string[], input?: string) => sh(process.execPath, [CLI, ...args, '--data', data, '--repos', repos], { input })
  admin(['repo', 'visibility', 'demo', 'public'])
  admin(['user', 'add', 'bench'], 'bench-password\n')
  admin(['grant', 'bench', 'demo', 'read'])
  const auth = { Authorization: `Basic ${Buffer.from('bench:bench-password').toString('base64')}` }
  const url = (base: string) => `${base}/demo.git/info/refs?service=git-upload-pack`
  const v2 = { 'Git-Protocol': 'version=2' }

  const warm = await startWorker(['--repos', repos, '--data', data])
  const cold = await startWorker(['--repos', repos, '--data', data, '--auth-cache-ttl-ms', '0', '--login-failure-limit', '1000000'])
  try {
    const r: Record<string, number[]> = { anonV2: [], authV2: [], anonV0: [], authV0: [] }
    let errors = 0
    for (let round = 0; round < 3; round++) {
      for (const [key, headers] of [['anonV2', v2], ['authV2', { ...v2, ...auth }], ['anonV0', {}], ['authV0', auth]] as const) {
        const res = wrk(url(warm.url), 16, 5, headers)
        r[key]!.push(res.rps)
        errors += res.errors
      }
    }
    // two at a time: the worker runs at most two derivations at once (one per core)
    const missRun = wrk(url(cold.url), 2, 5, { ...v2, ...auth })
    errors += missRun.errors
    const missSerial = wrk(url(cold.url), 1, 5, { ...v2, ...auth })
    errors += missSerial.errors
    const best = (xs: number[]) => Math.max(...xs)
    const results = {
      rps: { anonymous_v2: best(r.anonV2!), authenticated_v2: best(r.authV2!), anonymous_v0: best(r.anonV0!), authenticated_v0: best(r.authV0!) },
      ratio_v2: best(r.authV2!) / best(r.anonV2!),
      ratio_v0: best(r.authV0!) / best(r.anonV0!),
      cache_miss: { rps_2_parallel: missRun.rps, ms_one_at_a_time: 1000 / Math.max(missSerial.rps, 0.001) },
      errors,
    }
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      ['info/refs v2 rps anonymous', Math.round(results.rps.anonymous_v2), '', ''],
      ['info/refs v2 rps authenticated (warm)', Math.round(results.rps.authenticated_v2), '', ''],
      ['authenticated/anonymous v2', results.ratio_v2.toFixed(2), '>= 0.95', results.ratio_v2 >= 0.95 ? 'yes' : 'NO'],
      ['authenticated/anonymous v0', results.ratio_v0.toFixed(2), '>= 0.95', results.ratio_v0 >= 0.95 ? 'yes' : 'NO'],
      ['cache misses per second (scrypt N=2^17, 2 at a time)', results.cache_miss.rps_2_parallel.toFixed(1), '', ''],
      ['one cache miss, ms', results.cache_miss.ms_one_at_a_time.toFixed(0), '', ''],
      ['errors', errors, '0', errors === 0 ? 'yes' : 'NO'],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-auth-results.json'), JSON.stringify(results, null, 2))
  } finally {
    await warm.stop()
    await cold.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:auth failed: ${(err as Error).message}`)
  process.exitCode = 1
})
