/**
 * The handoff's start-up self-test. Handing a socket to an `hg serve` child leans on Node
 * internals (process/node-internals.ts: a socket's bare handle, `socket.server`, and the IPC
 * handle messages that our Python extension re-implements). On any runtime the worker first
 * hands one connection of its own (a loopback socket pair) to a short-lived hg running the
 * extension and reads the answer. If that does not come back whole, bundle downloads are
 * proxied, with one warning.
 */
import net from 'node:net'
import { once } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/load.js'
import { spawnChild } from '../process/child.js'
import { hgEnv } from './spawn.js'
import { HANDOFF_PROTOCOL, HandoffLine } from './handoff.js'

const TIMEOUT_MS = 15_000
const REQUEST_LINE = 'GET /vcs-worker-handoff-self-test HTTP/1.1'

/**
 * Resolves true when a handed-over connection is answered end to end on this runtime.
 * `protocol`: the version the hand-over claims (handoff.ts HANDOFF_PROTOCOL unless a test asks
 * for another, which the child must refuse).
 */
export async function handoffWorks(config: Config, extension: string, log: FastifyBaseLogger, protocol = HANDOFF_PROTOCOL): Promise<boolean> {
  const child = spawnChild(config.hgBin, ['--config', `extensions.vcsworker=${extension}`, 'debugvcsworkerhandoff'], {
    env: hgEnv(config, { VCS_WORKER_PID: String(process.pid), VCS_WORKER_HANDOFF_SELFTEST: '1' }),
    killGraceMs: config.killGraceMs,
    ipc: true,
  })
  child.proc.stdin.end()
  child.proc.stdout.resume()
  const server = net.createServer()
  let client: net.Socket | undefined
  let timer: NodeJS.Timeout | undefined
  try {
    if (!child.channel) throw new Error('no IPC channel to the child')
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const accepted = once(server, 'connection') as Promise<[net.Socket]>
    client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    const [ours] = await accepted
    const answer = readAll(client)
    const line = new HandoffLine(child.channel, TIMEOUT_MS, () => child.kill(), protocol)
    const timedOut = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS) })
    const result = await Promise.race([line.hand(ours, { head: Buffer.from(`${REQUEST_LINE}\r\n\r\n`), addr: '127.0.0.1', timeoutBody: '', idleMs: TIMEOUT_MS }), timedOut])
    const text = await Promise.race([answer, timedOut])
    if (result.status !== 200 || !result.complete || !text.endsWith(`handoff ok: ${REQUEST_LINE}`)) {
      throw new Error(`unexpected answer (status ${result.status}): ${JSON.stringify(text.slice(-120))}; ${child.stderr().trim()}`)
    }
    log.debug({ node: process.version }, 'hg handoff self-test passed: bundle downloads are handed over')
    return true
  } catch (err) {
    log.warn({ node: process.version, reason: (err as Error).message }, 'hg handoff self-test failed on this runtime: bundle downloads are proxied')
    return false
  } finally {
    clearTimeout(timer)
    client?.destroy()
    server.close()
    child.kill()
    await child.exited
  }
}

function readAll(socket: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.once('end', () => resolve(Buffer.concat(chunks).toString('latin1')))
    socket.once('error', reject)
  })
}
