/**
 * `npm run pool [-- --workers N] [--data DIR] [--ports fixed|auto] [--auth-store sqlite|postgres|URL]`:
 * HAProxy, N workers (default 2) sharing DIR/repos, and a stand-in for the web application, all
 * on loopback, with the configuration `vcs-worker haproxy-config --workers N` prints (`--ports
 * auto`: free ports from the OS instead). The accounts: the SQLite store in DIR shared by every
 * worker (default); `postgres`, a local PostgreSQL in DIR/pool/postgres with each worker on a data
 * dir of its own, as on separate hosts; or a postgres:// URL of a real server. Ctrl-C stops
 * everything.
 */
import path from 'node:path'
import { existsSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { adminSocketOf, defaultPool } from './haproxy-config.js'
import { Pool, freePort } from './launch.js'
import { prepareLocalStore, type PoolStore } from './store.js'
import { INSTALL_ROOT } from '../../src/install.js'

// the install's data dir, as `npm start` made it, wherever the command is run from
const ROOT = INSTALL_ROOT

async function main(): Promise<void> {
  let values
  try {
    values = parseArgs({ options: { workers: { type: 'string', default: '2' }, data: { type: 'string' }, ports: { type: 'string', default: 'fixed' }, 'auth-store': { type: 'string', default: 'sqlite' } } }).values
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const n = Number(values.workers)
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new UsageError(`--workers: expected 1..16, got ${values.workers}`)
  if (values.ports !== 'fixed' && values.ports !== 'auto') throw new UsageError(`--ports: fixed or auto, got ${values.ports}`)
  const authStore = values['auth-store']!
  if (!/^(sqlite|postgres|postgres(ql)?:\/\/.+)$/.test(authStore)) throw new UsageError('--auth-store: sqlite, postgres (a local server) or a postgres:// URL')
  const data = path.resolve(values.data ?? path.join(ROOT, 'data'))
  const runDir = path.join(data, 'pool')
  const spec = defaultPool(n, adminSocketOf(data))
  if (values.ports === 'auto') {
    // ports from the OS: the workers take port 0 and say which they got
    for (const key of ['frontend', 'stats', 'web'] as const) spec[key] = `127.0.0.1:${await freePort()}`
    for (const w of spec.workers) Object.assign(w, { address: '127.0.0.1:0', agentPort: 0, healthPort: 0 })
  }
  const repos = path.join(data, 'repos')
  if (!existsSync(repos)) throw new Error(`no repos dir ${repos}: run npm start once, or give --data`)
  let store: PoolStore | undefined
  if (authStore !== 'sqlite') store = await prepareLocalStore(authStore, data, runDir)
  let pool: Pool
  try {
    pool = await Pool.start({
      spec, reposDir: repos, dataDir: data, runDir,
      workerArgs: ['--drain-grace-ms', '3000', ...(store?.workerArgs ?? [])],
      // on PostgreSQL each worker keeps a data dir of its own, as it would on its own host
      argsOf: store ? (i) => ['--data', path.join(runDir, `host-${i + 1}`)] : undefined,
    })
  } catch (err) {
    await store?.stop()
    throw err
  }
  process.stdout.write([
    `pool of ${n} workers behind HAProxy:`,
    `  clone:        git clone ${pool.url}/demo.git   |   hg clone ${pool.url}/demo-hg`,
    `  web (stand-in): ${pool.url}/`,
    `  HAProxy stats:  http://${spec.stats}/   admin socket ${spec.adminSocket}`,
    ...spec.workers.map((w) => `  worker ${w.name}: http://${w.address}/  agent ${w.agentPort}  health http://${w.address.replace(/:\d+$/, '')}:${w.healthPort}/health/ready  metrics http://${w.address}/metrics`),
    ...(store?.describe ?? [`  accounts: SQLite in ${data}/auth.sqlite, shared by every worker (one machine)`]),
    `  logs in ${runDir}; sessions per backend: npm run pool:stats`,
    'Ctrl-C stops everything.',
    '',
  ].join('\n'))
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    process.stdout.write('stopping the pool...\n')
    pool.stop().then(() => store?.stop()).then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1) })
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

/** Bad command line: exit 2, as the CLI does. */
class UsageError extends Error {}

main().catch((err: unknown) => {
  process.stderr.write(`pool: ${(err as Error).message}\n`)
  process.exitCode = err instanceof UsageError ? 2 : 1
})
