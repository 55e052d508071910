import t from 'tap'
import http from 'node:http'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { IncomingMessage } from 'node:http'
import { REPO_URLS, urlClassifier } from '../../src/http/routes.js'
import { poolOf, type Pool, type RouteId } from '../../src/http/route-table.js'
import { haproxyConfig, type PoolSpec } from '../../tools/pool/haproxy-config.js'
import { freePort } from '../../tools/pool/launch.js'
import { rawRequest, waitFor } from '../helpers/worker.js'

const OID = 'a'.repeat(64)
const LOOSE = `ab/${'c'.repeat(38)}`

/** What real clients send (git v0/v2, git-lfs, hg commands and pages, clone bundles), the workers' own URLs, and junk. */
const CORPUS: { method: string; url: string; headers?: Record<string, string> }[] = [
  { method: 'GET', url: '/demo.git/info/refs?service=git-upload-pack' },
  { method: 'GET', url: '/demo.git/info/refs?service=git-upload-pack', headers: { 'git-protocol': 'version=2' } },
  { method: 'GET', url: '/team/project.git/info/refs?service=git-receive-pack' },
  { method: 'GET', url: '/demo/info/refs?service=git-upload-pack' },
  { method: 'POST', url: '/demo.git/git-upload-pack', headers: { 'content-type': 'application/x-git-upload-pack-request' } },
  { method: 'POST', url: '/team/project.git/git-receive-pack', headers: { 'content-type': 'application/x-git-receive-pack-request' } },
  { method: 'GET', url: '/demo.git/HEAD' },
  { method: 'GET', url: '/demo.git/objects/info/packs' },
  { method: 'GET', url: `/demo.git/objects/${LOOSE}` },
  { method: 'GET', url: `/demo.git/objects/pack/pack-${'d'.repeat(40)}.idx` },
  { method: 'POST', url: '/demo.git/info/lfs/objects/batch', headers: { 'content-type': 'application/vnd.git-lfs+json' } },
  { method: 'GET', url: `/demo.git/info/lfs/objects/${OID}` },
  { method: 'PUT', url: `/demo.git/info/lfs/objects/${OID}` },
  { method: 'POST', url: '/demo.git/info/lfs/verify' },
  { method: 'GET', url: '/demo.git/info/lfs/locks?path=a.bin' },
  { method: 'POST', url: '/demo.git/info/lfs/locks/verify' },
  { method: 'POST', url: '/demo.git/info/lfs/locks/17/unlock' },
  { method: 'GET', url: '/demo-hg?cmd=capabilities' },
  { method: 'GET', url: '/demo-hg?cmd=batch', headers: { 'x-hgarg-1': 'cmds=heads+%3Bknown+nodes%3D' } },
  { method: 'GET', url: '/demo-hg?cmd=getbundle', headers: { 'x-hgproto-1': '0.1 0.2 comp=zstd,zlib,none,bzip2' } },
  { method: 'POST', url: '/demo-hg?cmd=unbundle&heads=666f726365', headers: { 'content-type': 'application/mercurial-0.1' } },
  { method: 'GET', url: '/team/hg-repo?cmd=lookup&key=tip' },
  { method: 'GET', url: '/demo-hg?cmd=clonebundles' },
  { method: 'GET', url: '/demo-hg/.hg/clonebundles/full-1700000000-abcdef.hg' },
  { method: 'GET', url: '/demo-hg' },
  { method: 'GET', url: '/demo-hg/log' },
  { method: 'GET', url: '/demo-hg/file/tip/README?style=raw' },
  { method: 'GET', url: '/health/git' },
  { method: 'GET', url: '/health/hg?cmd=capabilities' },
  { method: 'GET', url: '/metrics' },
  { method: 'GET', url: '/metrics?cmd=batch', headers: { 'git-protocol': 'version=2' } },
  { method: 'GET', url: '//health/ready' },
  { method: 'GET', url: '/%68ealth/git' },
  { method: 'GET', url: '/' },
  { method: 'GET', url: '/favicon.ico' },
  { method: 'GET', url: '/demo.git/info/refsX' },
  { method: 'GET', url: '/x?cmd=notacommand' },
  { method: 'GET', url: '/x?service=git-upload-pack', headers: { 'content-type': 'application/x-git-upload-pack-request' } },
  { method: 'GET', url: '/demo.git/info/lfs/objects/xyz' },
  { method: 'GET', url: '/.vcs/git_info_refs' },
  { method: 'GET', url: '/demo-hg?cmd=capabilities&cmd=heads' },
  { method: 'POST', url: '/demo-hg', headers: { 'content-type': 'application/mercurial-0.1' } },
]

/** The worker's verdict: the route its classifier chose, and that route's pool. */
function workerPool(method: string, url: string): { route: RouteId; pool: Pool } {
  const rewritten = urlClassifier(true)({ url, method } as IncomingMessage)
  const fixed = rewritten.split('?')[0]
  const entry = Object.entries(REPO_URLS).find(([, u]) => u === fixed)
  const route = (entry?.[0] ?? 'other') as RouteId
  const q = url.indexOf('?')
  const cmd = q === -1 ? undefined : new URLSearchParams(url.slice(q + 1)).get('cmd') ?? undefined
  return { route, pool: poolOf(route, cmd) }
}

t.test('the worker\'s route table and the HAProxy frontend rendered from it send every URL of the corpus to the same pool', async (t) => {
  // one stand-in server behind every pool; each backend tags what it forwards with its name
  const standIn = http.createServer((req, res) => res.end(String(req.headers['x-pool'] ?? 'untagged')))
  standIn.listen(0, '127.0.0.1')
  await once(standIn, 'listening')
  t.teardown(() => standIn.close())
  const address = `127.0.0.1:${(standIn.address() as { port: number }).port}`
  const sockDir = await mkdtemp(path.join(os.tmpdir(), 'vcsr-'))
  t.teardown(() => rm(sockDir, { recursive: true, force: true }))
  // HAProxy's ports are picked free and bound a moment later: a test file running beside this one
  // may take one meanwhile, and that bind failure is retried on fresh ports (at most 3 times)
  let port = 0
  for (let attempt = 1; ; attempt++) {
    const spec: PoolSpec = {
      frontend: `127.0.0.1:${await freePort()}`, stats: `127.0.0.1:${await freePort()}`, web: address, adminSocket: path.join(sockDir, 'admin.sock'),
      workers: [{ name: 'w1', address, agentPort: await freePort(), healthPort: 0 }],
      balance: 'leastconn', checkIntervalMs: 500, fall: 2, rise: 1, slowstartMs: 1000, idleTimeoutMs: 60_000,
    }
    // the frontend as generated; only the backends gain a tag (what reached them is read back)
    const cfg = haproxyConfig(spec).split('\n').flatMap((line) => {
      const m = /^backend servers-(git|hg|web)$/.exec(line)
      return m ? [line, `  http-request set-header X-Pool ${m[1]}`] : [line]
    }).join('\n')
    const file = path.join(sockDir, 'haproxy.cfg')
    await writeFile(file, cfg)
    const haproxy = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    haproxy.stderr.on('data', (c) => { stderr += c })
    const exited = once(haproxy, 'exit').then(() => 'exited' as const)
    t.teardown(() => { if (haproxy.exitCode === null && haproxy.signalCode === null) haproxy.kill('SIGKILL') })
    port = Number(spec.frontend.split(':')[1])
    // up once its git servers answer (their checks passed), or it exited
    const up = waitFor(async () => haproxy.exitCode !== null || (await rawRequest(port, 'GET', '/demo.git/info/refs?service=git-upload-pack').catch(() => undefined))?.body.toString() === 'git', 20_000, 'HAProxy\'s git servers up').then(() => 'up' as const)
    const outcome = await Promise.race([up, exited])
    if (outcome === 'up' && haproxy.exitCode === null) break
    if (attempt < 3 && /Address already in use/.test(stderr)) continue
    throw new Error(`haproxy did not start: ${stderr.slice(-400)}`)
  }

  const seen = new Set<Pool>()
  for (const { method, url, headers } of CORPUS) {
    const worker = workerPool(method, url)
    const res = await rawRequest(port, method, url, headers ?? {})
    const balancer = res.body.toString()
    t.equal(balancer, worker.pool, `${method} ${url}: the worker says ${worker.route} (${worker.pool}), HAProxy chose servers-${balancer}`)
    seen.add(worker.pool)
  }
  t.same([...seen].sort(), ['git', 'hg', 'web'], 'the corpus reaches all three pools')
})
