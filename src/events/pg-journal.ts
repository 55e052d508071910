/**
 * The events journal in PostgreSQL: tables `vcs_events` and `vcs_event_seqs` of the auth store's
 * database (migration 4 of pg-schema.ts), outside its change trigger. A pool of workers claims
 * a repo's head event with `SELECT … FOR UPDATE SKIP LOCKED` in a transaction held open for the
 * delivery: one worker sends it, the others pass over it, and a worker that dies mid-delivery
 * loses its connection, which releases the row to the next claimer. The journal has a small
 * pool of its own, so held claims never take the request path's connections.
 */
import pg from 'pg'
import { randomUUID } from 'node:crypto'
import { pgClientConfig, isUnavailable, unavailable } from '../auth/pg-store.js'
import { migrate } from '../auth/pg-schema.js'
import { recordOf } from './sqlite-journal.js'
import type { Change, Claim, EventJournal, EventRecord, JournalStats, NewEvent, Outcome } from './journal.js'

const HEADS = "SELECT MIN(pos) FROM vcs_events WHERE state IN ('intent', 'pending') GROUP BY repo"
/** a claim's transaction idle past this (its worker wedged, not dead) is ended by the server */
const CLAIM_IDLE_S = 60

export interface PgJournalOptions {
  url: string
  passwordFile?: string
  /** claims held at once (deliveries in flight) */
  concurrency: number
}

export async function openPgJournal(opts: PgJournalOptions): Promise<EventJournal> {
  const pool = new pg.Pool({ ...pgClientConfig(opts), max: opts.concurrency + 2, idleTimeoutMillis: 30_000 })
  pool.on('error', () => {})
  const query = async <R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> => {
    try {
      return (await pool.query<R>(text, values)).rows
    } catch (err) {
      if (isUnavailable(err)) throw unavailable(err)
      throw err
    }
  }
  try {
    await migrate(pool)
  } catch (err) {
    await pool.end().catch(() => {})
    throw err
  }
  const row = (r: Record<string, unknown>): EventRecord => recordOf({ ...r, changes: JSON.stringify(r.changes), detail: r.detail ? JSON.stringify(r.detail) : null } as never)
  const insert = async (e: NewEvent, state: 'intent' | 'pending', host: string, pid: number): Promise<EventRecord> => {
    const now = Date.now()
    const [r] = await query(`INSERT INTO vcs_events (id, repo, kind, protocol, pusher, at, changes, detail, state, host, pid, next_at)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $6) RETURNING *`,
    [randomUUID(), e.repo, e.kind, e.protocol, e.pusher, now, JSON.stringify(e.changes), e.detail ? JSON.stringify(e.detail) : null, state, host, pid])
    return row(r!)
  }

  /** one head event claimed in a transaction of its own, or undefined when none is free */
  const claimOne = async (now: number, probe: boolean): Promise<Claim | undefined> => {
    let client: pg.PoolClient
    try {
      client = await pool.connect()
    } catch (err) {
      throw unavailable(err)
    }
    try {
      await client.query('BEGIN')
      await client.query(`SET LOCAL idle_in_transaction_session_timeout = '${CLAIM_IDLE_S}s'`)
      const { rows } = await client.query(
        `SELECT * FROM vcs_events WHERE pos IN (${HEADS}) AND state = 'pending' ${probe ? '' : 'AND next_at <= $1'}
         ORDER BY ${probe ? 'next_at, pos' : 'pos'} LIMIT 1 FOR UPDATE SKIP LOCKED`, probe ? [] : [now])
      const r = rows[0] as Record<string, unknown> | undefined
      if (!r) {
        await client.query('ROLLBACK')
        client.release()
        return undefined
      }
      if (r.seq === null) {
        const seq = await client.query<{ last: string }>(
          'INSERT INTO vcs_event_seqs (repo, last) VALUES ($1, 1) ON CONFLICT (repo) DO UPDATE SET last = vcs_event_seqs.last + 1 RETURNING last', [r.repo])
        r.seq = seq.rows[0]!.last
        await client.query('UPDATE vcs_events SET seq = $1 WHERE pos = $2', [r.seq, r.pos])
      }
      return {
        event: row(r),
        async finish(outcome: Outcome) {
          try {
            if ('delivered' in outcome) {
              await client.query("UPDATE vcs_events SET state = 'delivered', delivered_at = $1, attempts = attempts + 1, last_error = NULL WHERE pos = $2", [Date.now(), r.pos])
            } else if ('failed' in outcome) {
              await client.query("UPDATE vcs_events SET state = 'failed', last_error = $1, attempts = attempts + 1 WHERE pos = $2", [outcome.failed, r.pos])
            } else {
              await client.query('UPDATE vcs_events SET next_at = $1, last_error = $2, last_attempt_at = $3, attempts = attempts + 1 WHERE pos = $4', [outcome.retryAt, outcome.error, Date.now(), r.pos])
            }
            await client.query('COMMIT')
            client.release()
          } catch (err) {
            // the server went away: the row's lock went with the connection, the attempt is not recorded
            client.release(err as Error)
            throw isUnavailable(err) ? unavailable(err) : err
          }
        },
      }
    } catch (err) {
      client.release(err as Error)
      throw isUnavailable(err) ? unavailable(err) : err
    }
  }

  return {
    intend: (e, host, pid) => insert(e, 'intent', host, pid),
    append: (e) => insert(e, 'pending', '', 0),
    async settle(id, changes) {
      const rows = changes.length
        ? await query("UPDATE vcs_events SET state = 'pending', changes = $1, next_at = $2 WHERE id = $3 AND state = 'intent' RETURNING pos", [JSON.stringify(changes), Date.now(), id])
        : await query("DELETE FROM vcs_events WHERE id = $1 AND state = 'intent' RETURNING pos", [id])
      return rows.length > 0
    },
    async intents() { return (await query("SELECT * FROM vcs_events WHERE state = 'intent' ORDER BY pos")).map(row) },
    async laterMoves(repo, pos, ref) {
      const rows = await query<{ changes: Change[] }>('SELECT changes FROM vcs_events WHERE repo = $1 AND pos > $2 ORDER BY pos', [repo, pos])
      return rows.flatMap((r) => r.changes.filter((c) => c.ref === ref))
    },
    async claim(limit, now, probe = false) {
      const claims: Claim[] = []
      while (claims.length < (probe ? 1 : limit)) {
        const c = await claimOne(now, probe)
        if (!c) break
        claims.push(c)
      }
      return claims
    },
    async wakeAll(now, since) { await query("UPDATE vcs_events SET next_at = $1 WHERE state = 'pending' AND next_at > $1 AND last_attempt_at > $2", [now, since]) },
    async list(f) {
      return (await query('SELECT * FROM vcs_events WHERE ($1::text IS NULL OR repo = $1) AND ($2::text IS NULL OR state = $2) ORDER BY pos DESC LIMIT $3',
        [f.repo ?? null, f.state ?? null, f.limit])).map(row)
    },
    async redeliver(target, now) {
      const rows = 'id' in target
        ? (/^[0-9a-f-]{36}$/i.test(target.id) ? await query("UPDATE vcs_events SET state = 'pending', next_at = $1, attempts = 0 WHERE id = $2 AND state IN ('delivered', 'failed') RETURNING pos", [now, target.id]) : [])
        : await query("UPDATE vcs_events SET state = 'pending', next_at = $1, attempts = 0 WHERE repo = $2 AND state = 'failed' RETURNING pos", [now, target.repo])
      return rows.length
    },
    async stats(): Promise<JournalStats> {
      const [s] = await query<{ pending: string; intents: string; failed: string; oldest: string | null }>(`SELECT
        COUNT(*) FILTER (WHERE state = 'pending') AS pending, COUNT(*) FILTER (WHERE state = 'intent') AS intents,
        COUNT(*) FILTER (WHERE state = 'failed') AS failed, MIN(at) FILTER (WHERE state IN ('intent', 'pending')) AS oldest FROM vcs_events`)
      return { pending: Number(s!.pending), intents: Number(s!.intents), failed: Number(s!.failed), oldestPendingAt: s!.oldest === null ? null : Number(s!.oldest) }
    },
    async close() { await pool.end() },
  }
}
