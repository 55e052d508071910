/**
 * Failed-login throttling keyed by username and client address together: an address alone
 * would lock out a whole CI farm behind one NAT, a username alone would let anyone lock out a
 * user. After `limit` failures inside `windowMs`, that pair gets 429 until the oldest failure
 * leaves the window. Successes are never slowed and never counted. Per worker process: a pool
 * of N workers allows up to N x limit attempts per window (README). The number of pairs is
 * bounded: full, the least recently failed pair goes (never the whole table, which would hand
 * an attacker a reset).
 */
import { LRUCache } from 'lru-cache'

export class LoginThrottle {
  private readonly failures: LRUCache<string, number[]>
  constructor(private readonly limit: number, private readonly windowMs: number, maxKeys = 100_000) {
    this.failures = new LRUCache({ max: maxKeys, ttl: windowMs })
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

  /** Seconds to wait when the pair is blocked, else 0. */
  retryAfter(user: string, address: string, now = Date.now()): number {
    const list = this.recent(this.key(user, address), now)
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
