/**
 * The probe thread: HAProxy's agent-check and the HTTP health endpoints on `healthPort`,
 * answered on an event loop of their own. The worker's event loop streams packs and spawns
 * git; a probe answered there waits behind that work (bench:health measured tens of ms of p99
 * while 8 large clones ran). Here a probe waits for nothing: the worker posts its health
 * snapshot (probe-thread.ts) at every change and every SNAPSHOT_EVERY_MS, and the answers are built
 * from the newest one. A worker whose event loop stops posting goes red on its own: its check
 * results go stale and count as failed.
 */
import http from 'node:http'
import { readlinkSync } from 'node:fs'
import { setPriority } from 'node:os'
import { parentPort, workerData } from 'node:worker_threads'
import { AgentServer } from './agent.js'
import { listenOn } from '../http/listen.js'
import { ENDPOINT_CHECKS, endpointAnswer, type HealthSnapshot } from './checks.js'

export interface ProbeThreadInit {
  host: string
  /** -1 = no agent listener, 0 = any free port */
  agentPort: number
  /** -1 = no HTTP health listener, 0 = any free port */
  healthPort: number
  snapshot: HealthSnapshot
}

/** `ack`: answer `{ acked: true }` once this snapshot is in place */
export type ToThread = { snapshot: HealthSnapshot; ack?: boolean } | { close: true }
export type FromThread = { listening: { agentPort?: number; healthPort?: number } } | { error: string } | { acked: true }

/**
 * A probe should not wait for the scheduler either: on Linux, setpriority on a thread id sets
 * that thread alone, so this thread asks for a higher priority than the worker's (which streams
 * packs at nice 0). Raising a priority needs CAP_SYS_NICE; without it the thread stays as it is.
 */
const PROBE_NICE = -10
try {
  const tid = Number(readlinkSync('/proc/thread-self').split('/').pop())
  setPriority(tid, PROBE_NICE)
} catch { /* not permitted, or not Linux */ }

const init = workerData as ProbeThreadInit
const port = parentPort!
let snap = init.snapshot
/**
 * Each endpoint's answer, built once per snapshot and at most ANSWER_TTL_MS old, rather than per
 * probe: a flood of probes costs this thread the HTTP exchange alone. Without new snapshots (a
 * blocked worker) answers are still rebuilt, so their checks are seen to go stale.
 */
const ANSWER_TTL_MS = 100
const answers = new Map<string, { code: number; body: string; at: number }>()

/** `GET|HEAD /health/{live,git,hg,ready}`, as the worker's own port answers them. */
function answer(req: http.IncomingMessage, res: http.ServerResponse): void {
  const pathname = (req.url ?? '').split('?', 1)[0]!
  const names = ENDPOINT_CHECKS[pathname]
  let code: number
  let type = 'text/plain; charset=utf-8'
  let body: string
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    code = 405
    body = `${req.method} is not allowed here: the health port answers GET\n`
    res.setHeader('allow', 'GET, HEAD')
  } else if (pathname === '/health/live') {
    code = 200
    body = 'ok\n'
  } else if (names) {
    const now = Date.now()
    let a = answers.get(pathname)
    if (!a || now - a.at >= ANSWER_TTL_MS) {
      const { code, body } = endpointAnswer(snap, names, now)
      a = { code, body: JSON.stringify(body), at: now }
      answers.set(pathname, a)
    }
    code = a.code
    type = 'application/json; charset=utf-8'
    body = a.body
  } else {
    code = 404
    body = 'not found: the health port serves /health/live, /health/git, /health/hg and /health/ready\n'
  }
  res.writeHead(code, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' })
  res.end(req.method === 'HEAD' ? undefined : body)
}

const agent = init.agentPort >= 0 ? new AgentServer(() => snap) : undefined
let web: http.Server | undefined
if (init.healthPort >= 0) {
  web = http.createServer(answer)
  web.maxConnections = 1024
  web.headersTimeout = 10_000
  web.requestTimeout = 10_000
  web.keepAliveTimeout = 60_000 // a balancer keeps its check connection
}

async function close(): Promise<void> {
  web?.closeAllConnections()
  await Promise.all([agent?.stop(), web && new Promise((r) => web!.close(r))])
  port.close()
}

port.on('message', (m: ToThread) => {
  if ('snapshot' in m) {
    snap = m.snapshot
    answers.clear()
    if (m.ack) port.postMessage({ acked: true } satisfies FromThread)
  } else void close()
})

Promise.all([agent?.start(init.host, init.agentPort), web && listenOn(web, init.host, init.healthPort)]).then(
  ([agentPort, healthPort]) => port.postMessage({ listening: { agentPort, healthPort } } satisfies FromThread),
  (err: unknown) => {
    port.postMessage({ error: (err as Error).message } satisfies FromThread)
    void close()
  },
)
