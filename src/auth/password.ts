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

/** Hashes a password with fresh salt. */
export async function hashPassword(password: string, params = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(16)
  const key = await scrypt(password, salt, KEYLEN, { ...params, maxmem: 256 * params.N * params.r })
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64')}$${key.toString('base64')}`
}

/**
 * At most two derivations at once (one per core here): each holds 128 x N x r bytes (128 MiB
 * at the default cost), so a burst of cache misses must queue rather than multiply memory.
 */
const MAX_CONCURRENT = 2
let running = 0
const waiting: (() => void)[] = []
async function withSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= MAX_CONCURRENT) await new Promise<void>((resolve) => waiting.push(resolve))
  running++
  try {
    return await fn()
  } finally {
    running--
    waiting.shift()?.()
  }
}

/** Checks a password against a stored hash; false for any malformed hash. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  return withSlot(() => verifyNow(password, stored))
}

async function verifyNow(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number]
  if (![N, r, p].every((x) => Number.isSafeInteger(x) && x > 0) || N > 2 ** 22) return false
  const salt = Buffer.from(parts[4]!, 'base64')
  const expected = Buffer.from(parts[5]!, 'base64')
  const key = await scrypt(password, salt, expected.length, { N, r, p, maxmem: 256 * N * r })
  return key.length === expected.length && timingSafeEqual(key, expected)
}

/** A dummy verification for unknown users, so response time does not reveal who exists. */
let dummyHash: Promise<string> | undefined
export async function burnPasswordCheck(password: string, params = DEFAULT_SCRYPT): Promise<void> {
  dummyHash ??= hashPassword('not-a-user', params)
  await verifyPassword(password, await dummyHash)
}
