/**
 * Failed-login throttling keyed by username and client address together: an address alone
 * would lock out a whole CI farm behind one NAT, a username alone would let anyone lock out a
 * user. After `limit` failures inside `windowMs`, that pair gets 429 until the oldest failure
 * leaves the window. Successes are never slowed and never counted. This one counts in the
 * worker's memory: with the SQLite store, a pool of N workers allows up to N x limit. The number of pairs is
 * bounded: full, the least recently failed pair goes (never the whole table, which would hand
 * an attacker a reset). A store shared by a pool (PostgreSQL) counts for the whole pool instead
 * (pg-throttle.ts); both are a FailureCounter to the auth plugin.
 */
import { LRUCache } from 'lru-cache'

/** Failed logins of a key (a user name, or a kind of failure) from an address. */
export interface FailureCounter {
  /** seconds to wait when the pair is blocked, else 0; failures at or before `since` (ms, an unlock) do not count */
  retryAfter(key: string, address: string, since?: number): Promise<number>
  fail(key: string, address: string): Promise<void>
}

/** A worker's own counter, as a FailureCounter. */
export function localFailureCounter(limit: number, windowMs: number): FailureCounter {
  const throttle = new LoginThrottle(limit, windowMs)
  return {
    retryAfter: async (key, address, since) => throttle.retryAfter(key, address, Date.now(), since),
    fail: async (key, address) => throttle.fail(key, address),
  }
}

export class LoginThrottle {
  private readonly failures: LRUCache<string, number[]>
  constructor(private readonly limit: number, private readonly windowMs: number, maxKeys = 100_000) {
    // bounded by count through maxSize, not `max`: `max` preallocates arrays for every slot
    // (1.6 MB resident for 100,000, which only an attack would ever fill)
    this.failures = new LRUCache({ maxSize: maxKeys, sizeCalculation: () => 1, ttl: windowMs, ttlResolution: 0 })
  }

  private key(user: string, address: string): string {
    return `${user}\0${address}`
  }

  private recent(key: string, now: number): number[] {
    const list = (this.failures.get(key) ?? []).filter((t) => t > now - this.windowMs)
    if (list.length) this.failures.set(key, list)
    else this.failures.delete(key)
    return list
  }

  /** Seconds to wait when the pair is blocked, else 0; failures at or before `since` do not count. */
  retryAfter(user: string, address: string, now = Date.now(), since = 0): number {
    const list = this.recent(this.key(user, address), now).filter((t) => t > since)
    if (list.length < this.limit) return 0
    return Math.max(1, Math.ceil((list[list.length - this.limit]! + this.windowMs - now) / 1000))
  }

  fail(user: string, address: string, now = Date.now()): void {
    const key = this.key(user, address)
    const list = this.recent(key, now)
    list.push(now)
    this.failures.set(key, list)
  }
}
