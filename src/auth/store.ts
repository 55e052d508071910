/**
 * The credential and permission store behind an interface: SQLite (sqlite-store.ts) is the
 * embedded default; PostgreSQL (pg-store.ts) for pools that span machines implements the same.
 * Reads are on the request path; writes come from the CLI (another process) or another worker.
 */
import { ServiceUnavailableError } from '../errors.js'
import type { FailureCounter } from './throttle.js'

export type Level = 'read' | 'write' | 'admin'
export const LEVELS: readonly Level[] = ['read', 'write', 'admin']

export interface UserRecord {
  id: number
  name: string
  passwordHash: string
}

export interface TokenRecord {
  id: number
  userId: number
  userName: string
  expiresAt: number | null
  revokedAt: number | null
}

export interface RepoRecord {
  name: string
  kind: 'git' | 'hg'
  public: boolean
}

/** A user as `user list` shows it. */
export interface UserSummary {
  name: string
  /** seconds since the epoch */
  createdAt: number
  tokens: number
  grants: number
}

/** A token as `token list` shows it: never its secret or hash. */
export interface TokenSummary {
  id: number
  createdAt: number
  expiresAt: number | null
  revokedAt: number | null
  /** the last time it authenticated a request, to the hour (null: never) */
  lastUsedAt: number | null
}

/** What the store held under one repo name (repo delete, repo rename). */
export interface RepoRecords {
  grants: number
  protections: number
  locks: number
}

export interface GrantRecord {
  user: string
  repo: string
  level: Level
}

/** A protected ref pattern: force-push and delete refused; writable only by `users` when set. */
export interface Protection {
  pattern: string
  users: string[]
}

/** A Git LFS file lock (git-lfs docs/api/locking.md): at most one per path of a repo. */
export interface LockRecord {
  id: number
  repo: string
  /** the locked file, relative to the repository's root, `/`-separated */
  path: string
  ownerId: number
  owner: string
  /** ms since the epoch */
  lockedAt: number
}

/** What `createLock` did: made the lock, found one on the path, or found the repo at its limit. */
export type LockOutcome = { created: LockRecord } | { existing: LockRecord } | { full: true }

/** how many paths one `locksOn` query may be asked about */
export const LOCKED_AMONG_BATCH = 5000

export interface LockFilter {
  path?: string
  id?: number
  /** only locks with a greater id (the page cursor) */
  afterId?: number
  limit: number
}

/**
 * What the request path reads, behind the caches (auth/cache.ts): users, tokens, repo records,
 * grants and protections, and whether anything changed since it last asked.
 */
export interface RequestStore {
  findUser(name: string): Promise<UserRecord | undefined>
  findToken(hash: Buffer): Promise<TokenRecord | undefined>
  authorizeRepo(name: string): Promise<RepoRecord | undefined>
  /** the user's level on a repo, or undefined */
  findGrant(userId: number, repo: string): Promise<Level | undefined>
  protections(repo: string): Promise<Protection[]>
  /**
   * True when the data may have changed since the last call (any writer, any process). Cheap
   * and synchronous: it is asked on every request before a cached credential is trusted.
   */
  changedSinceLastCheck(): boolean
  /** notes a token's use; written at most once an hour per token, so the request path rarely writes */
  touchToken(id: number): Promise<void>
  /** when `subject`'s logins were last unlocked (ms since the epoch), or undefined */
  loginsUnlockedAt(subject: string): Promise<number | undefined>
  /** failed-login counts shared by every worker using this store; absent: each worker counts alone */
  failureCounter?(name: string, limit: number, windowMs: number): FailureCounter
  /** a cheap round trip for the health check; what it found, or throws */
  ping(): Promise<string>
}

/** What the admin commands write and list (the CLI, `store copy`). */
export interface AdminStore {
  findUser(name: string): Promise<UserRecord | undefined>
  addUser(name: string, passwordHash: string): Promise<void>
  setPassword(name: string, passwordHash: string): Promise<void>
  removeUser(name: string): Promise<void>
  /** renames a user; tokens, grants and locks follow (they hold the user's id). StoreConflictError when `to` exists */
  renameUser(from: string, to: string): Promise<void>
  /**
   * Moves everything the store holds under a repo name (its record, grants, protections, LFS
   * locks) to `to`, or removes it all when `to` is null; in one transaction. StoreConflictError
   * when `to` already has records. Returns how many grants, protections and locks it touched.
   */
  moveRepo(from: string, to: string | null): Promise<RepoRecords>
  /** stores a token hash; returns the token's id */
  addToken(userName: string, hash: Buffer, expiresAt: number | null): Promise<number>
  revokeToken(userName: string, id: number): Promise<void>
  setRepo(name: string, kind: 'git' | 'hg', isPublic: boolean): Promise<void>
  setGrant(userName: string, repo: string, level: Level): Promise<void>
  removeGrant(userName: string, repo: string): Promise<void>
  setProtection(repo: string, pattern: string, users: string[]): Promise<void>
  removeProtection(repo: string, pattern: string): Promise<void>
  /** a repo's protected patterns (as the request path reads them) */
  protections(repo: string): Promise<Protection[]>
  listUsers(): Promise<UserSummary[]>
  /** the user's tokens, revoked and expired ones too; StoreNotFoundError for an unknown user */
  listTokens(userName: string): Promise<TokenSummary[]>
  listGrants(filter: { user?: string; repo?: string }): Promise<GrantRecord[]>
  /** repos the store has a record of (visibility) */
  listRepos(): Promise<RepoRecord[]>
  /**
   * Clears a login lockout (`user unlock`): failures of `subject` (`user:NAME`, or `address:ADDR`)
   * before now no longer count, on every worker that asks `loginsUnlockedAt`.
   */
  unlockLogins(subject: string): Promise<void>
  /** everything, ids and hashes included (store copy) */
  dump(): Promise<StoreDump>
  /** writes a dump into this store, which must be empty (StoreConflictError otherwise); all or nothing */
  restore(dump: StoreDump): Promise<void>
}

/**
 * Git LFS file locks. Never cached: every worker of a pool sees a lock as soon as it is taken.
 */
export interface LockStore {
  /** Locks `path` of `repo` for the user, unless it is locked already or the repo holds `maxPerRepo` locks. */
  createLock(repo: string, path: string, userId: number, maxPerRepo: number): Promise<LockOutcome>
  /** a repo's locks by id, ascending */
  listLocks(repo: string, filter: LockFilter): Promise<LockRecord[]>
  /** whether the repo holds a lock of anyone but `exceptUserId` (one indexed probe) */
  hasLocksOfOthers(repo: string, exceptUserId: number): Promise<boolean>
  /** the locks of anyone but `exceptUserId` on any of `paths` (at most LOCKED_AMONG_BATCH paths: one indexed query), by id */
  locksOn(repo: string, paths: string[], exceptUserId: number): Promise<LockRecord[]>
  /** removes a lock; false when there was none with that id on that repo */
  removeLock(repo: string, id: number): Promise<boolean>
}

/** One store (SQLite or PostgreSQL) is all three; each consumer names the part it uses. */
export interface AuthStore extends RequestStore, AdminStore, LockStore {
  close(): void | Promise<void>
}

/** A whole store, as `store copy` moves it: rows as they are, secrets only as their hashes. */
export interface StoreDump {
  users: { id: number; name: string; password: string; createdAt: number }[]
  tokens: { id: number; userId: number; hash: Buffer; expiresAt: number | null; revokedAt: number | null; createdAt: number; lastUsedAt: number | null }[]
  repos: RepoRecord[]
  grants: { userId: number; repo: string; level: Level }[]
  protections: { repo: string; pattern: string; users: string }[]
  locks: { id: number; repo: string; path: string; userId: number; lockedAt: number }[]
}

/**
 * The store cannot be reached (PostgreSQL down, a network cut): 503 with Retry-After, never a
 * 401 or 404, so git credential helpers keep their passwords and repos do not seem to vanish.
 * The client reads a fixed line; the cause is logged.
 */
export class StoreUnavailableError extends ServiceUnavailableError {
  constructor(readonly detail: string) {
    super('the account store is unreachable; try again in a few seconds', 5)
  }
}

/** A store write that names something that isn't there (unknown user, token, grant). */
export class StoreNotFoundError extends Error {
  readonly code = 'VCS_STORE_NOT_FOUND'
}
/** A store write that would duplicate something (user exists). */
export class StoreConflictError extends Error {
  readonly code = 'VCS_STORE_CONFLICT'
}

/** The store's schema is newer than this worker knows: it refuses to start rather than guess. */
export class SchemaTooNewError extends Error {
  constructor(found: number, known: number) {
    super(`auth store schema version ${found} is newer than this worker (${known}); upgrade the worker`)
  }
}
