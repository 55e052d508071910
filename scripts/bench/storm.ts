/**
 * `npm run bench:storm`: the CI storm, pack-objects cache on against off, in one run, rounds
 * interleaved. A wide repo (20,000 files, 300 commits, as fast-import leaves it: one pack, no
 * bitmap) and the fetch a CI runner makes (`--depth 1` of the tip), replayed 16 at once by
 * this process over loopback HTTP (one connection each, no keep-alive): curl costs ~31 ms of
 * CPU to start on these machines, more than a cached fetch costs the server, and 16 of them
 * would measure curl. One real `git clone --depth 1` per round checks the answer.
 *
 * Both workers first serve two storms of another commit (not measured): a worker in production
 * has its code compiled by V8 long since, and a cold JIT costs a fetch ~6 ms more. Then the
 * first measured storm of the cache-on worker is a commit it has never seen (one run directly,
 * one writing the entry, the others following it), reported apart; the later ones are what a
 * storm costs once the entry exists. Each round also has a storm of 16 commits asked for once
 * each, none repeated: what the cache costs the packs nobody asks for twice. Measured per storm: wall time (throughput), the CPU of the
 * worker and its children (the spawn helper and every git it started), the worker's RSS peak;
 * and the disk one cache miss writes. Targets: throughput with the cache >=
 * 4x without; server CPU per fetch with the cache <= 20% of without; RSS < 150 MB.
 * Beside them, the floors: git upload-pack alone (CPU per fetch with a pack that costs nothing,
 * a hook that cats the entry, and without a cache), and the same storms against the HTTP floor
 * (http-floor.ts) with and without that free pack.
 * Full clones, 16 at once, of the same repo as pushes leave it (its history pushed in six
 * steps: several packs, never repacked) and of a copy repacked with bitmaps (git reuses its
 * pack nearly for free there: the reference), cache on against off.
 * hg clone bundles are measured by bench:hg. */
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { CLI, ROOT, median, rssOf, sh, startFloor, startWorker, table, timeAsync, treeTicks, type Started } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-storm')
const REPOS = path.join(BENCH, 'repos')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4)
const CONCURRENT = 16
const FILES = 20_000
const COMMITS = 300

/** A repo with a wide tree: the first commit adds FILES small files, the others change a few. */
function makeWideRepo(dir: string): void {
  if (existsSync(path.join(dir, 'HEAD'))) return
  console.error('bench: generating the wide repo (once)...')
  const tmp = `${dir}.tmp`
  rmSync(tmp, { recursive: true, force: true })
  sh('git', ['init', '-q', '--bare', tmp])
  const parts: string[] = []
  for (let c = 1; c <= COMMITS; c++) {
    const msg = `commit ${c}\n`
    parts.push(`commit refs/heads/main\ncommitter Bench <bench@example.invalid> ${1_700_000_000 + c * 60} +0000\ndata ${msg.length}\n${msg}`)
    const files = c === 1 ? Array.from({ length: FILES }, (_, i) => i) : [c * 7 % FILES, c * 13 % FILES, c * 31 % FILES]
    for (const i of files) {
      const body = `file ${i} of the wide repo, revision ${c}\n${'x'.repeat(200 + (i % 50))}\n`
      parts.push(`M 100644 inline src/d${i % 200}/f${i}.txt\ndata ${Buffer.byteLength(body)}\n${body}\n`)
    }
  }
  sh('git', ['--git-dir', tmp, 'fast-import', '--quiet'], { input: Buffer.from(parts.join('')) })
  sh('mv', [tmp, dir])
}

/**
 * The wide repo as pushes leave it: its history pushed in six steps (git's receive-pack keeps
 * each push's objects as a pack of its own), never repacked; and a copy of that repacked with
 * bitmaps (`repack -adb`), the case where git reuses its pack nearly for free.
 */
function makePushedRepos(wide: string): void {
  const pushed = path.join(REPOS, 'wide-pushed.git')
  if (!existsSync(path.join(pushed, 'HEAD'))) {
    console.error('bench: pushing the wide repo in six steps (once)...')
    rmSync(`${pushed}.tmp`, { recursive: true, force: true })
    sh('git', ['init', '-q', '--bare', `${pushed}.tmp`])
    for (const back of [250, 200, 150, 100, 50, 0]) sh('git', ['--git-dir', wide, 'push', '-q', `${pushed}.tmp`, `main~${back}:refs/heads/main`])
    sh('mv', [`${pushed}.tmp`, pushed])
  }
  const bitmap = path.join(REPOS, 'wide-bitmap.git')
  if (!existsSync(path.join(bitmap, 'HEAD'))) {
    rmSync(`${bitmap}.tmp`, { recursive: true, force: true })
    sh('git', ['clone', '-q', '--bare', '--no-local', pushed, `${bitmap}.tmp`])
    sh('git', ['--git-dir', `${bitmap}.tmp`, 'repack', '-q', '-adb'])
    sh('mv', [`${bitmap}.tmp`, bitmap])
  }
}

/** The protocol v2 fetch of a full clone of `oid` (no haves). */
function cloneBody(oid: string): string {
  return pkt('command=fetch\n') + pkt('agent=git/2.39.5\n') + pkt('object-format=sha1\n') + '0001'
    + pkt('ofs-delta\n') + pkt(`want ${oid}\n`) + pkt('done\n') + '0000'
}

/** pkt-line framing of one line */
const pkt = (s: string): string => `${(s.length + 4).toString(16).padStart(4, '0')}${s}`

/** The protocol v2 fetch a CI runner sends for `git fetch --depth 1` of `oid` (no haves). */
function shallowFetchBody(oid: string): string {
  return pkt('command=fetch\n') + pkt('agent=git/2.39.5\n') + pkt('object-format=sha1\n') + '0001'
    + pkt('thin-pack\n') + pkt('ofs-delta\n') + pkt('deepen 1\n') + pkt(`want ${oid}\n`) + pkt('done\n') + '0000'
}

interface Storm { seconds: number; cpuMs: number; failed: number; rssPeak: number }

/** One fetch over its own connection: resolves true when the whole answer arrived with 200. */
function fetchOnce(url: URL, body: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request(url, { method: 'POST', agent: false, timeout: 120_000, headers: { 'content-type': 'application/x-git-upload-pack-request', 'git-protocol': 'version=2', 'content-length': body.length } }, (res) => {
      res.on('data', () => {})
      res.on('end', () => resolve(res.statusCode === 200 && res.complete))
      res.on('error', () => resolve(false))
    })
    req.on('error', () => resolve(false))
    req.on('timeout', () => req.destroy())
    req.end(body)
  })
}

async function storm(w: Started, body: Buffer | Buffer[], repo = 'wide.git'): Promise<Storm> {
  const pid = w.proc.pid!
  const url = new URL(`${w.url}/${repo}/git-upload-pack`)
  const before = treeTicks(pid)
  let rssPeak = rssOf(pid)
  const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf(pid)) }, 50)
  const t0 = performance.now()
  const results = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => fetchOnce(url, Array.isArray(body) ? body[i]! : body)))
  const seconds = (performance.now() - t0) / 1000
  clearInterval(sampler)
  // the children reaped last are counted once their parent has waited for them
  await new Promise((r) => setTimeout(r, 200))
  return { seconds, cpuMs: (treeTicks(pid) - before) * 10, failed: results.filter((ok) => !ok).length, rssPeak }
}

async function main(): Promise<void> {
  mkdirSync(REPOS, { recursive: true })
  makeWideRepo(path.join(REPOS, 'wide.git'))
  makePushedRepos(path.join(REPOS, 'wide.git'))
  const data = (name: string) => path.join(BENCH, `data-${name}`)
  for (const name of ['on', 'off']) {
    rmSync(data(name), { recursive: true, force: true })
    for (const repo of ['wide', 'wide-pushed', 'wide-bitmap']) sh(process.execPath, [CLI, 'repo', 'visibility', repo, 'public', '--data', data(name), '--repos', REPOS, '--init'])
  }
  const packs = (repo: string) => readdirSync(path.join(REPOS, repo, 'objects', 'pack')).filter((n) => n.endsWith('.pack')).length
  const tip = sh('git', ['--git-dir', path.join(REPOS, 'wide.git'), 'rev-parse', 'main']).trim()
  const bodyFile = path.join(BENCH, 'shallow-fetch.body')
  writeFileSync(bodyFile, shallowFetchBody(tip))
  const body = Buffer.from(shallowFetchBody(tip))
  // fetches asked for once each: 16 other commits per round, never repeated (what the cache costs
  // the ~75% of packs nobody asks for twice: the hook's round trip, then pack-objects as before)
  const commits = sh('git', ['--git-dir', path.join(REPOS, 'wide.git'), 'rev-list', '--skip=2', `--max-count=${CONCURRENT * ROUNDS * 2}`, 'main']).trim().split('\n')
  const uniqueBodies = (round: number, side: number) => commits.slice((round * 2 + side) * CONCURRENT, (round * 2 + side + 1) * CONCURRENT).map((c) => Buffer.from(shallowFetchBody(c)))
  const warmBody = Buffer.from(shallowFetchBody(sh('git', ['--git-dir', path.join(REPOS, 'wide.git'), 'rev-parse', 'main~1']).trim()))

  const common = ['--repos', REPOS, '--hg-processes', '0', '--drain-grace-ms', '0', '--heavy-limit', '32', '--full-clone-limit', '32', '--client-heavy-limit', '32', '--repo-heavy-limit', '32']
  const on = await startWorker([...common, '--data', data('on'), '--pack-cache', '--pack-cache-write-on', '2'])
  const off = await startWorker([...common, '--data', data('off'), '--no-pack-cache'])
  try {
    for (const w of [on, off]) for (let i = 0; i < 2; i++) await storm(w, warmBody)
    const cacheDir = path.join(data('on'), 'pack-cache')
    const cached = () => readdirSync(cacheDir).filter((n) => n.endsWith('.pack'))
    const warmEntries = new Set(cached())
    let shallowEntry: string | undefined // the tip's shallow pack, for the floor's free-pack hook
    const r: Record<'on' | 'off', Storm[]> = { on: [], off: [] }
    const unique: Record<'on' | 'off', Storm[]> = { on: [], off: [] }
    // full clones of the repo as pushes left it, and of its bitmap-repacked copy; the first
    // round of each (the one that writes the entry) is left out of the medians like the shallow one's
    const fullBody = Buffer.from(cloneBody(tip))
    const full: Record<'pushed' | 'bitmap', Record<'on' | 'off', Storm[]>> = { pushed: { on: [], off: [] }, bitmap: { on: [], off: [] } }
    let cloneFailures = 0
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, w] of (round % 2 ? [['off', off], ['on', on]] : [['on', on], ['off', off]]) as [('on' | 'off'), Started][]) {
        r[name].push(await storm(w, body))
        if (name === 'on') shallowEntry ??= cached().find((n) => !warmEntries.has(n))
        unique[name].push(await storm(w, uniqueBodies(round, name === 'on' ? 0 : 1)))
        for (const kind of ['pushed', 'bitmap'] as const) full[kind][name].push(await storm(w, fullBody, `wide-${kind}.git`))
        const dir = path.join(BENCH, `check-${name}`)
        rmSync(dir, { recursive: true, force: true })
        const c = await timeAsync('git', ['clone', '-q', '--depth', '1', `${w.url}/wide.git`, dir])
        if (c.code !== 0 || (await timeAsync('git', ['-C', dir, 'fsck', '--strict'])).code !== 0) cloneFailures++
        rmSync(dir, { recursive: true, force: true })
      }
    }
    // the floor beside it: git alone (no worker, no HTTP), CPU per fetch with a free pack
    // (the hook just cats the cached entry) and without a cache
    const entry = shallowEntry
    const gitCpu = (n: number, hook: string | undefined): number => {
      const cfg = hook ? `-c uploadpack.packObjectsHook=${hook}` : ''
      const out = sh('bash', ['-c', `TIMEFORMAT='%U %S'; { time (for i in $(seq ${n}); do GIT_PROTOCOL=version=2 git ${cfg} upload-pack --stateless-rpc '${path.join(REPOS, 'wide.git')}' < '${bodyFile}'; done > /dev/null 2>&1) ; } 2>&1`])
      const [user, sys] = out.trim().split('\n').pop()!.split(' ').map(Number)
      return ((user! + sys!) * 1000) / n
    }
    const catHook = path.join(BENCH, 'cat-hook.sh')
    writeFileSync(catHook, `#!/bin/sh\ncat > /dev/null\nexec cat '${path.join(cacheDir, entry ?? 'none')}'\n`, { mode: 0o755 })
    const floor = { cached: gitCpu(16, catHook), uncached: gitCpu(4, undefined) }
    // and the same storms against the HTTP floor (http-floor.ts: no auth, no checks, git's
    // pack written straight into the client socket), with that free pack and without a cache:
    // what a fetch costs when the server in front costs nearly nothing
    const fronts = { cached: await startFloor(REPOS, catHook), uncached: await startFloor(REPOS) }
    const fr: Record<'cached' | 'uncached', Storm[]> = { cached: [], uncached: [] }
    try {
      for (const w of Object.values(fronts)) await storm(w, warmBody)
      for (let round = 0; round < ROUNDS; round++) {
        for (const name of (round % 2 ? ['uncached', 'cached'] : ['cached', 'uncached']) as ('cached' | 'uncached')[]) fr[name].push(await storm(fronts[name], body))
      }
    } finally {
      for (const w of Object.values(fronts)) await w.stop()
    }

    const tput = (s: Storm[]) => median(s.map((x) => CONCURRENT / x.seconds))
    const cpu = (s: Storm[]) => median(s.map((x) => x.cpuMs / CONCURRENT))
    // the first storm of the cache-on worker met a commit it had never seen: reported apart
    const [first, ...later] = r.on
    const results = {
      fetches_per_s: { on: tput(later), off: tput(r.off) },
      throughput_on_over_off: tput(later) / tput(r.off),
      cpu_ms_per_fetch: { on: cpu(later), off: cpu(r.off) },
      cpu_on_over_off: cpu(later) / cpu(r.off),
      first_storm_new_commit: { fetches_per_s: CONCURRENT / first!.seconds, cpu_ms_per_fetch: first!.cpuMs / CONCURRENT, cpu_over_off: first!.cpuMs / CONCURRENT / cpu(r.off) },
      unique_fetches: { cpu_ms_per_fetch: { on: cpu(unique.on), off: cpu(unique.off) }, cpu_on_over_off: cpu(unique.on) / cpu(unique.off), fetches_per_s: { on: tput(unique.on), off: tput(unique.off) } },
      rss_peak_mb: { on: Math.max(...r.on.map((x) => x.rssPeak)) / 1048576, off: Math.max(...r.off.map((x) => x.rssPeak)) / 1048576 },
      disk_written_per_miss_bytes: entry ? statSync(path.join(cacheDir, entry)).size : 0,
      full_clones: Object.fromEntries((['pushed', 'bitmap'] as const).map((kind) => {
        const on = full[kind].on.slice(1)
        return [kind, { packs: packs(`wide-${kind}.git`), fetches_per_s: { on: tput(on), off: tput(full[kind].off) }, throughput_on_over_off: tput(on) / tput(full[kind].off), cpu_ms_per_fetch: { on: cpu(on), off: cpu(full[kind].off) }, cpu_on_over_off: cpu(on) / cpu(full[kind].off) }]
      })) as Record<'pushed' | 'bitmap', { packs: number; fetches_per_s: { on: number; off: number }; throughput_on_over_off: number; cpu_ms_per_fetch: { on: number; off: number }; cpu_on_over_off: number }>,
      failed_fetches: [...r.on, ...r.off, ...unique.on, ...unique.off, ...Object.values(full).flatMap((x) => [...x.on, ...x.off])].reduce((s, x) => s + x.failed, 0),
      failed_checks: cloneFailures,
      floor_git_cpu_ms_per_fetch: floor,
      floor_ratio: floor.cached / floor.uncached,
      http_floor: { fetches_per_s: { cached: tput(fr.cached), uncached: tput(fr.uncached) }, cpu_ms_per_fetch: { cached: cpu(fr.cached), uncached: cpu(fr.uncached) } },
      rounds: ROUNDS,
    }
    const yes = (ok: boolean) => (ok ? 'yes' : 'NO')
    console.log(table([
      ['measure', 'cache on', 'cache off', 'ratio', 'target', 'met'],
      [`shallow fetches/s (${CONCURRENT} at once; on: median of the ${ROUNDS - 1} storms after the first, off: of ${ROUNDS})`, results.fetches_per_s.on.toFixed(1), results.fetches_per_s.off.toFixed(1), results.throughput_on_over_off.toFixed(2), '>= 4', yes(results.throughput_on_over_off >= 4)],
      ['server CPU per fetch, ms (worker and children)', results.cpu_ms_per_fetch.on.toFixed(0), results.cpu_ms_per_fetch.off.toFixed(0), results.cpu_on_over_off.toFixed(2), '<= 0.20', yes(results.cpu_on_over_off <= 0.2)],
      ['the first storm of a new commit: fetches/s, CPU ms per fetch (ratio to off)', results.first_storm_new_commit.fetches_per_s.toFixed(1), results.first_storm_new_commit.cpu_ms_per_fetch.toFixed(0), results.first_storm_new_commit.cpu_over_off.toFixed(2), '', ''],
      ['fetches asked for once (16 commits at once, none repeated): CPU ms per fetch', results.unique_fetches.cpu_ms_per_fetch.on.toFixed(0), results.unique_fetches.cpu_ms_per_fetch.off.toFixed(0), results.unique_fetches.cpu_on_over_off.toFixed(2), '', ''],
      ...(['pushed', 'bitmap'] as const).flatMap((kind) => {
        const f = results.full_clones[kind]
        const what = kind === 'pushed' ? `as pushes left it, ${f.packs} packs` : 'repacked with bitmaps'
        return [
          [`full clones, 16 at once, repo ${what}: fetches/s`, f.fetches_per_s.on.toFixed(1), f.fetches_per_s.off.toFixed(1), f.throughput_on_over_off.toFixed(2), '', ''],
          [`full clones, repo ${what}: CPU ms per fetch`, f.cpu_ms_per_fetch.on.toFixed(0), f.cpu_ms_per_fetch.off.toFixed(0), f.cpu_on_over_off.toFixed(2), '', ''],
        ]
      }),
      ['floor: git upload-pack alone, CPU ms per fetch (free pack / none)', floor.cached.toFixed(0), floor.uncached.toFixed(0), (floor.cached / floor.uncached).toFixed(2), '', ''],
      ['floor: HTTP floor (no auth, pack straight into the socket), fetches/s (free pack / none)', results.http_floor.fetches_per_s.cached.toFixed(1), results.http_floor.fetches_per_s.uncached.toFixed(1), (results.http_floor.fetches_per_s.cached / results.http_floor.fetches_per_s.uncached).toFixed(2), '', ''],
      ['floor: HTTP floor, CPU ms per fetch (free pack / none)', results.http_floor.cpu_ms_per_fetch.cached.toFixed(0), results.http_floor.cpu_ms_per_fetch.uncached.toFixed(0), (results.http_floor.cpu_ms_per_fetch.cached / results.http_floor.cpu_ms_per_fetch.uncached).toFixed(2), '', ''],
      ['worker RSS peak, MB', results.rss_peak_mb.on.toFixed(0), results.rss_peak_mb.off.toFixed(0), '', '< 150', yes(Math.max(results.rss_peak_mb.on, results.rss_peak_mb.off) < 150)],
      ['disk written per cache miss, bytes', results.disk_written_per_miss_bytes, '', '', '', ''],
      ['failed fetches; failed git clone --depth 1 checks', results.failed_fetches, results.failed_checks, '', '0', yes(results.failed_fetches + results.failed_checks === 0)],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-storm-results.json'), JSON.stringify(results, null, 2))
  } finally {
    await on.stop()
    await off.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:storm failed: ${(err as Error).message}`)
  process.exitCode = 1
})
