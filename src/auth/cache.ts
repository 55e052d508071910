/**
 * Verified credentials, remembered briefly. An hg pull sends a dozen requests, each with
 * credentials; the slow KDF should run once, not a dozen times. Entries are keyed by a SHA-256
 * of the Authorization header as sent, prefixed with a per-process random salt (the plain secret
 * is never a map key; nobody ever sees a key, so the prefix construction needs no HMAC, and one
 * call of crypto.hash costs a seventh of parsing the header and an HMAC), live
 * for a short TTL (never past the credential's own expiry), and are all dropped when the store
 * reports any change (a password, token or user changed, by this process or the CLI). Full, the
 * least recently used entry makes room (lru-cache).
 *
 * An entry in the last quarter of its life is refreshed ahead of its expiry by the request that
 * finds it (the plugin verifies that request's credentials again in the background): a busy
 * credential would otherwise expire under load and every concurrent request of its user wait on
 * one slow derivation (0.7 s at production cost).
 */
import { hash, randomBytes } from 'node:crypto'
import { LRUCache } from 'lru-cache'

export interface CachedIdentity {
  id: number
  name: string
  via: 'password' | 'token'
  /** when the credential itself expires (a token's expiry), ms since the epoch: the entry never outlives it */
  expiresAt?: number
}

/** What the cache reads the time from: ms since the epoch (tests pass a clock they move). */
export interface Clock {
  now(): number
}

export class CredentialCache {
  private readonly salt = randomBytes(32).toString('base64')
  private readonly entries: LRUCache<string, CachedIdentity>
  constructor(private readonly ttlMs: number, maxEntries = 10_000, private readonly clock: Clock = Date) {
    // ttlResolution 0: lru-cache otherwise keeps its clock for 1 ms with a setTimeout, armed
    // again by the first lookup of each millisecond; at thousands of warm requests a second
    // those timers cost more than the rest of the lookup (the authenticated request cost the
    // worker ~4% more CPU than the anonymous one; without them, the two are within 1%)
    this.entries = new LRUCache({ max: maxEntries, ttl: Math.max(ttlMs, 1), ttlResolution: 0, perf: clock })
  }

  /** The key of an Authorization header: a hit needs no parsing (only verified headers are ever set). */
  keyFor(authorization: string): string {
    return hash('sha256', this.salt + authorization, 'base64')
  }

  get(key: string): CachedIdentity | undefined {
    const e = this.entries.get(key)
    if (!e) return undefined
    const { expiresAt: _, ...identity } = e
    return identity
  }

  set(key: string, identity: CachedIdentity): void {
    const left = identity.expiresAt === undefined ? this.ttlMs : Math.min(this.ttlMs, identity.expiresAt - this.clock.now())
    if (left > 0) this.entries.set(key, identity, { ttl: left })
  }

  /** True when `key` is cached and in the last quarter of its TTL (not cut short by the credential's own expiry). */
  dueForRefresh(key: string): boolean {
    const e = this.entries.get(key, { updateAgeOnGet: false })
    if (!e || (e.expiresAt !== undefined && e.expiresAt - this.clock.now() < this.ttlMs)) return false
    return this.entries.getRemainingTTL(key) < this.ttlMs / 4
  }

  delete(key: string): void {
    this.entries.delete(key)
  }

  clear(): void {
    this.entries.clear()
  }
}
