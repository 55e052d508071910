/**
 * `npm run pool:stats [-- --seconds N] [--data DIR] [--workers N] [--pool FILE.json]`: sessions per
 * second per backend of the running pool (`npm run pool` of the same data dir, by default the
 * install's, or the pool a file describes), from HAProxy's admin socket, once a second for N seconds (default 10),
 * servers-git, servers-hg and servers-web side by side; then the totals beside what the
 * workers' own metrics counted.
 */
import path from 'node:path'
import { parseArgs } from 'node:util'
import { adminSocketOf, defaultPool, loadPoolSpec, type PoolSpec } from './haproxy-config.js'
import { showStat } from './launch.js'
import { INSTALL_ROOT } from '../../src/install.js'

const BACKENDS = ['servers-git', 'servers-hg', 'servers-web']

/** Sum of a counter over the workers' /metrics, for one backend label. */
export async function workerRequests(spec: PoolSpec, backend: string): Promise<number> {
  let sum = 0
  for (const w of spec.workers) {
    try {
      const text = await (await fetch(`http://${w.address}/metrics`)).text()
      for (const line of text.split('\n')) {
        if (line.startsWith('vcs_requests_total{') && line.includes(`backend="${backend}"`)) sum += Number(line.split(' ').pop())
      }
    } catch { /* a worker that is down counts nothing */ }
  }
  return sum
}

async function main(): Promise<void> {
  let values
  try {
    values = parseArgs({ options: { seconds: { type: 'string', default: '10' }, workers: { type: 'string', default: '2' }, pool: { type: 'string' }, data: { type: 'string' } } }).values
  } catch (err) {
    throw new UsageError((err as Error).message.split(/\.\s/)[0]!)
  }
  const seconds = Number(values.seconds)
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 3600) throw new UsageError(`--seconds: expected 1..3600, got ${values.seconds}`)
  if (values.pool && values.data) throw new UsageError('give --pool or --data, not both')
  const data = path.resolve(values.data ?? path.join(INSTALL_ROOT, 'data'))
  const spec = values.pool ? loadPoolSpec(values.pool) : defaultPool(Number(values.workers) || 2, adminSocketOf(data))
  console.log(['time    ', ...BACKENDS.map((b) => `${b} sess/s`)].join('  '))
  for (let i = 0; i < seconds; i++) {
    const rows = await showStat(spec.adminSocket)
    const rate = (b: string) => rows.find((r) => r.pxname === b && r.svname === 'BACKEND')?.rate ?? 0
    console.log([new Date().toISOString().slice(11, 19), ...BACKENDS.map((b) => String(rate(b)).padStart(b.length + 7))].join('  '))
    if (i < seconds - 1) await new Promise((r) => setTimeout(r, 1000))
  }
  const rows = await showStat(spec.adminSocket)
  const total = (b: string) => rows.find((r) => r.pxname === b && r.svname === 'BACKEND')?.stot ?? 0
  console.log(`totals since HAProxy started: servers-git ${total('servers-git')}, servers-hg ${total('servers-hg')}, servers-web ${total('servers-web')}`)
  console.log(`workers' metrics (vcs_requests_total, since each worker started): git ${await workerRequests(spec, 'git')}, hg ${await workerRequests(spec, 'hg')}`)
}

class UsageError extends Error {}

main().catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`pool:stats: ${err.message}\nusage: npm run pool:stats [-- --seconds N] [--data DIR] [--pool FILE.json]\n`)
    process.exitCode = 2
    return
  }
  process.stderr.write(`pool:stats: ${(err as Error).message} (is \`npm run pool\` running?)\n`)
  process.exitCode = 1
})
