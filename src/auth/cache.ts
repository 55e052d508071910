/**
 * Verified credentials, remembered briefly. An hg pull sends a dozen requests, each with
 * credentials; the slow KDF should run once, not a dozen times. Entries are keyed by an HMAC
 * of the credentials under a per-process random key (the plain secret is never a map key), live
 * for a short TTL (never past the credential's own expiry), and are all dropped when the store
 * reports any change (a password, token or user changed, by this process or the CLI). Full, the
 * least recently used entry makes room (lru-cache).
 *
 * An entry in the last quarter of its life is refreshed ahead of its expiry by the request that
 * finds it (the plugin verifies that request's credentials again in the background): a busy
 * credential would otherwise expire under load and every concurrent request of its user wait on
 * one slow derivation (0.7 s at production cost).
 */
import { createHmac, randomBytes } from 'node:crypto'
import { LRUCache } from 'lru-cache'
import type { Credentials } from './credentials.js'

export interface CachedIdentity {
  id: number
  name: string
  via: 'password' | 'token'
  /** when the credential itself expires (a token's expiry), ms since the epoch: the entry never outlives it */
  expiresAt?: number
}

export class CredentialCache {
  private readonly key = randomBytes(32)
  private readonly entries: LRUCache<string, CachedIdentity>
  constructor(private readonly ttlMs: number, maxEntries = 10_000) {
    this.entries = new LRUCache({ max: maxEntries, ttl: Math.max(ttlMs, 1) })
  }

  keyFor(creds: Credentials): string {
    const h = createHmac('sha256', this.key)
    h.update(creds.scheme)
    h.update('\0')
    if (creds.scheme === 'basic') h.update(creds.username).update('\0')
    return h.update(creds.secret).digest('base64')
  }

  get(key: string): CachedIdentity | undefined {
    const e = this.entries.get(key)
    if (!e) return undefined
    const { expiresAt: _, ...identity } = e
    return identity
  }

  set(key: string, identity: CachedIdentity): void {
    const left = identity.expiresAt === undefined ? this.ttlMs : Math.min(this.ttlMs, identity.expiresAt - Date.now())
    if (left > 0) this.entries.set(key, identity, { ttl: left })
  }

  /** True when `key` is cached and in the last quarter of its TTL (not cut short by the credential's own expiry). */
  dueForRefresh(key: string): boolean {
    const e = this.entries.get(key, { updateAgeOnGet: false })
    if (!e || (e.expiresAt !== undefined && e.expiresAt - Date.now() < this.ttlMs)) return false
    return this.entries.getRemainingTTL(key) < this.ttlMs / 4
  }

  delete(key: string): void {
    this.entries.delete(key)
  }

  clear(): void {
    this.entries.clear()
  }
}
