/**
 * `npm run bench:lfs` (issue #16 point 10), one run, interleaved: a 200 MB Git LFS object
 * downloaded through the worker against the same file served by nginx as a static file (curl
 * to /dev/null for both, throughput; target worker/nginx >= 0.9); uploaded through the worker
 * (a PUT streamed from disk by this process) against `cp` of the file plus `sha256sum` of the
 * copy on the same disk (target <= 1.3x the time); the worker's RSS during 8 concurrent 200 MB
 * downloads and then 8 concurrent uploads (target <= 150 MB). 127.0.0.1 only; 5 rounds each.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, cpSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { CLI, ROOT, freePort, median, rssOf, sh, startNginx, startWorker, table, timeAsync, type Started } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench-lfs')
const MB = 200
const ROUNDS = 5
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

async function curlMs(url: string, auth?: string): Promise<number> {
  const r = await timeAsync('curl', ['-sf', '-o', '/dev/null', ...(auth ? ['-H', `Authorization: ${auth}`] : []), url])
  if (r.code !== 0) throw new Error(`curl ${url} failed: ${r.stderr}`)
  return r.ms
}

async function main(): Promise<void> {
  mkdirSync(BENCH, { recursive: true })
  const file = path.join(BENCH, 'object.bin')
  const oid = await object(file)
  const repos = path.join(BENCH, 'repos')
  const data = path.join(BENCH, 'data')
  rmSync(repos, { recursive: true, force: true })
  rmSync(data, { recursive: true, force: true })
  cpSync(path.join(ROOT, 'repos-fixture'), repos, { recursive: true })
  const admin = (args: string[], input?: string) => sh(process.execPath, [CLI, ...args, '--data', data, '--repos', repos], { input })
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
  let worker: Started | undefined
  try {
    worker = await startWorker(['--repos', repos, '--data', data, '--hg-processes', '0', '--heavy-limit', '32', '--full-clone-limit', '32', '--client-heavy-limit', '32', '--repo-heavy-limit', '32'])
    const objectUrl = `${worker.url}/demo.git/info/lfs/objects/${oid}`
    const t = { upload: [] as number[], cpSha: [] as number[], download: [] as number[], nginx: [] as number[] }
    for (let round = 0; round < ROUNDS; round++) {
      rmSync(stored, { force: true })
      const t0 = performance.now()
      const status = await put(objectUrl, file, auth)
      if (status !== 200) throw new Error(`upload answered ${status}`)
      t.upload.push(performance.now() - t0)
      rmSync(copy, { force: true })
      const t1 = performance.now()
      sh('cp', [file, copy])
      sh('sha256sum', [copy])
      t.cpSha.push(performance.now() - t1)
      const order = round % 2 ? [['download', objectUrl, auth], ['nginx', `${nginx.url}/object.bin`, undefined]] as const : [['nginx', `${nginx.url}/object.bin`, undefined], ['download', objectUrl, auth]] as const
      for (const [key, url, a] of order) t[key].push(await curlMs(url, a))
    }
    rmSync(copy, { force: true })

    // RSS: 8 downloads at once, then 8 uploads of the object at once (one file stays)
    const pid = worker.proc.pid!
    let peak = rssOf(pid)
    const idle = peak
    const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 50)
    await Promise.all(Array.from({ length: CONCURRENT }, () => curlMs(objectUrl, auth)))
    rmSync(stored, { force: true })
    const statuses = await Promise.all(Array.from({ length: CONCURRENT }, () => put(objectUrl, file, auth)))
    clearInterval(sampler)
    const failed = statuses.filter((s) => s !== 200).length

    const m = { upload: median(t.upload), cpSha: median(t.cpSha), download: median(t.download), nginx: median(t.nginx) }
    const downloadRatio = m.nginx / m.download // throughput worker / nginx
    const uploadRatio = m.upload / m.cpSha
    const results = {
      object_mb: MB,
      rounds: ROUNDS,
      ms: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.map(Math.round)])),
      download_throughput_worker_over_nginx: downloadRatio,
      upload_time_over_cp_sha256sum: uploadRatio,
      worker_rss_mb: { idle: Math.round(idle / 1048576), peak_8_transfers: Math.round(peak / 1048576) },
      failed_concurrent_uploads: failed,
    }
    console.log(table([
      ['measure', 'value', 'target', 'met'],
      [`download ${MB} MB, worker / nginx static file, throughput (${Math.round(m.download)} / ${Math.round(m.nginx)} ms)`, downloadRatio.toFixed(2), '>= 0.9', yes(downloadRatio >= 0.9)],
      [`upload ${MB} MB through the worker / cp + sha256sum (${Math.round(m.upload)} / ${Math.round(m.cpSha)} ms)`, uploadRatio.toFixed(2), '<= 1.3', yes(uploadRatio <= 1.3)],
      [`worker RSS peak, ${CONCURRENT} downloads then ${CONCURRENT} uploads at once (MB)`, results.worker_rss_mb.peak_8_transfers, '<= 150', yes(results.worker_rss_mb.peak_8_transfers <= 150)],
      ['failed concurrent uploads', failed, '0', yes(failed === 0)],
    ]))
    console.log(JSON.stringify(results, null, 2))
    writeFileSync(path.join(ROOT, 'data', 'bench-lfs-results.json'), JSON.stringify(results, null, 2))
  } finally {
    await worker?.stop()
    await nginx.stop()
  }
}

main().catch((err: unknown) => {
  console.error(`bench:lfs failed: ${(err as Error).message}`)
  process.exitCode = 1
})
