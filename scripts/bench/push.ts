/**
 * `npm run bench:push`: the time a one-commit push takes through our worker (authenticated,
 * its hooks judging the ref) against the limit (`git push` to the repository's path: the same
 * receive-pack, no HTTP and no hooks), rounds interleaved. The difference is what the worker
 * and its hooks add to every push. Prints medians and their ratio; `BENCH_ROUNDS` (default 30).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { CLI, ROOT, median, sh, startWorker, table, timeAsync, type Started } from './lib.js'

const BENCH = path.join(ROOT, 'data', 'bench', 'push')
const ROUNDS = Math.min(Number(process.env.BENCH_ROUNDS ?? 30), 200)

async function main(): Promise<void> {
  rmSync(BENCH, { recursive: true, force: true })
  const repos = path.join(BENCH, 'repos')
  const data = path.join(BENCH, 'data')
  mkdirSync(repos, { recursive: true })
  const admin = (args: string[], input?: string): string => sh(process.execPath, [CLI, ...args, '--data', data, '--repos', repos, '--init'], { input })
  admin(['repo', 'create', 'bench.git', '--git'])
  admin(['user', 'add', 'bench'], 'bench-password\n')
  admin(['grant', 'bench', 'bench.git', 'write'])
  const limitRepo = path.join(BENCH, 'limit.git')
  sh('git', ['init', '-q', '--bare', limitRepo])
  const env = { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_AUTHOR_NAME: 'B', GIT_AUTHOR_EMAIL: 'b@example.invalid', GIT_COMMITTER_NAME: 'B', GIT_COMMITTER_EMAIL: 'b@example.invalid' }
  let worker: Started | undefined
  try {
    worker = await startWorker(['--repos', repos, '--data', data, '--hg-processes', '0'])
    const remote = worker.url.replace('http://', 'http://bench:bench-password@') + '/bench.git'
    const work = path.join(BENCH, 'work')
    sh('git', ['init', '-q', '-b', 'main', work], { env })
    const t = { worker: [] as number[], limit: [] as number[] }
    // round 0 warms up and is not counted: the first authenticated request derives the
    // credential's key (scrypt), and the first push creates the branch
    for (let round = 0; round <= ROUNDS; round++) {
      writeFileSync(path.join(work, 'f.txt'), `round ${round}\n`)
      sh('git', ['add', 'f.txt'], { cwd: work, env })
      sh('git', ['commit', '-q', '-m', `round ${round}`], { cwd: work, env })
      for (const [side, url] of [['worker', remote], ['limit', limitRepo]] as const) {
        const r = await timeAsync('git', ['push', '-q', url, 'main'], { cwd: work, env })
        if (r.code !== 0) throw new Error(`push to ${side} failed: ${r.stderr}`)
        if (round > 0) t[side].push(r.ms)
      }
    }
    const [w, l] = [median(t.worker), median(t.limit)]
    process.stdout.write(table([
      ['one-commit push, median of ' + ROUNDS, 'ms'],
      ['worker (HTTP, auth, hooks)', w.toFixed(1)],
      ['limit (git push to the path)', l.toFixed(1)],
      ['worker - limit', (w - l).toFixed(1)],
      ['worker / limit', (w / l).toFixed(2)],
    ]) + '\n')
    writeFileSync(path.join(ROOT, 'data', 'bench', 'push.json'), JSON.stringify({ rounds: ROUNDS, ...t }, null, 2))
  } finally {
    await worker?.stop()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:push failed: ${(err as Error).message}\n`)
  process.exitCode = 1
})
