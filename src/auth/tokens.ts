/**
 * Access tokens: 256 random bits, shown once, stored only as their SHA-256. A fast hash is
 * right here (unlike passwords): the input is uniformly random, so there is nothing to guess.
 * The `vcsw_` prefix lets secret scanners and our own Basic-auth path recognise a token.
 */
import { createHash, randomBytes } from 'node:crypto'

export const TOKEN_PREFIX = 'vcsw_'

export function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url')
}

export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token).digest()
}

export function looksLikeToken(secret: string): boolean {
  return secret.startsWith(TOKEN_PREFIX) && secret.length === TOKEN_PREFIX.length + 43
}
