/**
 * The embedded credential store: one SQLite file in the data dir (better-sqlite3), WAL mode so
 * the CLI can write while servers read, schema migrated at open by `user_version`.
 * Changes by other processes are seen through `PRAGMA data_version`, which changes whenever
 * another connection commits (sqlite.org/pragma.html#pragma_data_version).
 */
import { closeSync, existsSync, openSync } from 'node:fs'
import Database from 'better-sqlite3'
import { LOCKED_AMONG_BATCH, type AuthStore, type RepoRecords, type GrantRecord, type Level, type LockRecord, type Protection, type RepoRecord, type StoreDump, type TokenRecord, type UserRecord } from './store.js'
import { SchemaTooNewError, StoreConflictError, StoreNotFoundError } from './store.js'

/** How stale a cached credential may be after another process changed the store. */
export const CHANGE_CHECK_MS = 50

/** Each entry moves the schema one version up; never edit a released one, append. */
export const SQLITE_MIGRATIONS = [
  `CREATE TABLE users (
     id INTEGER PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     password TEXT NOT NULL,
     created_at INTEGER NOT NULL
   );
   CREATE TABLE tokens (
     id INTEGER PRIMARY KEY,
     user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
     hash BLOB NOT NULL UNIQUE,
     expires_at INTEGER,
     revoked_at INTEGER,
     created_at INTEGER NOT NULL
   );
   CREATE TABLE repos (
     name TEXT PRIMARY KEY,
     kind TEXT NOT NULL CHECK (kind IN ('git', 'hg')),
     public INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE grants (
     user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
     repo TEXT NOT NULL,
     level TEXT NOT NULL CHECK (level IN ('read', 'write', 'admin')),
     PRIMARY KEY (user_id, repo)
   );
   CREATE TABLE protections (
     repo TEXT NOT NULL,
     pattern TEXT NOT NULL,
     users TEXT NOT NULL DEFAULT '',
     PRIMARY KEY (repo, pattern)
   );`,
  // 2: when a token last authenticated a request (token list)
  'ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;',
  // 3: Git LFS file locks; AUTOINCREMENT so an unlocked id is never given to another lock
  `CREATE TABLE lfs_locks (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     repo TEXT NOT NULL,
     path TEXT NOT NULL,
     user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
     locked_at INTEGER NOT NULL,
     UNIQUE (repo, path)
   );`,
  // 4: login lockouts cleared by `user unlock` (failures before at_ms no longer count)
  'CREATE TABLE login_unlocks (subject TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);',
]

/** A token's last use is written at most this often (seconds): the request path stays read-mostly. */
const TOUCH_EVERY_S = 3600

/** Opens (creating and migrating as needed) the store at `file`. */
export function openSqliteStore(file: string): AuthStore {
  const db = openSqliteFile(file, SQLITE_MIGRATIONS)
  db.pragma('foreign_keys = ON')

  const q = {
    user: db.prepare<[string], { id: number; name: string; password: string }>('SELECT id, name, password FROM users WHERE name = ?'),
    token: db.prepare<[Buffer], { id: number; user_id: number; name: string; expires_at: number | null; revoked_at: number | null }>(
      'SELECT t.id, t.user_id, u.name, t.expires_at, t.revoked_at FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ?'),
    repo: db.prepare<[string], { name: string; kind: 'git' | 'hg'; public: number }>('SELECT name, kind, public FROM repos WHERE name = ?'),
    grant: db.prepare<[number, string], { level: Level }>('SELECT level FROM grants WHERE user_id = ? AND repo = ?'),
    protections: db.prepare<[string], { pattern: string; users: string }>('SELECT pattern, users FROM protections WHERE repo = ? ORDER BY pattern'),
    lockInsert: db.prepare<[string, string, number, number, string, number], LockRow>(
      `INSERT INTO lfs_locks (repo, path, user_id, locked_at) SELECT ?, ?, ?, ? WHERE (SELECT COUNT(*) FROM lfs_locks WHERE repo = ?) < ?
       ON CONFLICT (repo, path) DO NOTHING RETURNING id, repo, path, user_id, locked_at, (SELECT name FROM users WHERE id = user_id) AS owner`),
    locks: db.prepare<{ repo: string; path: string | null; id: number | null; after: number; limit: number }, LockRow>(
      `SELECT l.id, l.repo, l.path, l.user_id, l.locked_at, u.name AS owner FROM lfs_locks l JOIN users u ON u.id = l.user_id
       WHERE l.repo = @repo AND (@path IS NULL OR l.path = @path) AND (@id IS NULL OR l.id = @id) AND l.id > @after ORDER BY l.id LIMIT @limit`),
    othersLock: db.prepare<[string, number], number>('SELECT 1 FROM lfs_locks WHERE repo = ? AND user_id != ? LIMIT 1').pluck(),
    // each path looked up in the (repo, path) index
    locksOn: db.prepare<[string, string, number], LockRow>(
      `SELECT l.id, l.repo, l.path, l.user_id, l.locked_at, u.name AS owner FROM json_each(?) p
       JOIN lfs_locks l ON l.repo = ? AND l.path = p.value JOIN users u ON u.id = l.user_id WHERE l.user_id != ? ORDER BY l.id`),
  }
  const userId = (name: string): number => {
    const row = q.user.get(name)
    if (!row) throw new StoreNotFoundError(`no such user: ${name}`)
    return row.id
  }
  const now = (): number => Math.floor(Date.now() / 1000)
  // Prepared once: db.pragma() would compile the statement on every request. Even so it costs
  // ~15 us (it reads the WAL index), so it is asked at most every CHANGE_CHECK_MS: a change by
  // the CLI is seen by the next request after that.
  const dataVersionStmt = db.prepare('PRAGMA data_version').pluck()
  let dataVersion = dataVersionStmt.get() as number
  let checkedAt = 0
  // writes through this connection do not move data_version for it: they flag themselves
  let wroteHere = false

  return {
    async findUser(name): Promise<UserRecord | undefined> {
      const row = q.user.get(name)
      return row && { id: row.id, name: row.name, passwordHash: row.password }
    },
    async findToken(hash): Promise<TokenRecord | undefined> {
      const row = q.token.get(hash)
      return row && { id: row.id, userId: row.user_id, userName: row.name, expiresAt: row.expires_at, revokedAt: row.revoked_at }
    },
    async authorizeRepo(name): Promise<RepoRecord | undefined> {
      const row = q.repo.get(name)
      return row && { name: row.name, kind: row.kind, public: row.public === 1 }
    },
    async findGrant(id, repo) {
      return q.grant.get(id, repo)?.level
    },
    async protections(repo): Promise<Protection[]> {
      return q.protections.all(repo).map((r) => ({ pattern: r.pattern, users: r.users ? r.users.split(',') : [] }))
    },
    changedSinceLastCheck() {
      if (wroteHere) {
        wroteHere = false
        return true
      }
      const now = performance.now()
      if (now - checkedAt < CHANGE_CHECK_MS) return false
      checkedAt = now
      const v = dataVersionStmt.get() as number
      if (v === dataVersion) return false
      dataVersion = v
      return true
    },
    async addUser(name, hash) {
      wroteHere = true
      try {
        db.prepare('INSERT INTO users (name, password, created_at) VALUES (?, ?, ?)').run(name, hash, now())
      } catch (err) {
        if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new StoreConflictError(`user ${name} already exists`)
        throw err
      }
    },
    async setPassword(name, hash) {
      wroteHere = true
      if (db.prepare('UPDATE users SET password = ? WHERE name = ?').run(hash, name).changes === 0) throw new StoreNotFoundError(`no such user: ${name}`)
    },
    async removeUser(name) {
      wroteHere = true
      if (db.prepare('DELETE FROM users WHERE name = ?').run(name).changes === 0) throw new StoreNotFoundError(`no such user: ${name}`)
    },
    async renameUser(from, to) {
      wroteHere = true
      try {
        if (db.prepare('UPDATE users SET name = ? WHERE name = ?').run(to, from).changes === 0) throw new StoreNotFoundError(`no such user: ${from}`)
      } catch (err) {
        if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new StoreConflictError(`user ${to} already exists`)
        throw err
      }
    },
    async moveRepo(from, to) {
      wroteHere = true
      return db.transaction((): RepoRecords => {
        const tables = ['repos', 'grants', 'protections', 'lfs_locks'] as const
        const col = (t: string) => (t === 'repos' ? 'name' : 'repo')
        if (to !== null) {
          const held = tables.reduce((n, t) => n + (db.prepare(`SELECT COUNT(*) AS n FROM ${t} WHERE ${col(t)} = ?`).get(to) as { n: number }).n, 0)
          if (held > 0) throw new StoreConflictError(`the store already holds records for ${to}`)
        }
        const counts = tables.map((t) => (to === null
          ? db.prepare(`DELETE FROM ${t} WHERE ${col(t)} = ?`).run(from)
          : db.prepare(`UPDATE ${t} SET ${col(t)} = ? WHERE ${col(t)} = ?`).run(to, from)).changes)
        return { grants: counts[1]!, protections: counts[2]!, locks: counts[3]! }
      })()
    },
    async addToken(name, hash, expiresAt) {
      wroteHere = true
      const info = db.prepare('INSERT INTO tokens (user_id, hash, expires_at, created_at) VALUES (?, ?, ?, ?)').run(userId(name), hash, expiresAt, now())
      return Number(info.lastInsertRowid)
    },
    async revokeToken(name, id) {
      wroteHere = true
      const info = db.prepare('UPDATE tokens SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL').run(now(), id, userId(name))
      if (info.changes === 0) throw new StoreNotFoundError(`no active token ${id} for user ${name}`)
    },
    async setRepo(name, kind, isPublic) {
      wroteHere = true
      db.prepare('INSERT INTO repos (name, kind, public) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, public = excluded.public')
        .run(name, kind, isPublic ? 1 : 0)
    },
    async setGrant(name, repo, level) {
      wroteHere = true
      db.prepare('INSERT INTO grants (user_id, repo, level) VALUES (?, ?, ?) ON CONFLICT (user_id, repo) DO UPDATE SET level = excluded.level')
        .run(userId(name), repo, level)
    },
    async removeGrant(name, repo) {
      wroteHere = true
      if (db.prepare('DELETE FROM grants WHERE user_id = ? AND repo = ?').run(userId(name), repo).changes === 0) {
        throw new StoreNotFoundError(`${name} has no grant on ${repo}`)
      }
    },
    async setProtection(repo, pattern, users) {
      wroteHere = true
      db.prepare('INSERT INTO protections (repo, pattern, users) VALUES (?, ?, ?) ON CONFLICT (repo, pattern) DO UPDATE SET users = excluded.users')
        .run(repo, pattern, users.join(','))
    },
    async removeProtection(repo, pattern) {
      wroteHere = true
      if (db.prepare('DELETE FROM protections WHERE repo = ? AND pattern = ?').run(repo, pattern).changes === 0) {
        throw new StoreNotFoundError(`${repo} has no protection ${pattern}`)
      }
    },
    async createLock(repo, path, user, maxPerRepo) {
      const t = Date.now()
      const row = q.lockInsert.get(repo, path, user, t, repo, maxPerRepo)
      if (row) return { created: lockRecord(row) }
      const [existing] = q.locks.all({ repo, path, id: null, after: 0, limit: 1 })
      return existing ? { existing: lockRecord(existing) } : { full: true }
    },
    async listLocks(repo, f) {
      return q.locks.all({ repo, path: f.path ?? null, id: f.id ?? null, after: f.afterId ?? 0, limit: f.limit }).map(lockRecord)
    },
    async unlockLogins(subject) {
      db.prepare('INSERT INTO login_unlocks (subject, at_ms) VALUES (?, ?) ON CONFLICT (subject) DO UPDATE SET at_ms = excluded.at_ms').run(subject, Date.now())
      wroteHere = true
    },
    async loginsUnlockedAt(subject) {
      return (db.prepare('SELECT at_ms FROM login_unlocks WHERE subject = ?').pluck().get(subject) as number | undefined) ?? undefined
    },
    async hasLocksOfOthers(repo, exceptUserId) {
      return q.othersLock.get(repo, exceptUserId) !== undefined
    },
    async locksOn(repo, paths, exceptUserId) {
      if (paths.length > LOCKED_AMONG_BATCH) throw new Error(`locksOn: at most ${LOCKED_AMONG_BATCH} paths at once`)
      return q.locksOn.all(JSON.stringify(paths), repo, exceptUserId).map(lockRecord)
    },
    async removeLock(repo, id) {
      return db.prepare('DELETE FROM lfs_locks WHERE repo = ? AND id = ?').run(repo, id).changes > 0
    },
    async touchToken(id) {
      const t = now()
      db.prepare('UPDATE tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)').run(t, id, t - TOUCH_EVERY_S)
    },
    async listUsers() {
      return db.prepare<[], { name: string; created_at: number; tokens: number; grants: number }>(
        `SELECT u.name, u.created_at,
           (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL) AS tokens,
           (SELECT COUNT(*) FROM grants g WHERE g.user_id = u.id) AS grants
         FROM users u ORDER BY u.name`).all().map((r) => ({ name: r.name, createdAt: r.created_at, tokens: r.tokens, grants: r.grants }))
    },
    async listTokens(name) {
      return db.prepare<[number], { id: number; created_at: number; expires_at: number | null; revoked_at: number | null; last_used_at: number | null }>(
        'SELECT id, created_at, expires_at, revoked_at, last_used_at FROM tokens WHERE user_id = ? ORDER BY id').all(userId(name))
        .map((r) => ({ id: r.id, createdAt: r.created_at, expiresAt: r.expires_at, revokedAt: r.revoked_at, lastUsedAt: r.last_used_at }))
    },
    async listGrants(filter) {
      return db.prepare<[{ user: string | null; repo: string | null }], GrantRecord>(
        `SELECT u.name AS user, g.repo, g.level FROM grants g JOIN users u ON u.id = g.user_id
         WHERE (@user IS NULL OR u.name = @user) AND (@repo IS NULL OR g.repo = @repo) ORDER BY g.repo, u.name`).all({ user: filter.user ?? null, repo: filter.repo ?? null })
    },
    async listRepos() {
      return db.prepare<[], { name: string; kind: 'git' | 'hg'; public: number }>('SELECT name, kind, public FROM repos ORDER BY name').all()
        .map((r) => ({ name: r.name, kind: r.kind, public: r.public === 1 }))
    },
    async ping() {
      return `SQLite schema version ${db.pragma('user_version', { simple: true }) as number}`
    },
    async dump(): Promise<StoreDump> {
      type Row = Record<string, unknown>
      const all = (sql: string): Row[] => db.prepare<[], Row>(sql).all()
      // one read transaction: one snapshot of every table, whatever a running worker writes meanwhile
      return db.transaction((): StoreDump => ({
        users: all('SELECT id, name, password, created_at AS createdAt FROM users ORDER BY id') as StoreDump['users'],
        tokens: all('SELECT id, user_id AS userId, hash, expires_at AS expiresAt, revoked_at AS revokedAt, created_at AS createdAt, last_used_at AS lastUsedAt FROM tokens ORDER BY id') as StoreDump['tokens'],
        repos: all('SELECT name, kind, public FROM repos ORDER BY name').map((r) => ({ ...r, public: r.public === 1 })) as StoreDump['repos'],
        grants: all('SELECT user_id AS userId, repo, level FROM grants ORDER BY user_id, repo') as StoreDump['grants'],
        protections: all('SELECT repo, pattern, users FROM protections ORDER BY repo, pattern') as StoreDump['protections'],
        locks: all('SELECT id, repo, path, user_id AS userId, locked_at AS lockedAt FROM lfs_locks ORDER BY id') as StoreDump['locks'],
      }))()
    },
    async restore(dump) {
      wroteHere = true
      db.transaction(() => {
        const n = db.prepare('SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM repos) + (SELECT COUNT(*) FROM grants) + (SELECT COUNT(*) FROM protections) + (SELECT COUNT(*) FROM lfs_locks)').pluck().get() as number
        if (n > 0) throw new StoreConflictError('the target store is not empty')
        const ins = (sql: string) => db.prepare(sql)
        const user = ins('INSERT INTO users (id, name, password, created_at) VALUES (@id, @name, @password, @createdAt)')
        const token = ins('INSERT INTO tokens (id, user_id, hash, expires_at, revoked_at, created_at, last_used_at) VALUES (@id, @userId, @hash, @expiresAt, @revokedAt, @createdAt, @lastUsedAt)')
        const repo = ins('INSERT INTO repos (name, kind, public) VALUES (@name, @kind, @public)')
        const grant = ins('INSERT INTO grants (user_id, repo, level) VALUES (@userId, @repo, @level)')
        const protection = ins('INSERT INTO protections (repo, pattern, users) VALUES (@repo, @pattern, @users)')
        const lock = ins('INSERT INTO lfs_locks (id, repo, path, user_id, locked_at) VALUES (@id, @repo, @path, @userId, @lockedAt)')
        for (const u of dump.users) user.run(u)
        for (const t of dump.tokens) token.run(t)
        for (const r of dump.repos) repo.run({ ...r, public: r.public ? 1 : 0 })
        for (const g of dump.grants) grant.run(g)
        for (const p of dump.protections) protection.run(p)
        for (const l of dump.locks) lock.run(l)
      }).immediate()
    },
    close() {
      db.close()
    },
  }
}

interface LockRow { id: number; repo: string; path: string; user_id: number; locked_at: number; owner: string }
const lockRecord = (r: LockRow): LockRecord => ({ id: r.id, repo: r.repo, path: r.path, ownerId: r.user_id, owner: r.owner, lockedAt: r.locked_at })

/**
 * A SQLite file of the data dir, created owner-only (SQLite gives the -wal and -shm files the
 * database's own mode: password hashes, push history), in WAL mode, migrated.
 */
export function openSqliteFile(file: string, migrations: readonly string[], synchronous?: 'FULL'): Database.Database {
  if (!existsSync(file)) closeSync(openSync(file, 'a', 0o600))
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  if (synchronous) db.pragma(`synchronous = ${synchronous}`)
  db.pragma('busy_timeout = 5000')
  migrateSqlite(db, migrations)
  return db
}

/** Brings a SQLite file's schema up to `migrations` by its user_version (the auth store's, the events journal's). */
export function migrateSqlite(db: Database.Database, migrations: readonly string[]): void {
  const current = db.pragma('user_version', { simple: true }) as number
  if (current > migrations.length) throw new SchemaTooNewError(current, migrations.length)
  for (let v = current; v < migrations.length; v++) {
    db.transaction(() => {
      // another process (a second worker starting on a new data dir) may have migrated first:
      // the version is read again under the write lock
      if ((db.pragma('user_version', { simple: true }) as number) > v) return
      db.exec(migrations[v]!)
      db.pragma(`user_version = ${v + 1}`)
    }).immediate()
  }
}
