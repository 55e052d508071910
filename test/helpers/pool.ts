/**
 * A real pool for tests: HAProxy, worker processes and the web stand-in on 127.0.0.1, ports
 * from the OS, checks every 500 ms, over a temp copy of the fixtures with public repos and
 * alice, who may push to demo.git and demo-hg.
 */
import path from 'node:path'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { fixtureDir, FIXTURE_REPOS, clientEnv, run, TEST_SCRYPT, type T } from './worker.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { openPgStore } from '../../src/auth/pg-store.js'
import { hashPassword } from '../../src/auth/password.js'
import { Pool, freePort } from '../../tools/pool/launch.js'
import type { PoolSpec } from '../../tools/pool/haproxy-config.js'

export interface TestPool {
  pool: Pool
  url: string
  /** the pool URL with alice's credentials */
  alice: string
  dir: string
  reposDir: string
  dataDir: string
  spec: PoolSpec
  /** an hg client whose hgrc has alice's credentials for the pool */
  hg(args: string[], cwd?: string): ReturnType<typeof run>
}

/**
 * `authStore`: a PostgreSQL URL, seeded there and given to every worker, each of which then gets
 * a data dir of its own (DIR/host-N), as workers on separate hosts would: they share the repos
 * dir and the database, nothing else.
 */
export async function startTestPool(t: T, opts: { workers?: number; workerArgs?: string[]; argsOf?: (i: number) => string[]; balance?: PoolSpec['balance']; authStore?: string } = {}): Promise<TestPool> {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const store = opts.authStore ? await openPgStore({ url: opts.authStore }) : openSqliteStore(path.join(dataDir, 'auth.sqlite'))
  for (const [name, kind] of FIXTURE_REPOS) await store.setRepo(name, kind, true)
  await store.addUser('alice', await hashPassword('alice-pw', TEST_SCRYPT))
  for (const repo of ['demo.git', 'demo-hg', 'team/project.git']) await store.setGrant('alice', repo, 'write')
  await store.close()
  const n = opts.workers ?? 2
  const port = async () => `127.0.0.1:${await freePort()}`
  // a unix socket path is limited to 108 bytes: the admin socket lives in a short temp dir
  const sockDir = await mkdtemp(path.join(os.tmpdir(), 'vcsp-'))
  t.teardown(() => rm(sockDir, { recursive: true, force: true }))
  const workers = []
  // port 0: each worker takes what the OS gives it and says so; the pool configures HAProxy with that
  for (let i = 0; i < n; i++) workers.push({ name: `w${i + 1}`, address: '127.0.0.1:0', agentPort: 0, healthPort: 0 })
  // HAProxy's ports are picked free, then bound seconds later, once the workers are up: another
  // test file running beside this one may have taken one meanwhile (the OS hands out the same
  // range for port 0). That bind failure is retried on fresh ports, a bounded number of times.
  let spec: PoolSpec
  let pool: Pool
  for (let attempt = 1; ; attempt++) {
    spec = {
      frontend: await port(), stats: await port(), web: await port(), adminSocket: path.join(sockDir, 'haproxy.sock'),
      workers: workers.map((w) => ({ ...w })), balance: opts.balance ?? 'leastconn', checkIntervalMs: 500, fall: 2, rise: 2, slowstartMs: 1000, idleTimeoutMs: 600_000,
    }
    try {
      pool = await Pool.start({
        spec, reposDir, dataDir, runDir: path.join(dir, 'run'),
        workerArgs: ['--hg-processes', '1', '--log-level', 'info', '--drain-grace-ms', '2000', ...(opts.authStore ? ['--auth-store', opts.authStore] : []), ...(opts.workerArgs ?? [])],
        argsOf: opts.authStore ? (i) => ['--data', path.join(dir, `host-${i + 1}`), ...(opts.argsOf?.(i) ?? [])] : opts.argsOf,
      })
      break
    } catch (err) {
      if (attempt < 3 && /Address already in use|EADDRINUSE/.test(String((err as Error).message))) continue
      throw err
    }
  }
  t.teardown(() => pool.stop())
  const url = `http://${spec.frontend}`
  const hgrc = path.join(dir, 'hgrc-pool')
  await writeFile(hgrc, `[ui]\nusername = Test <t@example.invalid>\n[auth]\np.prefix = ${url}\np.username = alice\np.password = alice-pw\n`)
  const env = clientEnv(path.join(dir, 'client-home'), { HGRCPATH: hgrc })
  return {
    pool, url, spec, dir, reposDir, dataDir,
    alice: url.replace('http://', 'http://alice:alice-pw@'),
    hg: (args, cwd = dir) => run('hg', args, { cwd, env }),
  }
}

/** A worker's /metrics text (empty when it does not answer). */
export async function workerMetrics(p: TestPool, i: number): Promise<string> {
  try {
    return await (await fetch(`http://${p.spec.workers[i]!.address}/metrics`)).text()
  } catch {
    return ''
  }
}
