/**
 * Mercurial over HTTP: judge the request (request.ts: one command, its arguments, nothing two
 * parsers could read two ways); the route table's pre-handler authorizes its command's action
 * (http/routes.ts); then the worker sends
 * the least busy ready `hg serve` child the request rebuilt from what was judged, and stream its
 * answer back. `hg serve` needs a Content-Length on a push: a chunked or gzip body is first
 * spilled (memory, then a temp file) to learn its length; only a push, admitted, has a body.
 * A bundle download (getbundle) is not proxied but handed over: the child answers on the
 * client's connection itself (handoff.ts).
 */
import http from 'node:http'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config/load.js'
import { HgTimeoutError, HgUpstreamError, RepoNotFoundError, ServiceUnavailableError } from '../errors.js'
import type { Action, Identity } from '../auth/plugin.js'
import { decodeBody, spillRequestBody, type SpillBuffer } from '../http/body.js'
import type { RepoRoute } from '../http/routes.js'
import { HOP_BY_HOP } from '../http/headers.js'
import { judgeHgRequest, keptAnswerRequest, type HgRequest } from './request.js'
import type { Admission, Release } from '../admission/admission.js'
import type { HgChild, HgServePool } from './serve-pool.js'
import type { JournalRecovery } from './recover.js'
import { handoffHead, type HandoffLine } from './handoff.js'
import { isBundleName, type CloneBundles } from './clone-bundles.js'
import { fileSending, sendFile } from '../http/send-file.js'
import { HgAnswerCache, MAX_KEPT, type CachedAnswer } from './answer-cache.js'
import { readRules } from './read-rules.js'
import { addOut, countOut, handedOff } from '../http/deliver.js'


export interface HgDeps {
  config: Config
  pool: HgServePool
  recovery: JournalRecovery
  admission: Admission
  /** told when a request finds no ready child (metrics) */
  refused?: () => void
  /** the repos' clone bundles, when hgCloneBundles is on */
  cloneBundles?: CloneBundles
  /** light read answers kept per repo and request (one is made when not given) */
  answers?: HgAnswerCache
  /** the base of the URLs handed out (http/headers.ts publicBase) */
  baseOf: (req: FastifyRequest) => string | undefined
}

const SILENT_CHILD = 'the hg server process did not answer in time; try again'

/** The hg route of the route table: every wire-protocol command and hgweb page. */
export function hgRoute(deps: HgDeps): RepoRoute {
  const answers = deps.answers ?? new HgAnswerCache()

  /** Judged before the repo is looked up: the action is the command's (request.ts). */
  function access(req: FastifyRequest): Action {
    const judged = judgeHgRequest(req.method, req.originalUrl, req.raw.rawHeaders)
    req.accessRecord.service = judged.cmd ?? 'hgweb'
    req.hgRequest = judged
    return judged.action
  }

  async function hg(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const judged = req.hgRequest
    // a session starts with `capabilities`: refused here when a drain or a full queue would refuse its work
    if (judged.cmd === 'capabilities') deps.admission.refuseIfBusy()
    if (deps.cloneBundles && (judged.cmd === 'clonebundles' || judged.cmd === 'clonebundles_manifest')) return manifest(req, reply, deps.cloneBundles, deps.baseOf(req))
    await deps.recovery.ensure(req.repo.dir)
    let keep: ((answer: CachedAnswer) => void) | undefined
    const asked = keptAnswerRequest(req.method, judged)
    if (asked !== undefined) {
      const dir = req.repo.dir
      // hg answers alike whoever asks, unless the repo's own config judges callers (read-rules.ts)
      const kept = (await readRules(dir)).perUser ? `${req.principal.kind === 'user' ? `user:${req.principal.name}` : 'anonymous'}\0${asked}` : asked
      const fingerprint = await answers.fingerprint(dir)
      const hit = answers.get(dir, kept, fingerprint)
      if (hit) {
        countOut(req, hit.body.length)
        reply.raw.statusMessage = hit.statusMessage
        return reply.headers(hit.headers).send(hit.body)
      }
      keep = (answer) => answers.set(dir, kept, fingerprint, answer)
    }
    const release = judged.workClass ? await deps.admission.admit(req, reply, judged.workClass) : () => {}
    try {
      return await forward(req, reply, judged, req.principal, release, keep)
    } catch (err) {
      release()
      throw err
    }
  }

  /** Streams the request to a ready child and its answer back; `release` runs once the answer ended. */
  async function forward(req: FastifyRequest, reply: FastifyReply, judged: HgRequest, principal: Identity, release: Release, keep?: (answer: CachedAnswer) => void): Promise<FastifyReply> {
    const child = deps.pool.pick()
    if (!child?.url) {
      deps.refused?.()
      throw new ServiceUnavailableError('no hg serve process is ready on this worker')
    }
    req.accessRecord.pid = child.pid

    // What the child reads: the judged request, and the control headers only the worker sets.
    const headers: Record<string, string> = { ...judged.headers, 'x-vcs-worker-secret': child.secret, 'x-vcs-worker-access': judged.action }
    if (principal.kind === 'user') headers['x-vcs-worker-user'] = principal.name

    if (!keep && child.handoff?.usable && deps.pool.handoffVerified && req.method === 'GET' && judged.cmd === 'getbundle' && !judged.hasBody && !req.raw.socket.destroyed) {
      return handOver(req, reply, child, child.handoff, judged, headers, release) // a bundle download: the child answers itself
    }

    let body: NodeJS.ReadableStream | undefined
    let spill: SpillBuffer | undefined
    if (judged.hasBody) {
      const declared = req.headers['content-length']
      if (declared !== undefined && req.headers['content-encoding'] === undefined) {
        const decoded = decodeBody(req.raw, deps.config.maxPushBytes)
        req.accessRecord.countIn = decoded.wireBytes
        headers['content-length'] = String(Number(declared))
        body = decoded.stream
      } else {
        spill = await spillRequestBody(req, reply, { limit: deps.config.maxPushBytes, tmpDir: deps.config.tmpDir })
        headers['content-length'] = String(spill.bytes)
        body = spill.reader()
      }
    }

    child.inflight++
    const upstream = http.request({ host: child.url.hostname, port: child.url.port, method: req.method, path: judged.target, headers, agent: child.agent })
    const done = (): void => { child.inflight--; release(); void spill?.dispose() }
    // a push whose whole bundle reached hg runs to completion whatever the client does (hg may be
    // committing it, and its hooks must run), bounded by pushCompleteTimeoutMs; anything else ends with its client
    let bodySent = false
    let answer: http.IncomingMessage | undefined
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) return
      if (!bodySent) return upstream.destroy()
      req.log.info({ hg_child: child.id }, 'hg unbundle: the client left after sending the whole push; running it to completion')
      const discard = (res: http.IncomingMessage): void => {
        res.unpipe()
        res.on('data', () => {})
        res.resume()
      }
      if (answer) discard(answer)
      else upstream.once('response', discard)
      setTimeout(() => upstream.destroy(), deps.config.pushCompleteTimeoutMs).unref()
    })
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
    if (body) pipeline(body, upstream).then(() => { bodySent = true }, () => upstream.destroy())
    else upstream.end()
    let res: http.IncomingMessage
    try {
      res = await response
    } catch (err) {
      done()
      req.log.error({ err, hg_child: child.id }, 'hg serve child failed')
      if (timedOut) throw new HgTimeoutError(SILENT_CHILD)
      throw new HgUpstreamError('the hg server process failed; try again')
    }
    answer = res
    res.once('close', done)
    // a push (or a phase change) makes the repo's clone bundles again, later and off this path
    if (deps.cloneBundles && judged.action === 'write' && res.statusCode === 200) {
      const bundles = deps.cloneBundles
      res.once('close', () => bundles.schedule(req.repo.dir))
    }
    reply.code(res.statusCode ?? 502)
    if ((res.statusCode ?? 502) >= 500) req.log.error({ hg_child: child.id, child_pid: child.pid, status: res.statusCode, reason: res.statusMessage }, 'hg serve answered with an error')
    const passed: Record<string, string> = {}
    for (const [k, v] of Object.entries(res.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k)) continue
      reply.header(k, v)
      if (typeof v === 'string') passed[k] = v
    }
    // hg's own refusal of a reader (the repo's `[web] allow_read`) names no scheme: the client would
    // give up instead of offering the credentials it has, as it does on the worker's own 401
    if (res.statusCode === 401 && !res.headers['www-authenticate']) reply.header('www-authenticate', `Basic realm="${deps.config.realm}", charset="UTF-8"`)
    if (res.statusMessage) reply.raw.statusMessage = res.statusMessage // hg clients print the reason phrase
    // Counted by a stage in the pipe, never by a 'data' listener: that would start the stream
    // flowing before Fastify attaches its pipe, and the first chunks would be lost.
    // an answer to keep (answer-cache.ts) is collected on the way, up to what could be one
    let kept: Buffer[] | undefined = keep && res.statusCode === 200 ? [] : undefined
    const counted = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        if (addOut(req, chunk.length) > MAX_KEPT) kept = undefined
        kept?.push(chunk)
        cb(null, chunk)
      },
      flush(cb) {
        if (kept && keep && res.complete) keep({ headers: passed, statusMessage: res.statusMessage ?? '', body: Buffer.concat(kept) })
        cb()
      },
    })
    // piped, not pipelined, when a push outlives its client: the client's reply closing must not close hg's answer
    if (bodySent || judged.hasBody) {
      res.pipe(counted)
      res.once('error', (err) => counted.destroy(err))
    } else pipeline(res, counted).catch(() => { /* the reply sees the error through `counted` */ })
    return reply.send(counted)
  }

  /** Hands a bundle download's connection to the child (handoff.ts); resolves once the child reports it done. */
  async function handOver(req: FastifyRequest, reply: FastifyReply, child: HgChild, handoff: HandoffLine, judged: HgRequest, headers: Record<string, string>, release: Release): Promise<FastifyReply> {
    const head = handoffHead(judged.target, req.headers.host, headers)
    child.inflight++
    const outcome = handoff.hand(req.raw.socket, { head, addr: req.ip, timeoutBody: `${SILENT_CHILD}\n`, idleMs: deps.config.idleTimeoutMs }).then((r) => {
      child.inflight--
      release()
      if (r.cut) deps.pool.recycle(child, 'silent past hgTimeoutMs')
      if (!r.status) req.log.error({ hg_child: child.id, child_pid: child.pid }, 'hg serve child lost a handed-over download')
      return { status: r.status || 502, bytes: r.bytes, completed: r.complete }
    })
    return handedOff(req, reply, outcome)
  }

  // hg sends a push as one POST with the whole bundle and reads nothing before it is sent: a
  // refusal (the 401 that makes it retry with credentials, a 503) waits until the bundle is read.
  return { id: 'hg_proxy', methods: ['GET', 'POST'], kind: 'hg', access, discardLimit: deps.config.maxPushBytes, handler: hg }
}

/**
 * The clonebundles command, answered by the worker: the repo's bundles at URLs under the repo's
 * public URL (publicUrl, or the Host and X-Forwarded-Proto a trusted proxy passed on, or the
 * address the client reached; never an untrusted Host), so the download comes back through the
 * same balancer with the same credentials (hg offers the
 * clone URL's credentials to URLs under it). No usable Host: no bundles, a plain clone.
 */
async function manifest(req: FastifyRequest, reply: FastifyReply, bundles: CloneBundles, base: string | undefined): Promise<FastifyReply> {
  const text = base ? await bundles.manifest(req.repo.dir, `${base}/${req.repo.name}`) : ''
  countOut(req, Buffer.byteLength(text))
  return reply.type('application/mercurial-0.1').header('cache-control', 'no-cache').send(text)
}

/** `GET /{repo}/.hg/clonebundles/{file}`: a clone bundle, with the repo's read permission; Range for resumed downloads. */
export function hgCloneBundleRoute(deps: HgDeps & { cloneBundles: CloneBundles }): RepoRoute {
  return {
    id: 'hg_clonebundle',
    methods: ['GET'],
    kind: 'hg',
    exact: true,
    access: 'read',
    handler: async (req, reply) => {
      const name = decodeURIComponent(req.urlParams.bundle ?? '')
      req.accessRecord.service = 'clonebundle'
      const file = isBundleName(name) ? await deps.cloneBundles.file(req.repo.dir, name) : undefined
      if (!file) throw new RepoNotFoundError() // no such bundle, or not one the repo may hand out now
      const release = deps.admission.admitTransfer(req)
      reply.raw.once('close', release)
      return sendFile(req, reply, file, 'application/mercurial-bundle', fileSending(deps.config))
    },
  }
}
