/**
 * `npm run bench:hg`: in one run, interleaved: clone of a large hg repo through the worker vs
 * straight from a bare `hg serve` vs a local `hg clone --pull` (the limit: the same bundle work,
 * no HTTP), and through a worker that proxies the bundle instead of handing the connection over;
 * then 4 concurrent server-side bundle streams (curl sends `hg clone`'s own getbundle request and
 * throws the bytes away, so the servers' work is what is measured) with N=1 vs N=2 children, and
 * one vs two bare `hg serve`; the same for the legacy zlib request; and the worker's own CPU per
 * MB of clone. Clone bundles: `hg clone` through a worker that has them
 * (the stream bundle, made before the rounds) against one without, wall time and the CPU of
 * each worker and all its children. Every other worker here runs without clone bundles, so
 * the figures above measure what they always did. The repo is generated once under data/bench-hg/.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { cpuTicks, CLI, ROOT, freePort, median, sh, startWorker, stopProcess, table, timeAsync, treeTicks, waitHttp, type Started } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-hg')
const REPOS = path.join(BENCH, 'repos')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 9)
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

async function bareServe(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort()
  const conf = path.join(BENCH, 'bare.conf')
  writeFileSync(conf, `[paths]\n/ = ${REPOS}/**\n`)
  const proc = spawn('hg', ['serve', '--web-conf', conf, '--address', '127.0.0.1', '--port', String(port), '-A', '/dev/null', '-E', '/dev/null'], { env: HGENV, stdio: 'ignore', detached: true })
  const url = `http://127.0.0.1:${port}`
  await waitHttp(url)
  return { url, stop: () => stopProcess(proc) }
}

/**
 * The getbundle arguments `hg clone` sends (captured from hg 6.3): a bundle2 with changegroup
 * v2, phases and bookmarks, compressed with what the client accepts first (zstd).
 */
function cloneRequest(tip: string): string[] {
  const caps = encodeURIComponent(['HG20', 'bundle2=' + encodeURIComponent(['HG20', 'bookmarks', 'changegroup=01,02', 'checkheads=related',
    'digests=md5,sha1,sha512', 'error=abort,unsupportedcontent,pushraced,pushkey', 'hgtagsfnodes', 'listkeys', 'phases=heads',
    'pushkey', 'remote-changegroup=http,https', 'stream=v2'].join('\n'))].join(','))
  return ['-H', `X-HgArg-1: bookmarks=1&bundlecaps=${caps}&cg=1&common=${'0'.repeat(40)}&heads=${tip}&listkeys=bookmarks&phases=1`,
    '-H', 'X-HgProto-1: 0.1 0.2 comp=zstd,zlib,none,bzip2 partial-pull']
}

/** The legacy request (no bundle2, no protocol caps): a changegroup v1 compressed with zlib. */
function legacyRequest(tip: string): string[] {
  return ['-H', `X-HgArg-1: common=${'0'.repeat(40)}&heads=${tip}`]
}

/** 4 concurrent getbundle streams of the whole repo spread over `bases`, bytes discarded; wall time in ms. */
async function bundleStreams(bases: string[], request: string[]): Promise<number> {
  const t0 = Date.now()
  const runs = await Promise.all(Array.from({ length: 4 }, (_, i) => timeAsync('curl', ['-sSf', '-o', '/dev/null', ...request, `${bases[i % bases.length]}/large-hg?cmd=getbundle`])))
  if (runs.some((r) => r.code !== 0)) throw new Error(`getbundle failed: ${runs.map((r) => r.stderr).join(' ')}`)
  return Date.now() - t0
}

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeLargeRepo(path.join(REPOS, 'large-hg'))
  const tip = sh('hg', ['-R', path.join(REPOS, 'large-hg'), 'log', '-r', 'tip', '-T', '{node}'], { env: HGENV })
  const sizeMb = Number(sh('du', ['-sm', path.join(REPOS, 'large-hg', '.hg', 'store')]).split('\t')[0])
  // bools go through the environment: clone bundles off but where measured
  const worker = async (name: string, flags: string[], env: Record<string, string> = { VCS_WORKER_HG_CLONE_BUNDLES: 'false' }) => {
    const data = path.join(BENCH, name)
    sh(process.execPath, [CLI, 'repo', 'visibility', 'large-hg', 'public', '--repos', REPOS, '--data', data, '--init'])
    return startWorker(['--repos', REPOS, '--data', data, ...flags], env)
  }
  const w2 = await worker('worker-data', ['--hg-processes', '2'])
  const w1 = await worker('worker-data-1', ['--hg-processes', '1'])
  // the same worker with bundles proxied through it (hgHandoff off)
  const wp = await worker('worker-data-proxied', ['--hg-processes', '2'], { VCS_WORKER_HG_HANDOFF: 'false', VCS_WORKER_HG_CLONE_BUNDLES: 'false' })
  // and with clone bundles: made before the rounds (the manifest asked for once)
  const wb = await worker('worker-data-bundles', ['--hg-processes', '2', '--hg-clone-bundle-delay-ms', '0'], {})
  const b1 = await bareServe()
  const b2 = await bareServe()
  const dest = path.join(BENCH, 'clone')
  const clone = async (src: string, extra: string[] = []): Promise<number> => {
    rmSync(dest, { recursive: true, force: true })
    const r = await timeAsync('hg', ['clone', '-U', '-q', ...extra, src, dest], { env: HGENV })
    if (r.code !== 0) throw new Error(`hg clone ${src} failed: ${r.stderr}`)
    return r.ms
  }
  const cloned = async (w: Started, src: string, ticks: number[]): Promise<number> => {
    const before = cpuTicks(w.proc.pid!)
    const ms = await clone(src)
    ticks.push(cpuTicks(w.proc.pid!) - before)
    return ms
  }
  const streams = { client: cloneRequest(tip), legacy: legacyRequest(tip) }
  let appliedBundles = 0
  const treeCloned = async (w: Started, ticks: number[]): Promise<number> => {
    rmSync(dest, { recursive: true, force: true })
    const before = treeTicks(w.proc.pid!)
    const r = await timeAsync('hg', ['clone', '-U', `${w.url}/large-hg`, dest], { env: HGENV, stdout: true })
    ticks.push(treeTicks(w.proc.pid!) - before)
    if (r.code !== 0) throw new Error(`hg clone ${w.url} failed: ${r.stderr}`)
    if (/finished applying clone bundle/.test(r.stdout ?? '')) appliedBundles++
    return r.ms
  }
  try {
    const bundlesReady = Date.now() + 120_000
    while (!(await (await fetch(`${wb.url}/large-hg?cmd=clonebundles`)).text()).includes('stream-v2.hg')) {
      if (Date.now() > bundlesReady) throw new Error('the clone bundles were not made within 2 minutes')
      await new Promise((r) => setTimeout(r, 500))
    }
    const bundleTicks = { with: [] as number[], without: [] as number[] }
    const bundleMs = { with: [] as number[], without: [] as number[] }
    // what each worker and its children spend idle (health checks, probes of the hg children):
    // measured over 10 s before the rounds and taken off each clone's CPU for its duration
    for (let i = 0; i < 2; i++) await treeCloned(wb, [])
    const idleRate = async (w: Started): Promise<number> => {
      const before = treeTicks(w.proc.pid!)
      await new Promise((r) => setTimeout(r, 10_000))
      return (treeTicks(w.proc.pid!) - before) / 10_000 // ticks per ms
    }
    const idle = { with: await idleRate(wb), without: await idleRate(w2) }
    const t: Record<string, number[]> = {}
    const add = (k: string, v: number): void => { (t[k] ??= []).push(v) }
    const ticks = { handoff: [] as number[], proxied: [] as number[] }
    await clone(`${w2.url}/large-hg`)
    await clone(`${wp.url}/large-hg`)
    for (let round = 0; round < ROUNDS; round++) {
      // every other round in reverse order, so none of them always follows the heavy stream runs
      const clones: [string, () => Promise<number>][] = [
        ['worker', () => cloned(w2, `${w2.url}/large-hg`, ticks.handoff)],
        ['bare', () => clone(`${b1.url}/large-hg`)],
        ['limit', () => clone(path.join(REPOS, 'large-hg'), ['--pull'])],
        ['proxied', () => cloned(wp, `${wp.url}/large-hg`, ticks.proxied)],
        ['bundles', async () => { const ms = await treeCloned(wb, bundleTicks.with); bundleMs.with.push(ms); return ms }],
        ['no bundles', async () => { const ms = await treeCloned(w2, bundleTicks.without); bundleMs.without.push(ms); return ms }],
      ]
      if (round % 2) clones.reverse()
      for (const [name, run] of clones) add(name, await run())
      for (const [kind, request] of Object.entries(streams)) {
        add(`${kind} n1`, await bundleStreams([w1.url], request))
        add(`${kind} n2`, await bundleStreams([w2.url], request))
        add(`${kind} bare1`, await bundleStreams([b1.url], request))
        add(`${kind} bare2`, await bundleStreams([b1.url, b2.url], request))
      }
    }
    const bundleMb = Number(sh('du', ['-sm', dest]).split('\t')[0])
    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]))
    // Each ratio is the median of the per-round ratios: the two sides of a round ran moments
    // apart, so a shift of the machine's load between rounds cancels out (the medians of the
    // times are in the JSON as well).
    const r = (a: string, b: string): number => median(t[a]!.map((x, i) => x / t[b]![i]!))
    const perMb = (xs: number[]): number => (median(xs) * 10) / Math.max(bundleMb, 1) // ticks are 10 ms
    // a clone's own CPU: what the worker tree spent during it, less what it spends idle in that time
    const net = { with: bundleTicks.with.map((x, i) => Math.max(0, x - idle.with * bundleMs.with[i]!)), without: bundleTicks.without.map((x, i) => Math.max(0, x - idle.without * bundleMs.without[i]!)) }
    const results = {
      repo_mb: sizeMb,
      rounds: ROUNDS,
      ratios: {
        clone_worker_over_bare: r('worker', 'bare'),
        clone_worker_over_limit: r('worker', 'limit'),
        clone_proxied_over_bare: r('proxied', 'bare'),
        streams_n1_over_n2: r('client n1', 'client n2'),
        streams_bare1_over_bare2: r('client bare1', 'client bare2'),
        legacy_n1_over_n2: r('legacy n1', 'legacy n2'),
        legacy_bare1_over_bare2: r('legacy bare1', 'legacy bare2'),
      },
      clone_ms: { worker: m.worker, bare: m.bare, limit: m.limit, worker_proxied: m.proxied },
      bundle_streams_ms: Object.fromEntries(Object.entries(m).filter(([k]) => k.includes(' '))),
      worker_cpu_ms_per_mb: { handoff: perMb(ticks.handoff), proxied: perMb(ticks.proxied) },
      clone_bundles: {
        clone_ms: { with: m.bundles, without: m['no bundles'] },
        wall_with_over_without: r('bundles', 'no bundles'),
        cpu_ms: { with: median(net.with) * 10, without: median(net.without) * 10 },
        cpu_with_over_without: median(net.with.map((x, i) => x / Math.max(1, net.without[i]!))),
        cpu_ms_rounds: { with: bundleTicks.with.map((x) => x * 10), without: bundleTicks.without.map((x) => x * 10) },
        idle_cpu_ms_per_s: { with: idle.with * 10_000, without: idle.without * 10_000 },
        clones_that_applied_a_bundle: `${appliedBundles} of ${ROUNDS}`,
        worker_warnings: wb.output().split('\n').filter((l) => l.includes('clone bundles')).slice(0, 5),
      },
    }
    const cb = results.clone_bundles
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      ['clone worker/bare hg serve', r('worker', 'bare').toFixed(2), '<= 1.05', r('worker', 'bare') <= 1.05 ? 'yes' : 'NO'],
      ['clone worker/local --pull (limit)', r('worker', 'limit').toFixed(2), '(reference)', ''],
      ['clone worker, bundles proxied (hgHandoff=false)/bare', r('proxied', 'bare').toFixed(2), '(reference)', ''],
      ['4 clone streams, N=2 speed-up over N=1', r('client n1', 'client n2').toFixed(2), '>= 1.2', r('client n1', 'client n2') >= 1.2 ? 'yes' : 'NO'],
      ['4 clone streams, two bare hg serve over one', r('client bare1', 'client bare2').toFixed(2), '(reference)', ''],
      ['4 legacy zlib streams, N=2 speed-up over N=1', r('legacy n1', 'legacy n2').toFixed(2), '(reference)', ''],
      ['4 legacy zlib streams, two bare hg serve over one', r('legacy bare1', 'legacy bare2').toFixed(2), '(reference)', ''],
      ['worker CPU per MB of clone (ms), handed over', results.worker_cpu_ms_per_mb.handoff.toFixed(1), '', ''],
      ['worker CPU per MB of clone (ms), proxied', results.worker_cpu_ms_per_mb.proxied.toFixed(1), '', ''],
      [`hg clone with clone bundles / without, wall (${Math.round(cb.clone_ms.with!)} / ${Math.round(cb.clone_ms.without!)} ms)`, cb.wall_with_over_without.toFixed(2), '<= 0.5', cb.wall_with_over_without <= 0.5 ? 'yes' : 'NO'],
      [`hg clone with / without, worker and children CPU less idle (${Math.round(cb.cpu_ms.with)} / ${Math.round(cb.cpu_ms.without)} ms)`, cb.cpu_with_over_without.toFixed(2), '<= 0.20', cb.cpu_with_over_without <= 0.2 ? 'yes' : 'NO'],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-hg-results.json'), JSON.stringify(results, null, 2))
  } finally {
    rmSync(dest, { recursive: true, force: true })
    for (const s of [w2, w1, wp, wb]) await s.stop()
    await b1.stop()
    await b2.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:hg failed: ${(err as Error).message}`)
  process.exitCode = 1
})
