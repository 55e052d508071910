/**
 * Sends the journal's events to the web application (docs/events.md): `POST eventsUrl` with the
 * event as JSON, signed with HMAC-SHA256 of the raw body. A 2xx within the timeout is delivered;
 * anything else (a 3xx is not followed) is retried with backoff, in order per repo: the
 * journal only hands out a repo's head event. A failure that says the receiver is down
 * (no connection, a timeout, 5xx, 429, 410) also opens a breaker: until one delivery succeeds,
 * only one event is tried at a time, every 1 s doubling to 30 s, whatever its own backoff; when
 * it succeeds, what failed meanwhile is due at once and the backlog drains at full speed.
 */
import { createHmac } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { backoffMs, eventBody, type Claim, type EventJournal, type EventRecord } from './journal.js'

export const DELIVERY_TIMEOUT_MS = 10_000
const PROBE_CAP_MS = 30_000

export interface DelivererOptions {
  journal: EventJournal
  url: string
  secret: Buffer
  /** an event older than this when an attempt fails is marked failed */
  maxAgeMs: number
  log: FastifyBaseLogger
  /** deliveries in flight at once (to different repos) */
  concurrency?: number
  /** how often the journal is asked for due events (another worker's, or a retry's) */
  pollMs?: number
  timeoutMs?: number
  observe?: {
    delivered?: (event: EventRecord, latencyMs: number) => void
    attemptFailed?: (event: EventRecord) => void
    failed?: (event: EventRecord) => void
  }
}

/** The headers and body of one delivery of `event`. */
export function signedDelivery(event: EventRecord, secret: Buffer): { headers: Record<string, string>; body: Buffer } {
  const body = Buffer.from(JSON.stringify(eventBody(event)))
  return {
    body,
    headers: {
      'content-type': 'application/json',
      'user-agent': 'vcs-worker-events',
      'x-vcs-event': event.kind,
      'x-vcs-delivery': event.id,
      'x-vcs-signature-256': `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`,
    },
  }
}

export class EventDeliverer {
  private timer: NodeJS.Timeout | undefined
  private inFlight = 0
  private rounding = false
  private again = false
  private stopped = false
  /** the breaker: set while the receiver seems down */
  private downSince: number | undefined
  private probeDelay = 1000
  private probeAt = 0
  private readonly sending = new Set<Promise<void>>()
  private readonly concurrency: number
  private readonly timeoutMs: number

  constructor(private readonly opts: DelivererOptions) {
    this.concurrency = opts.concurrency ?? 4
    this.timeoutMs = opts.timeoutMs ?? DELIVERY_TIMEOUT_MS
  }

  start(): void {
    this.timer = setInterval(() => this.kick(), this.opts.pollMs ?? 1000)
    this.timer.unref()
    this.kick()
  }

  /** Stops claiming; deliveries in flight finish (bounded by the timeout). */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearInterval(this.timer)
    await Promise.allSettled([...this.sending])
  }

  /** Something may be due now (an event was settled here). */
  kick(): void {
    if (this.stopped) return
    if (this.rounding) {
      this.again = true
      return
    }
    this.rounding = true
    void this.round().catch((err: unknown) => {
      this.opts.log.warn({ err: (err as Error).message }, 'events: the journal could not be read; retrying')
    }).finally(() => {
      this.rounding = false
      if (this.again) {
        this.again = false
        this.kick()
      }
    })
  }

  /** whether the breaker is open (the receiver seemed down at the last attempt) */
  get receiverDown(): boolean {
    return this.downSince !== undefined
  }

  private async round(): Promise<void> {
    const now = Date.now()
    let claims: Claim[]
    if (this.downSince !== undefined) {
      if (this.inFlight > 0 || now < this.probeAt) return
      claims = await this.opts.journal.claim(1, now, true)
    } else {
      const free = this.concurrency - this.inFlight
      if (free <= 0) return
      claims = await this.opts.journal.claim(free, now)
    }
    for (const claim of claims) {
      this.inFlight++
      const p = this.send(claim).catch((err: unknown) => {
        this.opts.log.warn({ err: (err as Error).message, event: claim.event.id }, 'events: an attempt could not be recorded; it is made again')
      }).finally(() => {
        this.inFlight--
        this.sending.delete(p)
        this.kick()
      })
      this.sending.add(p)
    }
  }

  private async send(claim: Claim): Promise<void> {
    const e = claim.event
    const { headers, body } = signedDelivery(e, this.opts.secret)
    let status: number | undefined
    let error: string
    try {
      const res = await fetch(this.opts.url, { method: 'POST', headers, body: body.toString('utf8'), redirect: 'manual', signal: AbortSignal.timeout(this.timeoutMs) })
      status = res.status
      // the answer's body is not read: a huge or slow one costs nothing
      await res.body?.cancel().catch(() => {})
      error = `HTTP ${status}`
    } catch (err) {
      const e2 = err as Error & { cause?: { code?: string; message?: string } }
      error = e2.name === 'TimeoutError' ? `no answer within ${this.timeoutMs} ms` : (e2.cause?.code ?? e2.cause?.message ?? e2.message)
    }
    const now = Date.now()
    if (status !== undefined && status >= 200 && status < 300) {
      await claim.finish({ delivered: true })
      this.opts.observe?.delivered?.(e, now - e.at)
      if (this.downSince !== undefined) {
        const since = this.downSince
        this.downSince = undefined
        this.probeDelay = 1000
        this.opts.log.info({ url: this.opts.url }, 'events: the receiver answers again; sending the backlog')
        await this.opts.journal.wakeAll(now, since)
      }
      return
    }
    this.opts.observe?.attemptFailed?.(e)
    const receiverDown = status === undefined || status >= 500 || status === 429 || status === 410
    if (receiverDown) {
      if (this.downSince === undefined) this.downSince = now
      this.probeAt = now + this.probeDelay
      this.probeDelay = Math.min(this.probeDelay * 2, PROBE_CAP_MS)
    }
    if (now - e.at > this.opts.maxAgeMs) {
      await claim.finish({ failed: error })
      this.opts.observe?.failed?.(e)
      this.opts.log.error({ event: e.id, repo: e.repo, attempts: e.attempts + 1, error }, 'events: an event older than eventsMaxAgeMs was not delivered; marked failed (vcs-worker events redeliver)')
      return
    }
    const retryAt = now + backoffMs(e.attempts + 1)
    await claim.finish({ retryAt, error })
    this.opts.log.warn({ event: e.id, repo: e.repo, attempts: e.attempts + 1, error, retryInMs: retryAt - now }, `events: delivery failed (${error}); retrying`)
  }
}
