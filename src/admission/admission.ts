/**
 * Admission control for the heavy work: git upload-pack and receive-pack POSTs that carry a
 * negotiation or a push, and hg's bundle commands. A global limit, a per-repo limit and a
 * smaller limit for full clones (fetches with no `have`: the most expensive class), so the
 * remaining slots stay free for incremental fetches and pushes. Past a limit a request waits
 * in a bounded queue for a bounded time; incremental work and pushes leave the queue before
 * full clones. Light requests (ref advertisements, ls-refs, health, metrics) never come here.
 *
 * A slot is taken before git or hg starts and held until it exited, so a push that was
 * admitted is never dropped: refusal happens before a single byte reaches git.
 *
 * One client (a user, or an address for anonymous requests) holds at most `clientHeavyLimit`
 * slots at once, as Gitaly limits pack-objects per remote address: a client that reads its
 * clones slowly (or never) can hold that many slots for the idle timeout, not all of them.
 *
 * File transfers (Git LFS objects and hg clone bundles sent from disk) are a class of their
 * own: a download costs a socket and a file descriptor, not CPU, so it never takes a heavy slot
 * (eight slow readers of one repo would otherwise hold its heavy slots and deny it to everyone).
 * They are bounded in total, per repo and per client, never queued (past a bound, 503 at once),
 * and a transfer slower than `transferMinRate` is ended (send-file.ts), so held slots come free.
 */
import type { ServerResponse } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ClientGoneError, ServiceUnavailableError } from '../errors.js'

export type WorkClass = 'full' | 'incremental'
/** what a refusal is counted under: a heavy class, a file transfer, or a session's start */
export type RefusedClass = WorkClass | 'transfer' | 'none'
export type RejectReason = 'queue_full' | 'queue_timeout' | 'draining'

export interface AdmissionLimits {
  heavyLimit: number
  repoHeavyLimit: number
  fullCloneLimit: number
  clientHeavyLimit: number
  queueLimit: number
  queueTimeoutMs: number
  transferLimit: number
  transferRepoLimit: number
  transferClientLimit: number
}

export interface AdmissionEvents {
  rejected?: (reason: RejectReason, cls: RefusedClass) => void
  /** seconds a request waited before it got its slot (0 when it did not wait) */
  admitted?: (waitSeconds: number, cls: WorkClass) => void
}

/** What a 503 tells the client to wait, in seconds. */
export const RETRY_AFTER_S = 5

/** The key one client's slots are counted under: its user name, or its address when anonymous. */
export function admissionClient(principal: { kind: 'anonymous' } | { kind: 'user'; name: string }, address: string): string {
  return principal.kind === 'user' ? `user:${principal.name}` : `addr:${address}`
}

interface Waiter {
  repo: string
  client: string
  cls: WorkClass
  since: number
  start: () => void
  fail: (reason: RejectReason) => void
}

export type Release = () => void

export class Admission {
  active = 0
  activeFull = 0
  private readonly perRepo = new Map<string, number>()
  private readonly perClient = new Map<string, number>()
  /** file transfers at once: in all, per repo, per client */
  transfers = 0
  private readonly transfersPerRepo = new Map<string, number>()
  private readonly transfersPerClient = new Map<string, number>()
  /** incremental work first, then full clones */
  private readonly queues: Record<WorkClass, Waiter[]> = { incremental: [], full: [] }
  /** during a drain: new sessions refused after the grace, then everything once in-flight work ended */
  private refusing: 'none' | 'sessions' | 'all' = 'none'

  constructor(readonly limits: AdmissionLimits, private readonly events: AdmissionEvents = {}) {}

  get queued(): number {
    return this.queues.incremental.length + this.queues.full.length
  }

  /** nothing running, nothing queued, no file being sent */
  get idle(): boolean {
    return this.active === 0 && this.queued === 0 && this.transfers === 0
  }

  /**
   * New heavy work of some class is refused right now: the queue is full and a class is at its
   * limit (every slot taken, or every full-clone slot: a worker whose full-clone slots and queue
   * are full refuses the next clone although incremental slots are free).
   */
  get saturated(): boolean {
    const atLimit = this.active >= this.limits.heavyLimit || this.activeFull >= this.limits.fullCloneLimit
    return atLimit && this.queued >= this.limits.queueLimit
  }

  /**
   * From now on new sessions are refused (the end of a drain's grace period), while the heavy
   * requests of sessions already started are still served: a git push is a probe POST and then
   * the pack POST, a v2 clone an ls-refs POST and then a fetch; refusing those would fail a
   * client operation the worker had already accepted.
   */
  refuseNewSessions(): void {
    if (this.refusing === 'none') this.refusing = 'sessions'
  }

  /** From now on all heavy work is refused, queued work too (the listener is about to close). */
  refuseAll(): void {
    this.refusing = 'all'
    for (const w of [...this.queues.incremental, ...this.queues.full]) w.fail('draining')
  }

  /**
   * The cheap check at a session's start (git's ref advertisement): refuses now what the heavy
   * request that follows would be refused. git prints the body of a refused advertisement as
   * `remote:` lines, but of a refused RPC POST only "HTTP 503": this is where the user reads why.
   */
  refuseIfBusy(): void {
    if (this.refusing !== 'none') throw this.reject('draining', 'none')
    if (this.saturated) throw this.reject('queue_full', 'none')
  }

  /**
   * Waits for a slot for one request on `repo`. Rejects with a 503 ServiceUnavailableError when
   * the queue is full, the wait too long, or the worker refuses new work; with `gone` when the
   * client went away while waiting.
   */
  /** A slot for a repository request (after its pre-handler): its repo, its client (user, or address when anonymous). */
  admit(req: FastifyRequest, reply: FastifyReply, cls: WorkClass): Promise<Release> {
    return this.acquire(req.repo.name, cls, reply.raw, admissionClient(req.principal, req.ip))
  }

  acquire(repo: string, cls: WorkClass, res: ServerResponse, client: string): Promise<Release> {
    if (this.refusing === 'all') return Promise.reject(this.reject('draining', cls))
    // Whoever is still queued is blocked by a limit this request is not (its repo's, its
    // client's, or the full-clone one): every waiter that could start was started when the last
    // slot came free.
    if (this.canStart(repo, client, cls)) {
      this.events.admitted?.(0, cls)
      return Promise.resolve(this.take(repo, client, cls))
    }
    if (this.queued >= this.limits.queueLimit) return Promise.reject(this.reject('queue_full', cls))
    return new Promise<Release>((resolve, reject) => {
      const queue = this.queues[cls]
      const leave = (): void => {
        clearTimeout(timer)
        res.off('close', onGone)
        const i = queue.indexOf(waiter)
        if (i >= 0) queue.splice(i, 1)
      }
      const onGone = (): void => {
        leave()
        reject(new ClientGoneError('client went away while queued'))
      }
      const waiter: Waiter = {
        repo,
        client,
        cls,
        since: performance.now(),
        start: () => {
          leave()
          this.events.admitted?.((performance.now() - waiter.since) / 1000, cls)
          resolve(this.take(repo, client, cls))
        },
        fail: (reason) => {
          leave()
          reject(this.reject(reason, cls))
        },
      }
      const timer = setTimeout(() => waiter.fail('queue_timeout'), this.limits.queueTimeoutMs)
      res.once('close', onGone)
      queue.push(waiter)
    })
  }

  /**
   * A slot for one file transfer of a repository request, taken now or refused now (503): a
   * transfer waits for no one, and no one waits for it. Released once the answer ended.
   */
  admitTransfer(req: FastifyRequest): Release {
    return this.acquireTransfer(req.repo.name, admissionClient(req.principal, req.ip))
  }

  acquireTransfer(repo: string, client: string): Release {
    if (this.refusing === 'all') throw this.reject('draining', 'transfer')
    const l = this.limits
    if (this.transfers >= l.transferLimit || (this.transfersPerRepo.get(repo) ?? 0) >= l.transferRepoLimit || (this.transfersPerClient.get(client) ?? 0) >= l.transferClientLimit) {
      this.events.rejected?.('queue_full', 'transfer')
      throw new ServiceUnavailableError('server busy: too many downloads in progress; try again in a few seconds', RETRY_AFTER_S)
    }
    this.transfers++
    count(this.transfersPerRepo, repo, 1)
    count(this.transfersPerClient, client, 1)
    return once(() => {
      this.transfers--
      count(this.transfersPerRepo, repo, -1)
      count(this.transfersPerClient, client, -1)
    })
  }

  private canStart(repo: string, client: string, cls: WorkClass): boolean {
    if (this.active >= this.limits.heavyLimit) return false
    if (cls === 'full' && this.activeFull >= this.limits.fullCloneLimit) return false
    if ((this.perClient.get(client) ?? 0) >= this.limits.clientHeavyLimit) return false
    return (this.perRepo.get(repo) ?? 0) < this.limits.repoHeavyLimit
  }

  private take(repo: string, client: string, cls: WorkClass): Release {
    this.active++
    if (cls === 'full') this.activeFull++
    count(this.perRepo, repo, 1)
    count(this.perClient, client, 1)
    return once(() => {
      this.active--
      if (cls === 'full') this.activeFull--
      count(this.perRepo, repo, -1)
      count(this.perClient, client, -1)
      this.pump()
    })
  }

  /** Starts every waiter that fits now, incremental ones first; a waiter blocked by its repo's limit does not hold up others. */
  private pump(): void {
    for (const cls of ['incremental', 'full'] as const) {
      for (const w of [...this.queues[cls]]) {
        if (this.active >= this.limits.heavyLimit) return
        if (this.canStart(w.repo, w.client, w.cls)) w.start()
      }
    }
  }

  private reject(reason: RejectReason, cls: RefusedClass): ServiceUnavailableError {
    this.events.rejected?.(reason, cls)
    const message = {
      queue_full: 'server busy: too many clones and pushes in progress; try again in a few seconds',
      queue_timeout: `server busy: no free slot within ${+(this.limits.queueTimeoutMs / 1000).toFixed(1)} s; try again in a few seconds`,
      draining: 'server is restarting; try again in a few seconds',
    }[reason]
    return new ServiceUnavailableError(message, RETRY_AFTER_S)
  }
}

/** A release that gives its slot back once, however often it is called. */
function once(release: () => void): Release {
  let released = false
  return () => {
    if (released) return
    released = true
    release()
  }
}

/** Adds `delta` to a counter in `map`, deleting it at zero (the maps hold only what is in use). */
function count(map: Map<string, number>, key: string, delta: number): void {
  const n = (map.get(key) ?? 0) + delta
  if (n > 0) map.set(key, n)
  else map.delete(key)
}
