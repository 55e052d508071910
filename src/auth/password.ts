/**
 * Password hashing with scrypt from node:crypto. The parameters are stored with each hash
 * (`scrypt$N$r$p$salt$hash`), so raising them later leaves old hashes verifiable.
 * Comparison is constant-time (crypto.timingSafeEqual).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto'

const scrypt = (password: string, salt: Buffer, keylen: number, opts: ScryptOptions): Promise<Buffer> =>
  new Promise((resolve, reject) => scryptCb(password, salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key))))

/** OWASP's scrypt floor (N=2^17, r=8, p=1); tests may lower N through the store options. */
export const DEFAULT_SCRYPT = { N: 2 ** 17, r: 8, p: 1 }
const KEYLEN = 32

/** The scrypt parameters of cost `log2N` (the kdfCost setting). */
export function scryptParams(log2N: number): { N: number; r: number; p: number } {
  return { N: 2 ** log2N, r: 8, p: 1 }
}

/** Hashes a password with fresh salt. */
export async function hashPassword(password: string, params = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(16)
  const key = await scrypt(password, salt, KEYLEN, { ...params, maxmem: 256 * params.N * params.r })
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64')}$${key.toString('base64')}`
}

/** Thrown when the queue of password checks is full: the caller answers 503, not a wrong-password 401. */
export class PasswordQueueFullError extends Error {
  readonly code = 'VCS_PASSWORD_QUEUE_FULL'
}

/**
 * Runs password derivations: at most `concurrency` at once (one per core here; each holds
 * 128 x N x r bytes, 128 MiB at the default cost), at most `queueLimit` waiting (past it,
 * PasswordQueueFullError at once: a burst of made-up user names must not delay a real login
 * by half a minute), and one derivation per credential at a time: concurrent checks of the same
 * `key` share the first one's result.
 */
export class PasswordVerifier {
  private running = 0
  private readonly waiting: (() => void)[] = []
  private readonly inFlight = new Map<string, Promise<boolean>>()

  constructor(private readonly opts: { concurrency: number; queueLimit: number; derive?: (password: string, stored: string) => Promise<boolean> }) {}

  get queued(): number { return this.waiting.length }

  /** Checks `password` against `stored`; `key` names the credential (a keyed hash, never the secret). */
  verify(key: string, password: string, stored: string): Promise<boolean> {
    const shared = this.inFlight.get(key)
    if (shared) return shared
    const run = this.withSlot(() => (this.opts.derive ?? verifyPassword)(password, stored)).finally(() => this.inFlight.delete(key))
    this.inFlight.set(key, run)
    return run
  }

  private async withSlot<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.opts.concurrency) {
      if (this.waiting.length >= this.opts.queueLimit) throw new PasswordQueueFullError('too many password checks waiting')
      await new Promise<void>((resolve) => this.waiting.push(resolve))
    }
    this.running++
    try {
      return await fn()
    } finally {
      this.running--
      this.waiting.shift()?.()
    }
  }
}

/** Checks a password against a stored hash; false for any malformed hash. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number]
  if (![N, r, p].every((x) => Number.isSafeInteger(x) && x > 0) || N > 2 ** 22) return false
  const salt = Buffer.from(parts[4]!, 'base64')
  const expected = Buffer.from(parts[5]!, 'base64')
  const key = await scrypt(password, salt, expected.length, { N, r, p, maxmem: 256 * N * r })
  return key.length === expected.length && timingSafeEqual(key, expected)
}

/** A stored hash to check unknown users' passwords against, so response time does not reveal who exists. */
let dummyHash: Promise<string> | undefined
export function dummyPasswordHash(params = DEFAULT_SCRYPT): Promise<string> {
  dummyHash ??= hashPassword('not-a-user', params)
  return dummyHash
}
