/**
 * Loaded into every test process before its file (package.json "tap" → "node-arg": --import):
 * 1. Test HTTP clients (`fetch`) open a connection per request (`Connection: close`) unless a test
 *    sets the header itself. A worker closes an idle keep-alive connection after
 *    keepAliveTimeoutMs, and undici may pick that connection for its next request in the same
 *    moment, on a loaded machine, which fails with ECONNRESET ("fetch failed") although the
 *    worker did nothing wrong. No test measures connection reuse through fetch; the ones about
 *    keep-alive use raw sockets (helpers/worker.ts rawRequest).
 * 2. When the file's process exits, no process it started may be left running: each one still a
 *    child of it is named on stderr and the file fails.
 */
import { execFileSync } from 'node:child_process'

const realFetch = globalThis.fetch
globalThis.fetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined))
  if (!headers.has('connection')) headers.set('connection', 'close')
  return realFetch(input, { ...init, headers })
}

process.once('exit', () => {
  let out = ''
  try {
    out = execFileSync('ps', ['-o', 'pid=,stat=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' })
  } catch {
    return // no children at all: ps exits 1 with nothing to list
  }
  const left = out.split('\n').map((l) => l.trim()).filter((l) => l && !/^\d+\s+\S+\s+ps -o /.test(l) && !/^\d+\s+Z/.test(l))
  if (!left.length) return
  process.stderr.write(`test file left ${left.length} child process(es) running:\n${left.map((l) => `  ${l}`).join('\n')}\n`)
  process.exitCode = 1
})
