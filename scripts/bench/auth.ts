/**
 * `npm run bench:auth`: what authentication costs, on the SQLite store and on PostgreSQL, in
 * one run, interleaved. On a public repo: info/refs requests per second anonymous vs with Basic
 * credentials (warm caches), protocol v2 (no git process: auth is most of the work) and v0 (a
 * git process per request); the cost of a credential cache miss (scrypt, and on PostgreSQL a
 * query for a user never seen: median of 8, one at a time); how long a token revocation takes
 * to reach two PostgreSQL workers (20 revocations); and the store's hot queries per second
 * with every cache off. wrk at concurrency 16, 2 s per measurement (medians of 10 rounds), the workers pinned to core 0 and wrk to core 1, 127.0.0.1 only; PostgreSQL
 * is a local server on a unix socket, started here.
 */
import { mkdirSync, rmSync, writeFileSync, cpSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { CLI, cpuTicks, median, ROOT, sh, startWorker, table, wrk, type Started } from './lib.js'
import { reachableByServer, startLocalPostgres } from '../../tools/pool/postgres.js'
import { openPgStore } from '../../src/auth/pg-store.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { hashToken, newToken } from '../../src/auth/tokens.js'
import type { AuthStore } from '../../src/auth/store.js'

const BENCH = path.join(ROOT, 'data', 'bench-auth')
const ROUNDS = 10
const ROUND_SECONDS = 2
const WORKER_CPU = '0'
const LOAD_CPU = '1'
const yes = (ok: boolean): string => (ok ? 'yes' : 'NO')
const spread = (xs: number[]): string => `${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)}`

async function main(): Promise<void> {
  rmSync(BENCH, { recursive: true, force: true })
  mkdirSync(BENCH, { recursive: true })
  const repos = path.join(BENCH, 'repos')
  cpSync(path.join(ROOT, 'repos-fixture'), repos, { recursive: true })
  const data = path.join(BENCH, 'data')
  const admin = (args: string[], input?: string) => sh(process.execPath, [CLI, ...args, '--data', data, '--repos', repos, '--init'], { input })
  admin(['repo', 'visibility', 'demo', 'public'])
  admin(['user', 'add', 'bench'], 'bench-password\n')
  admin(['grant', 'bench', 'demo', 'read'])
  // users each cache miss meets for the first time: on PostgreSQL a real query, not the store's cache
  for (let i = 0; i < 8; i++) admin(['user', 'add', `miss${i}`], 'miss-password\n')

  // PostgreSQL: a local server, the same accounts copied in
  const pgDir = (await reachableByServer(BENCH)) ? path.join(BENCH, 'pg') : await mkdtemp(path.join(os.tmpdir(), 'vcs-bench-pg-'))
  const server = await startLocalPostgres(pgDir, 'vcs', 'bench-pg-password')
  const started: Started[] = []
  try {
    const c = new pg.Client({ connectionString: server.url('postgres') })
    await c.connect()
    await c.query('CREATE DATABASE vcs')
    await c.end()
    const pgUrl = server.url('vcs')
    admin(['store', 'copy', '--from', path.join(data, 'auth.sqlite'), '--to', pgUrl])

    const auth = { Authorization: `Basic ${Buffer.from('bench:bench-password').toString('base64')}` }
    const url = (base: string) => `${base}/demo.git/info/refs?service=git-upload-pack`
    const v2 = { 'Git-Protocol': 'version=2' }
    // every worker on core 0 and wrk on core 1: pinned, the two no longer trade places on one
    // core, and a round's request rate is the worker's cost alone (unpinned, on this 2-core
    // machine, single rounds of identical floods differed by up to 0.8-1.2)
    const start = async (args: string[]) => { const w = await startWorker(['--repos', repos, '--data', data, '--hg-processes', '0', '--drain-grace-ms', '0', ...args], {}, { cpus: WORKER_CPU }); started.push(w); return w }
    const coldArgs = ['--auth-cache-ttl-ms', '0', '--login-failure-limit', '1000000']
    // the revocation probes below fail on purpose, many times: no throttle on those workers
    const noThrottle = ['--login-failure-limit', '1000000']
    // warm means warm for the whole run: the default TTL (60 s) would expire the
    // credential mid-measurement and stall every connection on one 0.7 s derivation
    const warmArgs = ['--auth-cache-ttl-ms', '3600000']
    const warm = { sqlite: await start(warmArgs), pg: await start([...warmArgs, '--auth-store', pgUrl, ...noThrottle]) }

    // warm means warm from the first round: one authenticated request derives the key once (0.7 s
    // of scrypt, during which a flood's every request would wait: round 1 measured 0.46-0.49
    // before this), then 2 s of each kind of flood twice over, not counted: in a run primed with
    // 1 s of each, the first two rounds were still the slowest of ten for the authenticated floods
    // on both stores (0.82-0.90), as V8 was still optimizing
    for (const w of [warm.sqlite, warm.pg]) {
      const res = await fetch(url(w.url), { headers: { ...v2, ...auth } })
      await res.arrayBuffer()
      if (res.status !== 200) throw new Error(`priming ${w.url} answered ${res.status}`)
      for (let i = 0; i < 2; i++) for (const headers of [{ ...v2, ...auth }, v2, auth, {}]) wrk(url(w.url), 16, 2, headers, { cpus: LOAD_CPU })
    }

    type Key = 'anonV2' | 'authV2' | 'anonV0' | 'authV0' | 'anonV2b'
    const r = { sqlite: { anonV2: [], authV2: [], anonV0: [], authV0: [], anonV2b: [] }, pg: { anonV2: [], authV2: [], anonV0: [], authV0: [], anonV2b: [] } } as Record<'sqlite' | 'pg', Record<Key, number[]>>
    let errors = 0
    // pairs measured back to back, their order alternating, 10 rounds of 2 s; ratios are the
    // median of each round's own ratio, so a noisy moment of this shared machine spoils one pair only
    // the control: anonymous against anonymous, identical requests measured the same way; how
    // far its ratio strays from 1 is how finely this machine can resolve a ratio at all
    const pairs: [Key, Key, Record<string, string>, Record<string, string>][] = [['authV2', 'anonV2', { ...v2, ...auth }, v2], ['authV0', 'anonV0', auth, {}], ['anonV2b', 'anonV2', v2, v2]]
    const roundRatios: Record<string, number[]> = {}
    const cpuRatios: Record<string, number[]> = {}
    for (let round = 0; round < ROUNDS; round++) {
      for (const [authKey, anonKey, authHeaders, anonHeaders] of pairs) {
        for (const store of ['sqlite', 'pg'] as const) {
          const order = round % 2 ? [[anonKey, anonHeaders], [authKey, authHeaders]] as const : [[authKey, authHeaders], [anonKey, anonHeaders]] as const
          const got: Partial<Record<Key, number>> = {}
          const cpu: Partial<Record<Key, number>> = {}
          for (const [key, headers] of order) {
            const pid = warm[store].proc.pid!
            const before = cpuTicks(pid)
            const res = wrk(url(warm[store].url), 16, ROUND_SECONDS, headers, { cpus: LOAD_CPU })
            // the worker's own CPU per request (ms): what the shared machine's noise hardly moves
            cpu[key] = ((cpuTicks(pid) - before) * 10) / Math.max(1, res.rps * ROUND_SECONDS)
            r[store][key].push(res.rps)
            got[key] = res.rps
            errors += res.errors
          }
          ;(roundRatios[`${store}:${authKey}`] ??= []).push(got[authKey]! / got[anonKey]!)
          ;(cpuRatios[`${store}:${authKey}`] ??= []).push(cpu[anonKey]! / cpu[authKey]!)
        }
      }
    }
    // started only now, so that during the rounds core 0 runs the two warm workers and nothing else of ours
    const cold = { sqlite: await start(coldArgs), pg: await start([...coldArgs, '--auth-store', pgUrl]) }
    const second = await start(['--auth-store', pgUrl, '--auth-cache-ttl-ms', '600000', ...noThrottle])
    // a cache miss, one at a time: each request timed, 8 per store, interleaved; the median
    const missTimes: Record<'sqlite' | 'pg', number[]> = { sqlite: [], pg: [] }
    for (let i = 0; i < 8; i++) {
      for (const store of ['sqlite', 'pg'] as const) {
        const t0 = performance.now()
        const headers = { ...v2, Authorization: `Basic ${Buffer.from(`miss${i}:miss-password`).toString('base64')}` }
        const res = await fetch(url(cold[store].url), { headers })
        await res.arrayBuffer()
        if (res.status !== 200) errors++
        missTimes[store].push(performance.now() - t0)
      }
    }
    const missMs = { sqlite: median(missTimes.sqlite), pg: median(missTimes.pg) }

    const propagation = await revocations(pgUrl, [warm.pg, second], 20)
    const hot = { sqlite: await hotQueries(openSqliteStore(path.join(data, 'auth.sqlite'))), pg: await hotQueries(await openPgStore({ url: pgUrl, readCache: false })) }

    const ratio = (s: 'sqlite' | 'pg', key: Key) => median(roundRatios[`${s}:${key}`]!)
    const p99 = propagation[Math.ceil(propagation.length * 0.99) - 1]!
    const results = {
      rps: Object.fromEntries((['sqlite', 'pg'] as const).map((s) => [s, Object.fromEntries(Object.entries(r[s]).map(([k, xs]) => [k, Math.round(median(xs))]))])),
      ratio_v2: { sqlite: ratio('sqlite', 'authV2'), pg: ratio('pg', 'authV2') },
      ratio_v0: { sqlite: ratio('sqlite', 'authV0'), pg: ratio('pg', 'authV0') },
      control_anonymous_over_anonymous_v2: { sqlite: ratio('sqlite', 'anonV2b'), pg: ratio('pg', 'anonV2b'), spread: spread(roundRatios['sqlite:anonV2b']!.concat(roundRatios['pg:anonV2b']!)) },
      cpu_anonymous_over_authenticated_v2: { sqlite: median(cpuRatios['sqlite:authV2']!), pg: median(cpuRatios['pg:authV2']!) },
      pg_vs_sqlite_authenticated_v2: median(r.pg.authV2) / median(r.sqlite.authV2),
      cache_miss_ms: missMs,
      cache_miss_pg_over_sqlite: missMs.pg / missMs.sqlite,
      revocation_ms: { p50: propagation[Math.floor(propagation.length / 2)], p99, max: propagation.at(-1) },
      hot_queries_per_s: hot,
      // every round's own ratios, in order: to see whether a pair's order or its neighbour moves them
      round_ratios: Object.fromEntries(Object.entries(roundRatios).map(([k, xs]) => [k, xs.map((x) => Math.round(x * 1000) / 1000)])),
      errors,
    }
    const f2 = (x: number) => x.toFixed(2)
    console.log(table([
      ['measure', 'SQLite', 'PostgreSQL', 'target', 'met'],
      ['info/refs v2 rps anonymous (median)', results.rps.sqlite!.anonV2!, results.rps.pg!.anonV2!, '', ''],
      ['info/refs v2 rps authenticated, warm (median)', results.rps.sqlite!.authV2!, results.rps.pg!.authV2!, '', ''],
      ['authenticated/anonymous v2', f2(results.ratio_v2.sqlite), f2(results.ratio_v2.pg), '>= 0.95 on both', yes(results.ratio_v2.sqlite >= 0.95 && results.ratio_v2.pg >= 0.95)],
      ['control: anonymous/anonymous v2 (median; rounds from..to)', f2(results.control_anonymous_over_anonymous_v2.sqlite), f2(results.control_anonymous_over_anonymous_v2.pg), results.control_anonymous_over_anonymous_v2.spread, ''],
      ['authenticated/anonymous v0', f2(results.ratio_v0.sqlite), f2(results.ratio_v0.pg), '>= 0.95 on both', yes(results.ratio_v0.sqlite >= 0.95 && results.ratio_v0.pg >= 0.95)],
      ['worker CPU per request v2, anonymous/authenticated', f2(results.cpu_anonymous_over_authenticated_v2.sqlite), f2(results.cpu_anonymous_over_authenticated_v2.pg), '', ''],
      ['authenticated v2, PostgreSQL/SQLite', '', f2(results.pg_vs_sqlite_authenticated_v2), '>= 0.95', yes(results.pg_vs_sqlite_authenticated_v2 >= 0.95)],
      ['one cache miss (scrypt N=2^17), median ms', missMs.sqlite.toFixed(0), missMs.pg.toFixed(0), 'PostgreSQL <= 1.1x SQLite', yes(results.cache_miss_pg_over_sqlite <= 1.1)],
      ['revocation seen by 2 workers, p99 of 20, ms', '', p99, '<= 1000', yes(p99 <= 1000)],
      ['hot queries/s, caches off: user', hot.sqlite.user, hot.pg.user, '', ''],
      ['hot queries/s, caches off: token', hot.sqlite.token, hot.pg.token, '', ''],
      ['hot queries/s, caches off: grant', hot.sqlite.grant, hot.pg.grant, '', ''],
      ['errors', errors, '', '0', yes(errors === 0)],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-auth-results.json'), JSON.stringify(results, null, 2))
  } finally {
    for (const w of started) await w.stop()
    await server.stop()
    rmSync(pgDir, { recursive: true, force: true })
  }
}

/**
 * Revokes `n` tokens one after another and measures, for each, the time until every worker
 * refuses it (both had it cached: a 10-minute credential cache on the second); sorted, ms.
 */
async function revocations(url: string, workers: Started[], n: number): Promise<number[]> {
  const store = await openPgStore({ url })
  const times: number[] = []
  try {
    for (let i = 0; i < n; i++) {
      const token = newToken()
      const id = await store.addToken('bench', hashToken(token), null)
      const headers = { Authorization: `Bearer ${token}`, 'Git-Protocol': 'version=2' }
      const status = async (w: Started) => (await fetch(`${w.url}/demo.git/info/refs?service=git-upload-pack`, { headers })).status
      for (let tries = 0; (await Promise.all(workers.map(status))).some((s) => s !== 200); tries++) {
        if (tries > 200) throw new Error('a new token was not accepted')
        await new Promise((r) => setTimeout(r, 10))
      }
      const t0 = performance.now()
      await store.revokeToken('bench', id)
      // bounded: 5 s per revocation at most
      while ((await Promise.all(workers.map(status))).some((s) => s !== 401) && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 2))
      times.push(Math.round(performance.now() - t0))
    }
  } finally {
    await store.close()
  }
  return times.sort((a, b) => a - b)
}

/** The three reads a request makes on a cache miss, each for 2 s with 16 in flight; per second. */
async function hotQueries(store: AuthStore): Promise<{ user: number; token: number; grant: number }> {
  const user = (await store.findUser('bench'))!
  const hash = hashToken(newToken())
  const rate = async (read: () => Promise<unknown>): Promise<number> => {
    let count = 0
    const until = performance.now() + 2000
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (performance.now() < until) {
        await read()
        count++
      }
    }))
    return Math.round(count / 2)
  }
  try {
    return { user: await rate(() => store.findUser('bench')), token: await rate(() => store.findToken(hash)), grant: await rate(() => store.findGrant(user.id, 'demo.git')) }
  } finally {
    await store.close()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:auth failed: ${(err as Error).message}`)
  process.exitCode = 1
})
