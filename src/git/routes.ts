/**
 * git smart HTTP (git's Documentation/technical/http-protocol.txt): the ref advertisement on
 * `GET info/refs?service=…`, and the two RPC endpoints. Each route says what access it needs;
 * the route table's pre-handler finds the repo and authorizes (http/routes.ts), so each handler
 * reads like the protocol: admit, spawn git, stream.
 */
import { existsSync } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { QuarantineSweeper } from './quarantine.js'
import type { Config } from '../config/load.js'
import { BadRequestError, PayloadTooLargeError, ServiceUnavailableError, UnsupportedMediaTypeError } from '../errors.js'
import { DISCARD_LIMIT, settleUnreadBody } from '../http/unread-body.js'
import { stdinSink, type Child } from '../process/child.js'
import type { Socket } from 'node:net'
import { decodeBody, spillRequestBody, toClientError } from '../http/body.js'
import { DUMB_HTTP, type RepoRoute } from '../http/routes.js'
import { errPkt, FLUSH, pkt, PktLineChecker } from './pktline.js'
import { inBandError, sendChildChunks, streamChild } from '../http/deliver.js'
import { finishRelayed } from './relay.js'
import { PACK_RELAY, relayableSocket, relayHead } from '../process/relay.js'
import { checkGitProtocol, protocolVersion, type GitRunner, type GitService, type RunOptions } from './spawn.js'
import { V2AdvertisementCache } from './advertise.js'
import type { PackObjectsCache } from './pack-cache.js'
import type { RefOutcome } from '../log.js'
import { ReportRewriter } from './report-status.js'
import type { PushHooks } from './ref-hooks.js'
import type { Action } from '../auth/plugin.js'
import type { Admission, Release, WorkClass } from '../admission/admission.js'
import { countOut } from '../http/deliver.js'

export interface GitDeps {
  config: Config
  git: GitRunner
  refHooks: PushHooks
  admission: Admission
  log: FastifyBaseLogger
  /** the pack-objects cache, when packCache is on */
  packCache?: PackObjectsCache
}

const SERVICES: Record<string, GitService> = { 'git-upload-pack': 'upload-pack', 'git-receive-pack': 'receive-pack' }
const NO_CACHE = { 'cache-control': 'no-cache, max-age=0, must-revalidate', pragma: 'no-cache', expires: 'Fri, 01 Jan 1980 00:00:00 GMT' }

/** Protocol v2 commands served (protocol-v2.txt); `object-info` is not (see V2AdvertisementCache). */
const V2_COMMANDS = new Set(['ls-refs', 'fetch'])
/** How many `have` lines are looked up to tell an incremental fetch from a full clone. */
const HAVES_CHECKED = 256

/**
 * What an upload-pack request is, from its packets: its v2 command (none under v0/v1) and the
 * objects it says it has. v2 `ls-refs` is light (never queued); a fetch is incremental when
 * one of its `have`s is in the repository, else it costs a full clone (an invented `have` must
 * not buy a cheaper class).
 */
class NegotiationShape {
  command: string | undefined
  readonly haves: string[] = []
  /** a command we do not serve is refused at its first packet, before the rest of the body is read */
  readonly onPacket = (p: Buffer): Error | undefined => {
    if (p.length > 5 && p[0] === 0x68 && p.toString('latin1', 0, 5) === 'have ') {
      if (this.haves.length < HAVES_CHECKED) this.haves.push(p.toString('latin1', 5).trim())
    } else if (this.command === undefined && p.toString('latin1', 0, 8) === 'command=') {
      this.command = p.toString('latin1', 8).trim()
      if (!V2_COMMANDS.has(this.command)) return new BadRequestError(`protocol v2 command ${this.command.slice(0, 40)} is not served here`)
    }
    return undefined
  }
  /** undefined: light work, never queued */
  async workClass(anyExists: (oids: string[]) => Promise<boolean>): Promise<WorkClass | undefined> {
    if (this.command !== undefined && this.command !== 'fetch') return undefined
    return this.haves.length > 0 && (await anyExists(this.haves)) ? 'incremental' : 'full'
  }
}

function requireContentType(req: FastifyRequest, expected: string): void {
  const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
  if (type !== expected) throw new UnsupportedMediaTypeError(`expected Content-Type ${expected}`)
}

/** The service `info/refs` advertises, checked before the repo is looked up. */
function advertisedService(req: FastifyRequest): GitService {
  const serviceName = (req.query as Record<string, unknown>).service
  if (serviceName === undefined) throw new BadRequestError(DUMB_HTTP)
  const service = typeof serviceName === 'string' ? SERVICES[serviceName] : undefined
  if (!service) throw new BadRequestError('unknown service: use git-upload-pack or git-receive-pack')
  req.accessRecord.service = service
  return service
}

/** The three git endpoints as routes of the route table, bound to their dependencies. */
export function gitRoutes(deps: GitDeps): RepoRoute[] {
  const { config, git } = deps
  if (config.packRelay && !existsSync(PACK_RELAY)) throw new Error(`the pack relay is not built (${PACK_RELAY}): run \`npm run build\`, or start with --no-pack-relay`)
  const v2 = new V2AdvertisementCache(git)
  const quarantines = new QuarantineSweeper(config.quarantineStaleMs, deps.log)

  function protocolOf(req: FastifyRequest): string | undefined {
    const gitProtocol = checkGitProtocol(req.headers['git-protocol'])
    req.accessRecord.protocol = protocolVersion(gitProtocol)
    return gitProtocol
  }

  /** `GET /{repo}/info/refs?service=git-upload-pack|git-receive-pack` */
  async function infoRefs(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const service = advertisedService(req)
    deps.admission.refuseIfBusy()
    const gitProtocol = protocolOf(req)
    reply.type(`application/x-git-${service}-advertisement`).headers(NO_CACHE)
    if (service === 'upload-pack' && req.accessRecord.protocol === 'v2') {
      const body = await v2.get(req.repo.dir)
      countOut(req, body.length)
      return reply.send(body)
    }
    const child = git.serve(service, req.repo.dir, { advertise: true, gitProtocol })
    child.proc.stdin.end()
    // Under v0/v1 the smart-HTTP answer starts with `# service=…` and a flush (http-protocol.txt).
    const prefix = Buffer.concat([pkt(`# service=git-${service}\n`), FLUSH])
    return reply.send(streamChild(req, reply, child, { what: `git ${service}`, prefix }))
  }

  /** `POST /{repo}/git-upload-pack`: negotiation in, pack out. */
  async function uploadPack(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const repo = req.repo
    const gitProtocol = protocolOf(req)
    // The whole request is read before git starts: a client that sends megabytes of `have`
    // lines before reading would otherwise deadlock against a git that answers ACKs early.
    const shape = new NegotiationShape()
    const checker = new PktLineChecker({ mode: 'all', onPacket: shape.onPacket })
    const spill = await spillRequestBody(req, reply, { limit: config.maxNegotiationBytes, tmpDir: config.tmpDir, stages: [checker] })
    reply.type('application/x-git-upload-pack-result').headers(NO_CACHE)
    if (checker.isFlushProbe) {
      await spill.dispose()
      return reply.send(Buffer.alloc(0))
    }
    const { release, refused } = await admitFetch(req, reply, shape).catch(async (err: unknown) => { await spill.dispose(); throw err })
    if (refused) return spill.dispose().then(() => refused)
    // with the pack-objects cache, git's pack-objects call goes through our hook (pack-cache.ts)
    const cache = deps.packCache?.open(repo.dir, (outcome) => { req.accessRecord.packCache = outcome })
    const delivery = uploadPackDelivery(req, reply, shape.command)
    const child = git.serve('upload-pack', repo.dir, { gitProtocol, env: cache?.env, config: cache?.config, ...delivery })
    void child.exited.then(() => { release?.(); cache?.close(); return spill.dispose() })
    pipeline(spill.reader(), stdinSink(child)).catch((err: unknown) => req.log.warn({ err }, 'feeding git upload-pack failed'))
    return deliverUploadPack(req, reply, child, delivery.relay?.socket)
  }

  /**
   * A slot of the work class the negotiation asks for (none for a round that costs nothing). A
   * refusal is told inside the protocol: git prints the body of a refused POST only as "HTTP
   * 503", but "fatal: remote error: server busy: ..." from the protocol.
   */
  async function admitFetch(req: FastifyRequest, reply: FastifyReply, shape: NegotiationShape): Promise<{ release?: Release; refused?: FastifyReply }> {
    try {
      const cls = await shape.workClass((oids) => git.anyObjectExists(req.repo.dir, oids))
      return { release: cls ? await deps.admission.admit(req, reply, cls) : undefined }
    } catch (err) {
      if (!(err instanceof ServiceUnavailableError)) throw err
      req.accessRecord.refused = err.message
      return { refused: reply.headers(err.headers ?? {}).send(errPkt(err.message)) }
    }
  }

  /**
   * How upload-pack's answer leaves (http/deliver.ts), decided here once: a fetch's answer (a
   * pack, or the acknowledgements of a negotiation round) through the pack relay when the
   * connection can take it; else git's stdout as pooled chunks (through the spawn helper, which
   * `git.serve` uses when it runs), else as a stream.
   */
  function uploadPackDelivery(req: FastifyRequest, reply: FastifyReply, command: string | undefined): { pooledStdout: true; relay?: NonNullable<RunOptions['relay']> } {
    const socket = config.packRelay && command !== 'ls-refs' ? relayableSocket(req) : undefined
    const head = socket && relayHead(reply)
    return { pooledStdout: true, relay: socket && head ? { socket, head, idleMs: config.idleTimeoutMs, bin: PACK_RELAY } : undefined }
  }

  function deliverUploadPack(req: FastifyRequest, reply: FastifyReply, child: Child, relayed: Socket | undefined): Promise<FastifyReply> | FastifyReply {
    if (relayed) return finishRelayed(req, reply, child, relayed, 'git upload-pack', config.idleTimeoutMs)
    if (child.stdoutChunks) return sendChildChunks(req, reply, child, child.stdoutChunks, 'git upload-pack')
    return reply.send(streamChild(req, reply, child, { what: 'git upload-pack', inBand: true }))
  }

  /** `POST /{repo}/git-receive-pack`: commands and a pack in, report-status out. */
  const COMMAND_LINE = /^([0-9a-f]{40}(?:[0-9a-f]{24})?) ([0-9a-f]{40}(?:[0-9a-f]{24})?) ([^\0\n]+)/
  const MAX_AUDITED_REFS = 10_000
  async function receivePack(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const { repo, principal } = req
    const gitProtocol = protocolOf(req)
    quarantines.maybeSweep(repo.dir)
    // A slot before a byte of the push is read: refused now (503) or never dropped later.
    const release = await deps.admission.admit(req, reply, 'incremental')
    let body, session, child
    try {
      body = decodeBody(req.raw, config.maxPushBytes)
      req.accessRecord.countIn = body.wireBytes
      // Repository hooks learn who pushed; our own hooks learn which push this is.
      session = deps.refHooks.open({ principal, repo })
      const hookEnv: Record<string, string> = { ...session.env }
      if (principal.kind === 'user') {
        hookEnv.REMOTE_USER = principal.name
        hookEnv.VCS_WORKER_USER = principal.name
      }
      child = git.serve('receive-pack', repo.dir, { gitProtocol, env: hookEnv, config: [`core.hooksPath=${config.hooksDir}`, `receive.fsckObjects=${config.fsckObjects}`] })
    } catch (err) {
      session?.close()
      release()
      if (err instanceof PayloadTooLargeError) return tooLargeInProtocol(req, reply, err)
      throw err
    }
    const opened = session
    void child.exited.then(() => { release(); opened.close() })
    // Once the whole body is in git, git and its hooks run to completion whatever the client
    // does (bounded by pushCompleteTimeoutMs): git may have moved refs, and post-receive must run.
    let bodyIn = false
    // the audit trail: each ref as the client asked for it, and git's verdict from its report
    const refs: RefOutcome[] = []
    req.accessRecord.refs = refs
    const onStatus = (ref: string, result: string): void => {
      if (ref === '') return void (req.accessRecord.unpack = result)
      const r = refs.find((x) => x.ref === ref && x.result === undefined)
      if (r) r.result = result
    }
    let refusal: Error | undefined
    // whether the client asked for side-band (its first command's capabilities): where git reads an error
    let sideband: boolean | undefined
    const out = streamChild(req, reply, child, {
      what: 'git receive-pack', rewrite: new ReportRewriter(session.reasonFor, onStatus),
      outliveOnceBodyIn: { bodyIn: () => bodyIn, timeoutMs: config.pushCompleteTimeoutMs }, refusal: () => refusal && { error: refusal, sideband: sideband ?? true },
    })
    // The body streams into git while it arrives; a bad or oversized body kills git before it
    // can update a ref (refs move only after the whole pack is in and checked).
    const onPacket = (payload: Buffer): undefined => {
      const text = payload.toString('latin1')
      if (sideband === undefined) sideband = /\0.*\bside-band(-64k)?\b/.test(text)
      const m = COMMAND_LINE.exec(text)
      if (m && refs.length < MAX_AUDITED_REFS) refs.push({ ref: m[3]!, old: m[1]!, new: m[2]! })
      return undefined
    }
    pipeline(body.stream, new PktLineChecker({ mode: 'commands', onPacket }), stdinSink(child)).then(() => { bodyIn = true }, (err: unknown) => {
      child.kill()
      body.abandon(DISCARD_LIMIT)
      // Over the limit, the rest of the body is read and thrown away (up to DISCARD_LIMIT, then
      // the connection is cut) on a connection kept open: git's curl sends the whole body
      // before it reads the answer, and a connection closed behind the answer would reset it
      // mid-send, leaving git "Connection reset by peer" instead of our reason.
      if (!reply.raw.headersSent && !(err instanceof PayloadTooLargeError)) reply.header('connection', 'close')
      if (err instanceof PayloadTooLargeError && !reply.raw.headersSent) {
        // git prints an ERR packet as "remote error: ..."; an HTTP 413 it shows without our reason
        refusal = pushTooLarge(err)
        req.accessRecord.refused = refusal.message
        return
      }
      out.destroy(toClientError(err))
    })
    reply.type('application/x-git-receive-pack-result').headers(NO_CACHE)
    return reply.send(out)
  }

  /** A push whose declared length is over maxPushBytes: refused inside git's protocol, the body left unread. */
  function tooLargeInProtocol(req: FastifyRequest, reply: FastifyReply, err: Error): FastifyReply {
    const refusal = pushTooLarge(err)
    req.accessRecord.refused = refusal.message
    // the body is not parsed, so its capabilities are unknown: git asks for side-band-64k whenever
    // receive-pack offers it (git >= 1.6), and reads anything else there as a bad band. It is
    // drained (within a bound): cut while curl still sends, git would see only "Broken pipe"
    settleUnreadBody(req, reply)
    return reply.type('application/x-git-receive-pack-result').headers(NO_CACHE).send(inBandError(refusal.message, true))
  }

  const pushTooLarge = (err: Error): Error => new Error(`push refused: ${err.message}`)

  /** The content type is checked before the repo is looked up, as the service is. */
  const posting = (service: GitService, action: Action) => (req: FastifyRequest): Action => {
    req.accessRecord.service = service
    requireContentType(req, `application/x-git-${service}-request`)
    return action
  }

  return [
    { id: 'git_info_refs', methods: ['GET'], kind: 'git', access: (req) => advertisedService(req) === 'receive-pack' ? 'write' : 'read', handler: infoRefs },
    { id: 'git_upload_pack', methods: ['POST'], kind: 'git', access: posting('upload-pack', 'read'), handler: uploadPack },
    { id: 'git_receive_pack', methods: ['POST'], kind: 'git', access: posting('receive-pack', 'write'), handler: receivePack },
  ]
}
