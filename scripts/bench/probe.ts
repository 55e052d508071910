/**
 * `node dist/scripts/bench/probe.js URL PER_SECOND SECONDS`: the paced prober of lib.ts in a
 * process of its own, so what the benchmark process does meanwhile (spawning clients,
 * removing clones) never shows up as probe latency. Prints one JSON line.
 */
import { paced } from './lib.js'

const [url, rate, seconds] = process.argv.slice(2)
paced(url!, Number(rate), Number(seconds)).then((r) => {
  process.stdout.write(`${JSON.stringify(r)}\n`)
}, (err: unknown) => {
  process.stderr.write(`${(err as Error).message}\n`)
  process.exitCode = 1
})
