/**
 * Credentials from the Authorization header. Basic per RFC 7617 (user-id and password split at
 * the first colon, so passwords may contain colons; control characters are not allowed in
 * either, section 2); Bearer per RFC 6750 section 2.1 (a token68). Every malformed header is
 * the same "bad credentials" answer: the parser never says which part was wrong.
 */

export type Credentials =
  | { scheme: 'basic'; username: string; secret: string }
  | { scheme: 'bearer'; secret: string }

/** Longest user name (characters, after NFC): what `user add` accepts. */
export const MAX_USER_NAME = 64
/** Longest Authorization header considered (git and hg send well under 1 KiB). */
export const MAX_AUTHORIZATION = 4096
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/
// RFC 7617 section 2: user-id and password are *TEXT without CTLs.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/

/** Parses the header; undefined when absent, 'malformed' when present but unusable. */
export function parseAuthorization(header: string | undefined): Credentials | 'malformed' | undefined {
  if (header === undefined || header === '') return undefined
  if (header.length > MAX_AUTHORIZATION) return 'malformed'
  const space = header.indexOf(' ')
  if (space <= 0) return 'malformed'
  const scheme = header.slice(0, space).toLowerCase()
  const value = header.slice(space + 1).trim()
  if (scheme === 'basic') {
    if (!BASE64.test(value) || value.length % 4 !== 0 || value.length === 0) return 'malformed'
    const decoded = Buffer.from(value, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon <= 0) return 'malformed' // no colon, or an empty user-id
    const username = decoded.slice(0, colon)
    const secret = decoded.slice(colon + 1)
    if (CONTROL.test(username) || CONTROL.test(secret) || decoded.includes('\ufffd')) return 'malformed'
    const name = username.normalize('NFC')
    // no user has a longer name (checkUserName): refused before the store or a throttle key sees it
    if (name.length > MAX_USER_NAME) return 'malformed'
    return { scheme: 'basic', username: name, secret }
  }
  if (scheme === 'bearer') {
    if (!TOKEN68.test(value)) return 'malformed'
    return { scheme: 'bearer', secret: value }
  }
  return 'malformed'
}
