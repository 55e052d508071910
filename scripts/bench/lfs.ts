/**
 * `npm run bench:lfs`, one run, interleaved: a 200 MB Git LFS object
 * downloaded through the worker against the same file served by nginx as a static file (curl
 * to /dev/null for both, throughput; target worker/nginx >= 0.9); uploaded through the worker
 * (`curl -T`, as a client would) against `cp` of the file plus `sha256sum` of the
 * copy on the same disk (target <= 1.3x the time); the worker's RSS during 8 concurrent 200 MB
 * downloads and then 8 concurrent uploads (target <= 150 MB). 127.0.0.1 only; 9 rounds each
 * (medians of 5 moved by +-10% between runs on this 2-core VM), after one warm-up round that is
 * not counted. nginx serves with its defaults (sendfile off: 32 KiB reads and writes); with
 * `sendfile on` (Debian's stock nginx.conf) it is measured beside, and is slower on loopback.
 * Beside them, in the same run, the Node floor (lfs-floor.ts): the least a Node.js server does to
 * serve and receive the file, under the same load, so what Node itself costs (no sendfile, a
 * fresh buffer per request-body chunk) is told apart from what the worker adds; and the relay
 * floor: the worker's relay started per download by a bare server (the worker starts its relays
 * ahead of the download), what a fork and exec per download would cost beside nginx.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, cpSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { CLI, ROOT, freePort, median, rssOf, sh, startNginx, startWorker, stopProcess, table, timeAsync, treeTicks, type Started } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-lfs')
const MB = 200
const ROUNDS = 9
const CONCURRENT = 8
const yes = (ok: boolean): string => (ok ? 'yes' : 'NO')

/** The object, made once and kept: 200 MB of random bytes and its oid. */
async function object(file: string): Promise<string> {
  if (!existsSync(file) || statSync(file).size !== MB * 1024 * 1024) {
    const out = createWriteStream(file)
    for (let i = 0; i < MB; i++) if (!out.write(randomBytes(1024 * 1024))) await new Promise<void>((r) => out.once('drain', () => r()))
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())))
  }
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** A PUT of `file`, streamed from disk; resolves with its status. */
function put(url: string, file: string, auth: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'PUT', headers: { authorization: auth, 'content-length': statSync(file).size } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    createReadStream(file, { highWaterMark: 1024 * 1024 }).pipe(req)
  })
}

/** A PUT of `file` by curl (as the downloads: the bench's own process never competes with the server for the CPUs); its time. */
async function curlPutMs(url: string, file: string, auth?: string): Promise<number> {
  const r = await timeAsync('curl', ['-sf', '-o', '/dev/null', '-T', file, '-H', 'Expect:', ...(auth ? ['-H', `Authorization: ${auth}`] : []), url])
  if (r.code !== 0) throw new Error(`curl -T ${url} failed: ${r.stderr}`)
  return r.ms
}

async function curlMs(url: string, auth?: string): Promise<number> {
  const r = await timeAsync('curl', ['-sf', '-o', '/dev/null', ...(auth ? ['-H', `Authorization: ${auth}`] : []), url])
  if (r.code !== 0) throw new Error(`curl ${url} failed: ${r.stderr}`)
  return r.ms
}

/** The Node floor (lfs-floor.ts) on a free port, serving `file`, receiving into `dir`. */
async function startLfsFloor(file: string, dir: string): Promise<Started> {
  const proc = spawn(process.execPath, [path.join(path.dirname(fileURLToPath(import.meta.url)), 'lfs-floor.js'), file, dir], { stdio: ['ignore', 'pipe', 'inherit'] })
  const port = await new Promise<string>((resolve, reject) => {
    proc.stdout!.once('data', (c: Buffer) => resolve(c.toString().trim()))
    proc.once('exit', () => reject(new Error('the Node floor server did not start')))
  })
  return { url: `http://127.0.0.1:${port}`, proc, output: () => '', stop: () => stopProcess(proc) }
}

/** Peak RSS of `pid` while `work` runs (sampled every 50 ms). */
async function peakRss(pid: number, work: () => Promise<unknown>): Promise<number> {
  let peak = rssOf(pid)
  const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 50)
  try {
    await work()
  } finally {
    clearInterval(sampler)
  }
  return Math.max(peak, rssOf(pid))
}

const mb = (bytes: number): number => Math.round(bytes / 1048576)

async function main(): Promise<void> {
  mkdirSync(BENCH, { recursive: true })
  const file = path.join(BENCH, 'object.bin')
  const oid = await object(file)
  const repos = path.join(BENCH, 'repos')
  const data = path.join(BENCH, 'data')
  const floorDir = path.join(BENCH, 'floor')
  for (const dir of [repos, data, floorDir]) rmSync(dir, { recursive: true, force: true })
  mkdirSync(floorDir, { recursive: true })
  cpSync(path.join(ROOT, 'repos-fixture'), repos, { recursive: true })
  const admin = (args: string[], input?: string) => sh(process.execPath, [CLI, ...args, '--data', data, '--repos', repos, '--init'], { input })
  admin(['user', 'add', 'bench'], 'bench-password\n')
  admin(['grant', 'bench', 'demo', 'write'])
  const auth = `Basic ${Buffer.from('bench:bench-password').toString('base64')}`
  const stored = path.join(repos, 'demo.git', 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid)
  const copy = path.join(BENCH, 'copy.bin')

  // nginx serves the same bytes as a static file
  const web = path.join(BENCH, 'nginx')
  mkdirSync(path.join(web, 'root'), { recursive: true })
  cpSync(file, path.join(web, 'root', 'object.bin'))
  const nginx = await startNginx(web, await freePort(), 2, `location / { root ${path.join(web, 'root')}; }`)
  let nginxSendfile: Awaited<ReturnType<typeof startNginx>> | undefined
  let worker: Started | undefined
  let floor: Started | undefined
  try {
    mkdirSync(path.join(BENCH, 'nginx-sendfile'), { recursive: true })
    nginxSendfile = await startNginx(path.join(BENCH, 'nginx-sendfile'), await freePort(), 2, `sendfile on; location / { root ${path.join(web, 'root')}; }`)
    worker = await startWorker(['--repos', repos, '--data', data, '--hg-processes', '0', '--heavy-limit', '32', '--full-clone-limit', '32', '--client-heavy-limit', '32', '--repo-heavy-limit', '32'])
    floor = await startLfsFloor(file, floorDir)
    const objectUrl = `${worker.url}/demo.git/info/lfs/objects/${oid}`
    const floorUrl = `${floor.url}/`
    const workerPid = worker.proc.pid!
    const floorPid = floor.proc.pid!
    const t = { upload: [] as number[], floorUpload: [] as number[], cpSha: [] as number[], download: [] as number[], floorDownload: [] as number[], relayFloor: [] as number[], nginx: [] as number[], nginxSendfile: [] as number[] }
    const cpu = { download: 0, floorDownload: 0, relayFloor: 0 }
    // round -1 warms up and is not counted: the worker's first authenticated request derives the
    // credential's key (scrypt, 0.7 s), and each side's first 200 MB write meets a cold page cache
    for (let round = -1; round < ROUNDS; round++) {
      const keep = round >= 0
      rmSync(stored, { force: true })
      const uploads = [
        ['upload', () => curlPutMs(objectUrl, file, auth)],
        ['floorUpload', () => curlPutMs(floorUrl, file)],
        ['cpSha', async () => { sh('cp', [file, copy]); sh('sha256sum', [copy]); rmSync(copy, { force: true }) }],
      ] as const
      for (let i = 0; i < uploads.length; i++) {
        const [key, work] = uploads[(i + round + 1) % uploads.length]!
        const t0 = performance.now()
        await work()
        if (keep) t[key].push(performance.now() - t0)
      }
      const downloads = [['download', objectUrl, auth, workerPid], ['floorDownload', floorUrl, undefined, floorPid], ['relayFloor', `${floorUrl}relay`, undefined, floorPid], ['nginx', `${nginx.url}/object.bin`, undefined, 0], ['nginxSendfile', `${nginxSendfile.url}/object.bin`, undefined, 0]] as const
      for (let i = 0; i < downloads.length; i++) {
        const [key, url, a, pid] = downloads[(i + round + 1) % downloads.length]!
        // the server and every process it started (the worker's relay, through the spawn helper)
        const c0 = pid ? treeTicks(pid) : 0
        const ms = await curlMs(url, a)
        if (!keep) continue
        t[key].push(ms)
        if (key !== 'nginx' && key !== 'nginxSendfile') cpu[key] += (treeTicks(pid) - c0) * 10 / ROUNDS
      }
    }

    // RSS: 8 downloads at once, then 8 uploads at once; the worker, then the floor under the same load
    const idle = { worker: rssOf(workerPid), floor: rssOf(floorPid) }
    const peakDownloads = {
      worker: await peakRss(workerPid, () => Promise.all(Array.from({ length: CONCURRENT }, () => curlMs(objectUrl, auth)))),
      floor: await peakRss(floorPid, () => Promise.all(Array.from({ length: CONCURRENT }, () => curlMs(floorUrl)))),
    }
    rmSync(stored, { force: true })
    let statuses: number[] = []
    const peakUploads = {
      worker: await peakRss(workerPid, async () => { statuses = await Promise.all(Array.from({ length: CONCURRENT }, () => put(objectUrl, file, auth))) }),
      floor: await peakRss(floorPid, () => Promise.all(Array.from({ length: CONCURRENT }, () => put(floorUrl, file, auth)))),
    }
    const failed = statuses.filter((s) => s !== 200).length
    const peak = { worker: Math.max(peakDownloads.worker, peakUploads.worker), floor: Math.max(peakDownloads.floor, peakUploads.floor) }

    const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>
    const downloadRatio = m.nginx / m.download // throughput worker / nginx
    const floorRatio = m.nginx / m.floorDownload
    const uploadRatio = m.upload / m.cpSha
    const r2 = (x: number): string => x.toFixed(2)
    const results = {
      object_mb: MB,
      rounds: ROUNDS,
      ms: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.map(Math.round)])),
      download_throughput_worker_over_nginx: downloadRatio,
      download_throughput_node_floor_over_nginx: floorRatio,
      download_throughput_worker_over_node_floor: m.floorDownload / m.download,
      download_throughput_relay_floor_over_nginx: m.nginx / m.relayFloor,
      download_throughput_nginx_sendfile_over_nginx: m.nginx / m.nginxSendfile,
      download_throughput_worker_over_relay_floor: m.relayFloor / m.download,
      download_cpu_ms: { worker: Math.round(cpu.download), node_floor: Math.round(cpu.floorDownload), relay_floor: Math.round(cpu.relayFloor) },
      upload_time_over_cp_sha256sum: uploadRatio,
      upload_time_node_floor_over_cp_sha256sum: m.floorUpload / m.cpSha,
      rss_mb: {
        worker: { idle: mb(idle.worker), peak_8_downloads: mb(peakDownloads.worker), peak_8_uploads: mb(peakUploads.worker) },
        node_floor: { idle: mb(idle.floor), peak_8_downloads: mb(peakDownloads.floor), peak_8_uploads: mb(peakUploads.floor) },
      },
      failed_concurrent_uploads: failed,
    }
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      [`download ${MB} MB, worker / nginx static file, throughput (${Math.round(m.download)} / ${Math.round(m.nginx)} ms)`, r2(downloadRatio), '>= 0.9', yes(downloadRatio >= 0.9)],
      [`  Node floor / nginx (${Math.round(m.floorDownload)} ms): what Node can do without sendfile`, r2(floorRatio), '', ''],
      ['  worker / Node floor', r2(m.floorDownload / m.download), '', ''],
      [`  nginx with sendfile on / nginx (${Math.round(m.nginxSendfile)} ms)`, r2(m.nginx / m.nginxSendfile), '', ''],
      [`  relay floor / nginx (${Math.round(m.relayFloor)} ms): the relay started per download`, r2(m.nginx / m.relayFloor), '', ''],
      ['  worker / relay floor', r2(m.relayFloor / m.download), '(the worker\'s own cost)', ''],
      [`  CPU per download (with the processes started): worker ${Math.round(cpu.download)} ms, Node floor ${Math.round(cpu.floorDownload)} ms, relay floor ${Math.round(cpu.relayFloor)} ms`, '', '', ''],
      [`upload ${MB} MB through the worker / cp + sha256sum (${Math.round(m.upload)} / ${Math.round(m.cpSha)} ms)`, r2(uploadRatio), '<= 1.3', yes(uploadRatio <= 1.3)],
      [`  Node floor / cp + sha256sum (${Math.round(m.floorUpload)} ms)`, r2(m.floorUpload / m.cpSha), '', ''],
      [`worker RSS peak, ${CONCURRENT} downloads then ${CONCURRENT} uploads at once (MB; idle ${mb(idle.worker)}, downloads ${mb(peakDownloads.worker)}, uploads ${mb(peakUploads.worker)})`, mb(peak.worker), '<= 150', yes(mb(peak.worker) <= 150)],
      [`  Node floor RSS peak (idle ${mb(idle.floor)}, downloads ${mb(peakDownloads.floor)}, uploads ${mb(peakUploads.floor)})`, mb(peak.floor), '', ''],
      ['  growth over idle under the same load, worker / Node floor (MB)', `${mb(peak.worker - idle.worker)} / ${mb(peak.floor - idle.floor)}`, '', ''],
      ['failed concurrent uploads', failed, '0', yes(failed === 0)],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-lfs-results.json'), JSON.stringify(results, null, 2))
  } finally {
    await worker?.stop()
    await floor?.stop()
    await nginx.stop()
    await nginxSendfile?.stop()
    rmSync(floorDir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  console.error(`bench:lfs failed: ${(err as Error).message}`)
  process.exitCode = 1
})
