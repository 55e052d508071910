/**
 * The events journal in SQLite (better-sqlite3): DATA/events.sqlite, beside the auth store and
 * apart from it (a commit to auth.sqlite moves its data_version, which every worker reads as
 * "the accounts changed"). WAL with synchronous=FULL: a write that returned survives a crash of
 * the process and of the machine. Workers sharing the data dir claim a head event with a lease
 * taken in an immediate (write-locked) transaction; a claimer killed mid-delivery leaves a lease
 * that runs out, and another worker sends the event again (at least once).
 */
import { randomBytes, randomUUID } from 'node:crypto'
import { openSqliteFile } from '../auth/sqlite-store.js'
import type { Change, Claim, EventFilter, EventJournal, EventRecord, JournalStats, NewEvent, Outcome } from './journal.js'

/** how long a claim holds a head event: past the delivery timeout, with room */
export const LEASE_MS = 60_000

const MIGRATIONS = [
  `CREATE TABLE events (
     pos INTEGER PRIMARY KEY AUTOINCREMENT,
     id TEXT NOT NULL UNIQUE,
     repo TEXT NOT NULL,
     kind TEXT NOT NULL,
     protocol TEXT NOT NULL,
     pusher TEXT,
     at INTEGER NOT NULL,
     changes TEXT NOT NULL,
     detail TEXT,
     state TEXT NOT NULL CHECK (state IN ('intent', 'pending', 'delivered', 'failed')),
     host TEXT NOT NULL,
     pid INTEGER NOT NULL,
     seq INTEGER,
     attempts INTEGER NOT NULL DEFAULT 0,
     next_at INTEGER NOT NULL DEFAULT 0,
     last_error TEXT,
     delivered_at INTEGER,
     last_attempt_at INTEGER,
     lease_until INTEGER NOT NULL DEFAULT 0,
     lease_owner TEXT
   );
   CREATE INDEX events_open ON events (repo, pos) WHERE state IN ('intent', 'pending');
   CREATE INDEX events_repo ON events (repo, pos);
   CREATE TABLE event_seqs (repo TEXT PRIMARY KEY, last INTEGER NOT NULL);`,
]

interface Row {
  pos: number; id: string; repo: string; kind: string; protocol: string; pusher: string | null; at: number; changes: string; detail: string | null
  state: string; host: string; pid: number; seq: number | null; attempts: number; next_at: number; last_error: string | null; delivered_at: number | null
}

export function recordOf(r: Row): EventRecord {
  return {
    pos: Number(r.pos), id: r.id, repo: r.repo, kind: r.kind as EventRecord['kind'], protocol: r.protocol as EventRecord['protocol'], pusher: r.pusher,
    at: Number(r.at), changes: JSON.parse(r.changes) as Change[], detail: r.detail ? JSON.parse(r.detail) as Record<string, unknown> : undefined,
    state: r.state as EventRecord['state'], host: r.host, pid: Number(r.pid), seq: r.seq === null ? null : Number(r.seq), attempts: Number(r.attempts),
    nextAt: Number(r.next_at), lastError: r.last_error, deliveredAt: r.delivered_at === null ? null : Number(r.delivered_at),
  }
}

/** The heads: per repo, its lowest position not yet delivered or failed. */
const HEADS = "SELECT MIN(pos) FROM events WHERE state IN ('intent', 'pending') GROUP BY repo"

export function openSqliteJournal(file: string): EventJournal {
  const db = openSqliteFile(file, MIGRATIONS, 'FULL')
  const owner = randomBytes(8).toString('hex')
  const q = {
    insert: db.prepare<Record<string, unknown>, Row>(`INSERT INTO events (id, repo, kind, protocol, pusher, at, changes, detail, state, host, pid, next_at)
      VALUES (@id, @repo, @kind, @protocol, @pusher, @at, @changes, @detail, @state, @host, @pid, @at) RETURNING *`),
    settle: db.prepare<[string, number, string]>("UPDATE events SET state = 'pending', changes = ?, next_at = ? WHERE id = ? AND state = 'intent'"),
    drop: db.prepare<[string]>("DELETE FROM events WHERE id = ? AND state = 'intent'"),
    intents: db.prepare<[], Row>("SELECT * FROM events WHERE state = 'intent' ORDER BY pos"),
    later: db.prepare<[string, number], Row>('SELECT * FROM events WHERE repo = ? AND pos > ? ORDER BY pos'),
    due: db.prepare<[number, number, number], Row>(`SELECT * FROM events WHERE pos IN (${HEADS}) AND state = 'pending' AND next_at <= ? AND lease_until <= ? ORDER BY pos LIMIT ?`),
    probe: db.prepare<[number], Row>(`SELECT * FROM events WHERE pos IN (${HEADS}) AND state = 'pending' AND lease_until <= ? ORDER BY next_at, pos LIMIT 1`),
    lease: db.prepare<[number, string, number]>('UPDATE events SET lease_until = ?, lease_owner = ? WHERE pos = ?'),
    nextSeq: db.prepare<[string], { last: number }>('INSERT INTO event_seqs (repo, last) VALUES (?, 1) ON CONFLICT (repo) DO UPDATE SET last = last + 1 RETURNING last'),
    setSeq: db.prepare<[number, number]>('UPDATE events SET seq = ? WHERE pos = ?'),
    delivered: db.prepare<[number, number, string]>("UPDATE events SET state = 'delivered', delivered_at = ?, attempts = attempts + 1, last_error = NULL, lease_until = 0, lease_owner = NULL WHERE pos = ? AND lease_owner = ?"),
    retry: db.prepare<[number, string, number, number, string]>('UPDATE events SET next_at = ?, last_error = ?, last_attempt_at = ?, attempts = attempts + 1, lease_until = 0, lease_owner = NULL WHERE pos = ? AND lease_owner = ?'),
    failed: db.prepare<[string, number, string]>("UPDATE events SET state = 'failed', last_error = ?, attempts = attempts + 1, lease_until = 0, lease_owner = NULL WHERE pos = ? AND lease_owner = ?"),
    wake: db.prepare<[number, number, number]>("UPDATE events SET next_at = ? WHERE state = 'pending' AND next_at > ? AND last_attempt_at > ?"),
    list: db.prepare<{ repo: string | null; state: string | null; limit: number }, Row>(
      'SELECT * FROM events WHERE (@repo IS NULL OR repo = @repo) AND (@state IS NULL OR state = @state) ORDER BY pos DESC LIMIT @limit'),
    redeliverId: db.prepare<[number, string]>("UPDATE events SET state = 'pending', next_at = ?, attempts = 0 WHERE id = ? AND state IN ('delivered', 'failed')"),
    redeliverRepo: db.prepare<[number, string]>("UPDATE events SET state = 'pending', next_at = ?, attempts = 0 WHERE repo = ? AND state = 'failed'"),
    stats: db.prepare<[], { pending: number; intents: number; failed: number; oldest: number | null }>(`SELECT
      COUNT(*) FILTER (WHERE state = 'pending') AS pending, COUNT(*) FILTER (WHERE state = 'intent') AS intents,
      COUNT(*) FILTER (WHERE state = 'failed') AS failed, MIN(at) FILTER (WHERE state IN ('intent', 'pending')) AS oldest FROM events`),
  }
  const claimTx = db.transaction((limit: number, now: number, probe: boolean): Row[] => {
    const rows = probe ? q.probe.all(now) : q.due.all(now, now, limit)
    for (const r of rows) {
      q.lease.run(now + LEASE_MS, owner, r.pos)
      if (r.seq === null) {
        r.seq = q.nextSeq.get(r.repo)!.last
        q.setSeq.run(r.seq, r.pos)
      }
    }
    return rows
  })
  const insert = (e: NewEvent, state: 'intent' | 'pending', host: string, pid: number): EventRecord => recordOf(q.insert.get({
    id: randomUUID(), repo: e.repo, kind: e.kind, protocol: e.protocol, pusher: e.pusher, at: Date.now(),
    changes: JSON.stringify(e.changes), detail: e.detail ? JSON.stringify(e.detail) : null, state, host, pid,
  })!)

  return {
    async intend(e, host, pid) { return insert(e, 'intent', host, pid) },
    async append(e) { return insert(e, 'pending', '', 0) },
    async settle(id, changes) {
      const r = changes.length ? q.settle.run(JSON.stringify(changes), Date.now(), id) : q.drop.run(id)
      return r.changes > 0
    },
    async intents() { return q.intents.all().map(recordOf) },
    async laterMoves(repo, pos, ref) {
      return q.later.all(repo, pos).flatMap((r) => (JSON.parse(r.changes) as Change[]).filter((c) => c.ref === ref))
    },
    async claim(limit, now, probe = false) {
      const rows = claimTx.immediate(limit, now, probe)
      return rows.map((r): Claim => ({
        event: recordOf(r),
        async finish(outcome: Outcome) {
          if ('delivered' in outcome) q.delivered.run(Date.now(), r.pos, owner)
          else if ('failed' in outcome) q.failed.run(outcome.failed, r.pos, owner)
          else q.retry.run(outcome.retryAt, outcome.error, Date.now(), r.pos, owner)
        },
      }))
    },
    async wakeAll(now, since) { q.wake.run(now, now, since) },
    async list(f: EventFilter) { return q.list.all({ repo: f.repo ?? null, state: f.state ?? null, limit: f.limit }).map(recordOf) },
    async redeliver(target, now) {
      return ('id' in target ? q.redeliverId.run(now, target.id) : q.redeliverRepo.run(now, target.repo)).changes
    },
    async stats(): Promise<JournalStats> {
      const s = q.stats.get()!
      return { pending: s.pending, intents: s.intents, failed: s.failed, oldestPendingAt: s.oldest }
    },
    async close() { db.close() },
  }
}
