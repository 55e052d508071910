/**
 * The auth middleware as a fastify plugin. Authenticate once per request (credentials →
 * identity, or the anonymous identity), authorize per thing: repository × action through repo
 * hooks, and for git pushes each ref update through ref hooks. The store's visibility and
 * grants are the first repo hook; branch protection is the first ref hook. Other code adds
 * its own with `app.vcsAuth.addRepoHook` / `addRefHook`; a hook denies by throwing (repo) or
 * by returning rejections (refs). Anything unknown is denied: fail closed.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ForbiddenError, RepoNotFoundError, ServiceUnavailableError, ThrottledError, UnauthorizedError, type VcsError } from '../errors.js'
import type { RepoRef } from '../repos/path.js'
import { MAX_AUTHORIZATION, parseAuthorization, type Credentials } from './credentials.js'
import { dummyPasswordHash, DEFAULT_SCRYPT, PasswordQueueFullError, PasswordVerifier } from './password.js'
import { hashToken, looksLikeToken } from './tokens.js'
import { CredentialCache, type CachedIdentity, type Clock } from './cache.js'
import { localFailureCounter, type FailureCounter } from './throttle.js'
import type { Level, RequestStore } from './store.js'
import { protectionHook } from './protection.js'

export type Action = 'read' | 'write'

export type Identity =
  | { kind: 'anonymous' }
  | { kind: 'user'; id: number; name: string; via: 'password' | 'token' }

export const ANONYMOUS: Identity = Object.freeze({ kind: 'anonymous' })

export interface RepoContext {
  principal: Identity
  repo: RepoRef
  action: Action
}
/** Throws a VcsError to deny; returning means "no objection". */
export type RepoHook = (ctx: RepoContext) => Promise<void>

export type RefUpdateKind = 'create' | 'update' | 'force' | 'delete'
export interface RefUpdate {
  ref: string
  oldId: string
  newId: string
  kind: RefUpdateKind
}
export interface RefRejection {
  ref: string
  reason: string
}
export interface RefContext {
  principal: Identity
  repo: RepoRef
  updates: RefUpdate[]
  /**
   * Where the push's new objects wait until the hooks accept it (git's quarantine): a hook that
   * reads the new commits points git there (GIT_OBJECT_DIRECTORY, with the repo's own objects as
   * the alternate). Checked to lie inside the repo's objects directory.
   */
  quarantine?: { objects: string; alternate: string }
}
/** Returns the updates it refuses, each with a one-line reason the git user will see. */
export type RefHook = (ctx: RefContext) => Promise<RefRejection[]>

export interface VcsAuth {
  readonly store: RequestStore
  /** Who is asking: from the Authorization header, once per request. */
  authenticate(req: FastifyRequest): Promise<Identity>
  /** Authenticates if needed, then runs every repo hook; throws 401/403/404. */
  authorize(req: FastifyRequest, repo: RepoRef, action: Action): Promise<Identity>
  /**
   * Finds the repo with `lookup`, then authorizes `action` on it. To a caller who is not
   * authenticated, a missing repo answers as a private one does (401), so nobody learns which
   * private repos exist by asking anonymously or with wrong credentials.
   */
  authorizeLookup(req: FastifyRequest, lookup: () => Promise<RepoRef>, action: Action): Promise<{ repo: RepoRef; principal: Identity }>
  /** Runs every ref hook over a push's updates; the union of their rejections. */
  checkRefUpdates(ctx: RefContext): Promise<RefRejection[]>
  addRepoHook(hook: RepoHook): void
  addRefHook(hook: RefHook): void
}

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity | null
  }
  interface FastifyInstance {
    vcsAuth: VcsAuth
  }
}

export interface AuthOptions {
  store: RequestStore
  realm: string
  cacheTtlMs?: number
  /** failed logins of one user name (or of tokens, or malformed headers) from one address before 429 */
  throttleLimit?: number
  /** failed password logins from one address across all user names before 429 */
  addressThrottleLimit?: number
  /** failed password logins of one user name across all addresses before that user's password logins get 429 from anywhere */
  userThrottleLimit?: number
  throttleWindowMs?: number
  /** password checks waiting for the KDF before 503 */
  passwordQueueLimit?: number
  scrypt?: { N: number; r: number; p: number }
  /** the credential cache's clock (ms since the epoch): the real one unless a test moves its own */
  clock?: Clock
}

/** Throttle keys: each kind of failure counts apart, so garbage never locks out a real credential. */
const MALFORMED = '\0malformed'
const TOKENS = '\0token'
const passwordKey = (user: string): string => `password:${user}`

/** Public when the store says so; otherwise grantees only. admin ⊃ write ⊃ read. */
export function levelAllows(level: Level | undefined, action: Action): boolean {
  switch (action) {
    case 'read': return level !== undefined
    case 'write': return level === 'write' || level === 'admin'
    default: {
      const never: never = action
      return Boolean(never) && false
    }
  }
}

/** Why a credential was not accepted, for the access log. */
interface Why { reason?: string }

async function authPlugin(app: FastifyInstance, opts: AuthOptions): Promise<void> {
  const { store, realm } = opts
  const cache = new CredentialCache(opts.cacheTtlMs ?? 60_000, undefined, opts.clock)
  const windowMs = opts.throttleWindowMs ?? 5 * 60_000
  // shared by the pool when the store can (PostgreSQL), else this worker's own
  const counter = (name: string, limit: number): FailureCounter => store.failureCounter?.(name, limit, windowMs) ?? localFailureCounter(limit, windowMs)
  const throttle = counter('user', opts.throttleLimit ?? 10)
  const addressThrottle = counter('address', opts.addressThrottleLimit ?? 50)
  const userThrottle = counter('user-any', opts.userThrottleLimit ?? 10)
  /** the latest `user unlock` of any of these subjects (`user:NAME`, `address:ADDR`), 0 when none */
  const unlockedSince = async (...subjects: string[]): Promise<number> => Math.max(0, ...(await Promise.all(subjects.map((s) => store.loginsUnlockedAt(s)))).map((t) => t ?? 0))
  const verifier = new PasswordVerifier({ concurrency: 2, queueLimit: opts.passwordQueueLimit ?? 16 })
  const scryptParams = opts.scrypt ?? DEFAULT_SCRYPT
  const repoHooks: RepoHook[] = []
  const refHooks: RefHook[] = []
  const challenge = (msg: string): UnauthorizedError => new UnauthorizedError(msg, realm)

  /** A token (Bearer, or a token-shaped Basic password): one hash lookup, no KDF. */
  async function verifyToken(creds: Credentials, why: Why = {}): Promise<CachedIdentity | undefined> {
    const token = await store.findToken(hashToken(creds.secret))
    if (!token) return void (why.reason = 'unknown token')
    if (token.revokedAt !== null) return void (why.reason = `token ${token.id} revoked`)
    if (token.expiresAt !== null && token.expiresAt * 1000 <= Date.now()) return void (why.reason = `token ${token.id} expired`)
    // With Basic, the token must belong to the user named (git sends user + token as password).
    if (creds.scheme === 'basic' && creds.username !== token.userName) return void (why.reason = `token ${token.id} belongs to another user`)
    // for `token list`, written at most hourly; a store that cannot take it costs the request nothing
    store.touchToken(token.id).catch((err: unknown) => app.log.debug({ err }, 'could not note a token\'s use'))
    return { id: token.userId, name: token.userName, via: 'token', expiresAt: token.expiresAt === null ? undefined : token.expiresAt * 1000 }
  }

  /** A password: the slow KDF, through the bounded, single-flight verifier. */
  async function verifyUserPassword(creds: Credentials & { scheme: 'basic' }, key: string, why: Why = {}): Promise<CachedIdentity | undefined> {
    const user = await store.findUser(creds.username)
    // an unknown user costs the same derivation, so response time does not reveal who exists
    const ok = await verifier.verify(key, creds.secret, user ? user.passwordHash : await dummyPasswordHash(scryptParams))
    if (!user) why.reason = 'unknown user'
    else if (!ok) why.reason = 'wrong password'
    return ok && user ? { id: user.id, name: user.name, via: 'password' } : undefined
  }

  const throttled = (wait: number): VcsError => new ThrottledError(wait)

  /** Verifies cached credentials again in the background; the request that asked goes on. */
  const refreshing = new Set<string>()
  function refreshAhead(creds: Credentials, key: string): void {
    if (refreshing.has(key)) return
    refreshing.add(key)
    const isToken = creds.scheme === 'bearer' || looksLikeToken(creds.secret)
    const verify = isToken ? verifyToken(creds) : verifyUserPassword(creds as Credentials & { scheme: 'basic' }, key)
    verify.then((identity) => {
      if (identity) cache.set(key, identity)
      else cache.delete(key) // no longer valid: the next request is refused
      app.log.debug({ via: identity?.via }, 'credentials refreshed ahead of expiry')
    }, () => { /* busy or unreachable: the entry expires as it would have */ }).finally(() => refreshing.delete(key))
  }

  async function authenticate(req: FastifyRequest): Promise<Identity> {
    if (req.identity) return req.identity
    const header = req.headers.authorization
    if (header === undefined || header === '') return (req.identity = ANONYMOUS)
    if (store.changedSinceLastCheck()) cache.clear()
    // the warm path: a header verified before is found without parsing it again
    const key = header.length <= MAX_AUTHORIZATION ? cache.keyFor(header) : ''
    const cached = key === '' ? undefined : cache.get(key)
    if (cached) {
      if (cache.dueForRefresh(key)) {
        const again = parseAuthorization(header)
        if (typeof again === 'object') refreshAhead(again, key)
      }
      return (req.identity = { kind: 'user', ...cached })
    }
    const creds = parseAuthorization(header)
    if (creds === undefined) return (req.identity = ANONYMOUS)
    if (creds === 'malformed') {
      // a pair already blocked records nothing more: a flood costs no store write per request
      const wait = await throttle.retryAfter(MALFORMED, req.ip)
      if (wait > 0 && (await throttle.retryAfter(MALFORMED, req.ip, await unlockedSince(`address:${req.ip}`))) > 0) throw throttled(wait)
      await throttle.fail(MALFORMED, req.ip)
      throw challenge('malformed Authorization header')
    }
    // A token is unguessable and cheap to check: a valid one always passes. A password is
    // throttled before the KDF runs: per user name and address, and per address across names.
    const isToken = creds.scheme === 'bearer' || looksLikeToken(creds.secret)
    if (!isToken) {
      // three budgets: this user from this address, this address across names, and this user
      // across addresses (a trusted proxy relaying many clients, or a botnet, spreading its
      // guesses); the last locks the user's password out from anywhere, never their tokens
      const name = (creds as { username: string }).username
      const waits = async (since: { user: number; address: number }): Promise<number> => Math.max(...(await Promise.all([
        throttle.retryAfter(passwordKey(name), req.ip, Math.max(since.user, since.address)),
        addressThrottle.retryAfter('', req.ip, since.address),
        userThrottle.retryAfter(passwordKey(name), '', since.user),
      ])))
      let wait = await waits({ user: 0, address: 0 })
      // throttled: unless an operator unlocked the user or the address since (`user unlock`)
      if (wait > 0) wait = await waits({ user: await unlockedSince(`user:${name}`), address: await unlockedSince(`address:${req.ip}`) })
      if (wait > 0) {
        if (req.accessRecord) req.accessRecord.login = { user: name.slice(0, 64), reason: 'throttled (too many failed logins)' }
        req.log.info({ user_tried: name.slice(0, 64), ip: req.ip }, 'password login throttled')
        throw throttled(wait)
      }
    }
    let identity: CachedIdentity | undefined
    const why: Why = {}
    try {
      identity = isToken ? await verifyToken(creds, why) : await verifyUserPassword(creds as Credentials & { scheme: 'basic' }, key, why)
    } catch (err) {
      if (err instanceof PasswordQueueFullError) throw new ServiceUnavailableError('server busy checking passwords; try again in a few seconds')
      throw err
    }
    if (!identity) {
      // the audit trail: who was tried and why it failed, never the secret
      const tried = creds.scheme === 'basic' ? creds.username.slice(0, 64) : undefined
      if (req.accessRecord) req.accessRecord.login = { user: tried, reason: why.reason ?? 'invalid credentials' }
      req.log.info({ ip: req.ip, scheme: creds.scheme, user_tried: tried, reason: why.reason }, 'authentication failed')
      if (isToken) {
        const wait = await throttle.retryAfter(TOKENS, req.ip)
        if (wait > 0 && (await throttle.retryAfter(TOKENS, req.ip, await unlockedSince(`address:${req.ip}`))) > 0) throw throttled(wait)
        await throttle.fail(TOKENS, req.ip)
      } else {
        const name = (creds as { username: string }).username
        await Promise.all([throttle.fail(passwordKey(name), req.ip), addressThrottle.fail('', req.ip), userThrottle.fail(passwordKey(name), '')])
      }
      throw challenge('invalid credentials')
    }
    req.log.debug({ via: identity.via }, 'credentials verified (cache miss)')
    cache.set(key, identity)
    return (req.identity = { kind: 'user', id: identity.id, name: identity.name, via: identity.via })
  }

  const anonymousChallenge = (action: Action): UnauthorizedError => challenge(action === 'write' ? 'authentication required to push' : 'authentication required')

  /** The built-in repo hook: visibility and grants from the store. */
  const grantsHook: RepoHook = async ({ principal, repo, action }) => {
    const record = await store.authorizeRepo(repo.name)
    const isPublic = record?.public ?? false
    if (principal.kind === 'anonymous') {
      if (action === 'read' && isPublic) return
      throw anonymousChallenge(action)
    }
    if (action === 'read' && isPublic) return // no grant needed, no query
    const level = await store.findGrant(principal.id, repo.name)
    if (!isPublic && !levelAllows(level, 'read')) throw new RepoNotFoundError() // never reveal a private repo
    if (!levelAllows(level, action)) {
      throw new ForbiddenError(`${principal.name} may read ${repo.name} but not push to it`)
    }
  }
  repoHooks.push(grantsHook)
  refHooks.push(protectionHook(store))

  const auth: VcsAuth = {
    store,
    authenticate,
    async authorize(req, repo, action) {
      const principal = await authenticate(req)
      if (principal.kind === 'user' && req.accessRecord) req.accessRecord.user = principal.name // our access log, when present
      for (const hook of repoHooks) await hook({ principal, repo, action })
      return principal
    },
    async authorizeLookup(req, lookup, action) {
      let repo: RepoRef
      try {
        repo = await lookup()
      } catch (err) {
        // authenticate() throws 401 itself for credentials that do not verify
        if (err instanceof RepoNotFoundError && (await authenticate(req)).kind === 'anonymous') throw anonymousChallenge(action)
        throw err
      }
      return { repo, principal: await auth.authorize(req, repo, action) }
    },
    async checkRefUpdates(ctx) {
      const rejections: RefRejection[] = []
      for (const hook of refHooks) {
        for (const r of await hook(ctx)) if (!rejections.some((x) => x.ref === r.ref)) rejections.push(r)
      }
      return rejections
    },
    addRepoHook: (hook) => { repoHooks.push(hook) },
    addRefHook: (hook) => { refHooks.push(hook) },
  }
  app.decorateRequest('identity', null)
  app.decorate('vcsAuth', auth)
}

export default fp(authPlugin, { name: 'vcs-auth', fastify: '5.x' })
