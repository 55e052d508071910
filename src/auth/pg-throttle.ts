/**
 * Failed-login counts shared by every worker of a pool, in PostgreSQL: a pool of N allows the
 * limit, not N times it. (HAProxy stick tables were the other choice; they would count per
 * HAProxy instance, see only a status code and not which credential failed, and could not tell
 * a bad token from a bad password: docs/decisions/shared-throttle.md.) Times are the database's
 * clock, so hosts whose clocks differ still agree. While the database cannot be reached, each
 * worker counts on its own again (the local throttle keeps every failure too).
 */
import { LoginThrottle, type FailureCounter } from './throttle.js'
import { StoreUnavailableError } from './store.js'

type Query = <R extends Record<string, unknown>>(text: string, values?: unknown[]) => Promise<R[]>

const NOW_MS = '(extract(epoch from clock_timestamp()) * 1000)::bigint'
/** old rows are deleted by the worker that fails a login, at most this often */
const SWEEP_EVERY_MS = 60_000

export function pgFailureCounter(query: Query, name: string, limit: number, windowMs: number): FailureCounter {
  const local = new LoginThrottle(limit, windowMs)
  let sweptAt = 0
  const key = (k: string): string => `${name}\0${k}`.replace(/\0/g, '\u0001') // text cannot hold NUL
  return {
    async retryAfter(k, address, since = 0) {
      // this worker's own count is part of the pool's: when it already says wait, no query
      // (`since` is the database's clock, the local count this host's: the local shortcut only without an unlock)
      const here = since ? 0 : local.retryAfter(k, address)
      if (here > 0) return here
      try {
        const rows = await query<{ at_ms: string; now_ms: string }>(
          `SELECT at_ms, ${NOW_MS} AS now_ms FROM login_failures WHERE key = $1 AND address = $2 AND at_ms > ${NOW_MS} - $3 AND at_ms > $5 ORDER BY at_ms DESC LIMIT $4`,
          [key(k), address, windowMs, limit, since])
        if (rows.length < limit) return 0
        const oldest = Number(rows[limit - 1]!.at_ms)
        return Math.max(1, Math.ceil((oldest + windowMs - Number(rows[0]!.now_ms)) / 1000))
      } catch (err) {
        if (err instanceof StoreUnavailableError) return local.retryAfter(k, address, Date.now(), since)
        throw err
      }
    },
    async fail(k, address) {
      local.fail(k, address)
      try {
        await query(`INSERT INTO login_failures (key, address, at_ms) VALUES ($1, $2, ${NOW_MS})`, [key(k), address])
        if (Date.now() - sweptAt > SWEEP_EVERY_MS) {
          sweptAt = Date.now()
          await query(`DELETE FROM login_failures WHERE at_ms < ${NOW_MS} - $1`, [windowMs])
        }
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err
      }
    },
  }
}
