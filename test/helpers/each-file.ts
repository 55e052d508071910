/**
 * Loaded into every test process before its file (package.json "tap" → "node-arg": --import):
 * 1. Test HTTP clients (`fetch`) open a connection per request (`Connection: close`) unless a test
 *    sets the header itself. A worker closes an idle keep-alive connection after
 *    keepAliveTimeoutMs, and undici may pick that connection for its next request in the same
 *    moment, on a loaded machine, which fails with ECONNRESET ("fetch failed") although the
 *    worker did nothing wrong. No test measures connection reuse through fetch; the ones about
 *    keep-alive use raw sockets (helpers/worker.ts rawRequest).
 * 2. Once the file is done (its event loop empty), no process it started may be left running:
 *    a child that is still ending (sent SIGTERM by a teardown) is waited for, up to LINGER_MS;
 *    each one still there then is named on stderr and the file fails. Not counted: the spawn
 *    helper, which ends with its parent's IPC channel (helper-main.ts), and zombies. Worker
 *    threads load this file too; only the main thread checks.
 */
import { execFileSync } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { isMainThread } from 'node:worker_threads'

const realFetch = globalThis.fetch
globalThis.fetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined))
  if (!headers.has('connection')) headers.set('connection', 'close')
  return realFetch(input, { ...init, headers })
}

/** how long a child that is ending may take, once the file is done */
const LINGER_MS = 10_000

function children(): string[] {
  let out = ''
  try {
    out = execFileSync('ps', ['-o', 'pid=,stat=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' })
  } catch {
    return [] // none at all: ps exits 1 with nothing to list
  }
  return out.split('\n').map((l) => l.trim())
    .filter((l) => l && !/^\d+\s+\S+\s+ps -o /.test(l) && !/^\d+\s+Z/.test(l) && !/\/process\/helper-main\.js vcs-worker-spawn-/.test(l))
}

// the file's own process only: a worker thread it started (the probe thread) loads this too
let checked = !isMainThread
process.on('beforeExit', () => {
  if (checked) return
  checked = true
  void (async () => {
    const until = Date.now() + LINGER_MS
    let left = children()
    while (left.length && Date.now() < until) {
      await sleep(50) // polling for the children's exit, bounded: the event, not a time, ends it
      left = children()
    }
    if (!left.length) return
    process.stderr.write(`test file left ${left.length} child process(es) running:\n${left.map((l) => `  ${l}`).join('\n')}\n`)
    process.exitCode = 1
  })()
})
