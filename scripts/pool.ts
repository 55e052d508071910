/**
 * `npm run pool [-- --workers N]`: HAProxy, N workers (default 2) sharing data/repos and the
 * auth store in data/, and a stand-in for the web application, all on loopback, with the
 * configuration `vcs-worker haproxy-config --workers N` prints. Ctrl-C stops everything.
 */
import path from 'node:path'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { defaultPool } from '../src/pool/haproxy.js'
import { Pool } from '../src/pool/launch.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { workers: { type: 'string', default: '2' } } })
  const n = Number(values.workers)
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new Error(`--workers: expected 1..16, got ${values.workers}`)
  const spec = defaultPool(n, path.join(ROOT, 'data', 'pool', 'haproxy.sock'))
  const runDir = path.join(ROOT, 'data', 'pool')
  const pool = await Pool.start({ spec, reposDir: path.join(ROOT, 'data', 'repos'), dataDir: path.join(ROOT, 'data'), runDir, workerArgs: ['--drain-grace-ms', '3000'] })
  process.stdout.write([
    `pool of ${n} workers behind HAProxy:`,
    `  clone:        git clone ${pool.url}/demo.git   |   hg clone ${pool.url}/demo-hg`,
    `  web (stand-in): ${pool.url}/`,
    `  HAProxy stats:  http://${spec.stats}/   admin socket ${spec.adminSocket}`,
    ...spec.workers.map((w) => `  worker ${w.name}: http://${w.address}/  agent ${w.agentPort}  metrics http://${w.address}/metrics`),
    `  logs in ${runDir}; sessions per backend: npm run pool:stats`,
    'Ctrl-C stops everything.',
    '',
  ].join('\n'))
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    process.stdout.write('stopping the pool...\n')
    pool.stop().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1) })
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

main().catch((err: unknown) => {
  process.stderr.write(`pool: ${(err as Error).message}\n`)
  process.exitCode = 1
})
