/**
 * Verified credentials, remembered briefly. An hg pull sends a dozen requests, each with
 * credentials; the slow KDF should run once, not a dozen times. Entries are keyed by an HMAC
 * of the credentials under a per-process random key (the plain secret is never a map key), live
 * for a short TTL (never past the credential's own expiry), and are all dropped when the store reports any change (a password, token or
 * user changed, by this process or the CLI).
 */
import { createHmac, randomBytes } from 'node:crypto'
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
  private readonly entries = new Map<string, { identity: CachedIdentity; expires: number }>()
  constructor(private readonly ttlMs: number, private readonly maxEntries = 10_000) {}

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
    if (e.expires <= Date.now()) {
      this.entries.delete(key)
      return undefined
    }
    const { expiresAt: _, ...identity } = e.identity
    return identity
  }

  set(key: string, identity: CachedIdentity): void {
    if (this.entries.size >= this.maxEntries) this.entries.clear()
    this.entries.set(key, { identity, expires: Math.min(Date.now() + this.ttlMs, identity.expiresAt ?? Infinity) })
  }

  clear(): void {
    this.entries.clear()
  }
}
