/**
 * The push events' journal (docs/events.md, docs/decisions/push-events.md): every committed
 * change of a repository's refs, kept durably until the web application has it. SQLite
 * (sqlite-journal.ts, DATA/events.sqlite: a file of its own, so a push never moves the auth
 * store's data_version) or PostgreSQL (pg-journal.ts, tables of the auth store's database
 * outside its change trigger).
 *
 * A push's life in the journal: `intend` before git moves a ref (state `intent`), `settle` once
 * it is known what moved (`pending`, or gone when nothing did), then the deliverer claims a
 * repo's head event (the lowest position not yet delivered or failed; an intent holds the repo
 * back), gives it the repo's next `seq` on its first attempt, and marks it `delivered`, retries
 * it later, or marks it `failed`.
 */

export type EventKind = 'push' | 'repo.create' | 'repo.visibility' | 'repo.default-branch'
export type EventProtocol = 'git' | 'hg'
export type EventState = 'intent' | 'pending' | 'delivered' | 'failed'

/** One ref's move; ids are all zeros for a ref created or deleted. */
export interface Change {
  ref: string
  before: string
  after: string
}

export interface NewEvent {
  kind: EventKind
  repo: string
  protocol: EventProtocol
  /** the user who pushed or null (anonymous, or a command run on the host) */
  pusher: string | null
  changes: Change[]
  /** fields of the body beside the common ones (hg's changesets, a repo's visibility) */
  detail?: Record<string, unknown>
}

export interface EventRecord extends NewEvent {
  /** the delivery id: the same on every attempt */
  id: string
  /** the journal's order: positions follow the commits of every ref */
  pos: number
  /** per repo, assigned at the first delivery attempt */
  seq: number | null
  /** ms since the epoch, when the event was written */
  at: number
  state: EventState
  attempts: number
  /** when the next attempt is due (ms) */
  nextAt: number
  lastError: string | null
  deliveredAt: number | null
  /** the host and process that wrote an intent (the reconciler's "is it still running") */
  host: string
  pid: number
}

/** What became of one attempt. */
export type Outcome = { delivered: true } | { retryAt: number; error: string } | { failed: string }

/** A claimed head event: only its claimer sends it until `finish` (or the claimer's death). */
export interface Claim {
  event: EventRecord
  finish(outcome: Outcome): Promise<void>
}

export interface EventFilter {
  repo?: string
  state?: EventState
  limit: number
}

export interface JournalStats {
  pending: number
  intents: number
  failed: number
  /** `at` of the oldest pending or intended event (ms), or null */
  oldestPendingAt: number | null
}

export interface EventJournal {
  /** A push's intent, durable when this resolves. */
  intend(event: NewEvent, host: string, pid: number): Promise<EventRecord>
  /**
   * What an intent came to: pending with `changes`, or removed when none moved. False when it
   * was no longer an intent (settled by the reconciler meanwhile).
   */
  settle(id: string, changes: Change[]): Promise<boolean>
  /** an event that is settled from the start (repo create, visibility, default branch) */
  append(event: NewEvent): Promise<EventRecord>
  /** every intent not yet settled, by position */
  intents(): Promise<EventRecord[]>
  /** the events of `repo` after position `pos` that move `ref` (the reconciler's chain check) */
  laterMoves(repo: string, pos: number, ref: string): Promise<Change[]>
  /**
   * Up to `limit` head events due at `now`, each claimed; with `probe`, the one head whose
   * next attempt comes first, due or not (the receiver seemed down: is it back?).
   */
  claim(limit: number, now: number, probe?: boolean): Promise<Claim[]>
  /** the receiver came back: every pending event whose last attempt failed after `since` is due now */
  wakeAll(now: number, since: number): Promise<void>
  list(filter: EventFilter): Promise<EventRecord[]>
  /** sends a delivered or failed event again (its id and seq kept); how many were queued */
  redeliver(target: { id: string } | { repo: string }, now: number): Promise<number>
  stats(): Promise<JournalStats>
  close(): Promise<void>
}

export const ZERO_ID = '0000000000000000000000000000000000000000'

/** The delay before attempt `attempts + 1`: 1 s doubling to 10 min, with jitter of +-20%. */
export function backoffMs(attempts: number, random = Math.random()): number {
  const base = Math.min(1000 * 2 ** Math.max(0, attempts - 1), 600_000)
  return Math.round(base * (0.8 + 0.4 * random))
}

/** The JSON body a receiver gets for an event. */
export function eventBody(e: EventRecord): Record<string, unknown> {
  return {
    id: e.id, seq: e.seq, kind: e.kind, repo: e.repo, protocol: e.protocol, pusher: e.pusher,
    at: new Date(e.at).toISOString(), changes: e.changes, ...(e.detail ?? {}),
  }
}
