/**
 * Mercurial over HTTP: authenticate and authorize with the auth plugin, then stream the request
 * to the least busy ready `hg serve` child and its answer back. hg protocol headers pass
 * unchanged; hop-by-hop headers, credentials and our own control headers do not. `hg serve`
 * needs a Content-Length on POSTs: a chunked body is first spilled (memory, then a temp file)
 * to learn its length. A bundle download (getbundle) is not proxied but handed over: the child
 * answers on the client's connection itself (handoff.ts).
 */
import http from 'node:http'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import { BadRequestError, DISCARD_LIMIT, ServiceUnavailableError, VcsError, settleUnreadBody } from '../errors.js'
import { resolveHgRepo } from '../repos/path.js'
import type { Identity, VcsAuth } from '../auth/plugin.js'
import { decodeBody, SpillBuffer, toClientError } from '../git/body.js'
import { hgWorkClass, requestAction } from './commands.js'
import type { Admission, Release } from '../admission.js'
import type { HgChild, HgPool } from './pool.js'
import type { JournalRecovery } from './recover.js'
import { handoffHead, type HandoffLine } from './handoff.js'

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'authorization', 'cookie', 'x-vcs-worker-secret', 'x-vcs-worker-user', 'content-length', 'content-encoding'])
const SPILL_MEMORY = 1024 * 1024

export interface HgDeps {
  config: Config
  pool: HgPool
  recovery: JournalRecovery
  auth: VcsAuth
  reposRoot: string
  admission: Admission
  /** told when a request finds no ready child (metrics) */
  refused?: () => void
}

/** Upstream failures, in the one status table: the child broke (502) or never answered (504). */
class HgUpstreamError extends VcsError {
  constructor(message: string, status = 502) { super('VCS_HG_UPSTREAM', status, message) }
}

const SILENT_CHILD = 'the hg server process did not answer in time; try again'

export function hgHandler(deps: HgDeps) {
  async function hg(req: FastifyRequest, reply: FastifyReply, rawPath: string): Promise<FastifyReply> {
    req.access.route = 'hg_proxy'
    const query = new URLSearchParams(req.raw.url!.slice(rawPath.length + 1))
    const repo = await resolveHgRepo(deps.reposRoot, rawPath)
    req.access.repo = repo.name
    req.access.service = query.get('cmd') ?? 'hgweb'
    if (req.access.service.length > 64) throw new BadRequestError('malformed cmd')
    let principal
    try {
      principal = await deps.auth.authorize(req, repo, requestAction(query, req.headers))
    } catch (err) {
      // hg sends a push as one POST with the whole bundle and reads nothing before it is sent:
      // the 401 that makes it retry with credentials must wait until the bundle is read.
      settleUnreadBody(req, reply, deps.config.maxPushBytes)
      throw err
    }
    // a session starts with `capabilities`: refused here when a drain or a full queue would refuse its work
    if (req.access.service === 'capabilities') deps.admission.precheck()
    await deps.recovery.ensure(repo.dir)
    const cls = hgWorkClass(query, req.headers)
    let release: Release = () => {}
    try {
      if (cls) release = await deps.admission.acquire(repo.name, cls, reply.raw)
    } catch (err) {
      settleUnreadBody(req, reply, deps.config.maxPushBytes) // hg reads the 503 only after its bundle is sent
      throw err
    }
    try {
      return await forward(req, reply, principal, release)
    } catch (err) {
      release()
      throw err
    }
  }

  /** Streams the request to a ready child and its answer back; `release` runs once the answer ended. */
  async function forward(req: FastifyRequest, reply: FastifyReply, principal: Identity, release: Release): Promise<FastifyReply> {
    const child = deps.pool.pick()
    if (!child?.url) {
      deps.refused?.()
      throw new ServiceUnavailableError('no hg serve process is ready on this worker')
    }
    req.access.pid = child.pid

    const headers: Record<string, string | string[]> = {}
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v
    headers['x-vcs-worker-secret'] = child.secret
    if (principal.kind === 'user') headers['x-vcs-worker-user'] = principal.name

    if (child.handoff?.usable && deps.config.hgHandoff && req.method === 'GET' && req.access.service === 'getbundle' && !hasBody(req) && !req.raw.socket.destroyed) {
      return handOver(req, reply, child, child.handoff, headers, release) // a bundle download: the child answers itself
    }

    let body: NodeJS.ReadableStream | undefined
    let spill: SpillBuffer | undefined
    if (req.method === 'POST' || req.method === 'PUT') {
      const decoded = decodeBody(req.raw, deps.config.maxPushBytes)
      req.access.countIn = decoded.wireBytes
      const declared = req.headers['content-length']
      if (declared !== undefined && req.headers['content-encoding'] === undefined) {
        headers['content-length'] = declared
        body = decoded.stream
      } else {
        spill = new SpillBuffer(SPILL_MEMORY, deps.config.tmpDir)
        try {
          await pipeline(decoded.stream, spill)
        } catch (err) {
          await spill.dispose()
          decoded.abandon(DISCARD_LIMIT)
          reply.header('connection', 'close')
          throw toClientError(err)
        }
        headers['content-length'] = String(spill.bytes)
        body = spill.reader()
      }
    }

    child.inflight++
    const upstream = http.request({ host: child.url.hostname, port: child.url.port, method: req.method, path: req.raw.url, headers, agent: child.agent })
    const done = (): void => { child.inflight--; release(); void spill?.dispose() }
    reply.raw.once('close', () => { if (!reply.raw.writableFinished) upstream.destroy() })
    // Silence, not duration, is the limit: the timer restarts with every byte either way.
    let timedOut = false
    upstream.setTimeout(deps.config.hgTimeoutMs, () => {
      timedOut = true
      upstream.destroy(new Error('hg serve child silent'))
      deps.pool.recycle(child, 'silent past hgTimeoutMs')
    })
    const response = new Promise<http.IncomingMessage>((resolve, reject) => {
      upstream.once('response', resolve)
      upstream.once('error', reject)
    })
    if (body) pipeline(body, upstream).catch(() => upstream.destroy())
    else upstream.end()
    let res: http.IncomingMessage
    try {
      res = await response
    } catch (err) {
      done()
      req.log.error({ err, hg_child: child.id }, 'hg serve child failed')
      if (timedOut) throw new HgUpstreamError(SILENT_CHILD, 504)
      throw new HgUpstreamError('the hg server process failed; try again')
    }
    res.once('close', done)
    reply.code(res.statusCode ?? 502)
    for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && !HOP_BY_HOP.has(k) && k !== 'date') reply.header(k, v)
    // Counted by a stage in the pipe, never by a 'data' listener: that would start the stream
    // flowing before Fastify attaches its pipe, and the first chunks would be lost.
    const counted = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        req.access.bytesOut += chunk.length
        cb(null, chunk)
      },
    })
    pipeline(res, counted).catch(() => { /* the reply sees the error through `counted` */ })
    return reply.send(counted)
  }

  /** Hands a bundle download's connection to the child (handoff.ts); resolves once the child reports it done. */
  async function handOver(req: FastifyRequest, reply: FastifyReply, child: HgChild, handoff: HandoffLine, headers: Record<string, string | string[]>, release: Release): Promise<FastifyReply> {
    const head = handoffHead(req.raw.url!, req.headers.host, headers)
    reply.hijack()
    child.inflight++
    const r = await handoff.hand(req.raw.socket, { head, addr: req.ip, timeoutBody: `${SILENT_CHILD}\n`, idleMs: deps.config.idleTimeoutMs })
    child.inflight--
    release()
    if (r.cut) deps.pool.recycle(child, 'silent past hgTimeoutMs')
    if (!r.status) req.log.error({ hg_child: child.id, child_pid: child.pid }, 'hg serve child lost a handed-over download')
    reply.raw.statusCode = r.status || 502
    req.access.bytesOut = r.bytes
    req.access.completed = r.complete
    reply.raw.emit('close') // the connection is the child's: this ends the worker's record of it (access log)
    return reply
  }

  return hg
}

/** A request that carries a body (which a handed-over connection could not take along). */
function hasBody(req: FastifyRequest): boolean {
  return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0'
}
