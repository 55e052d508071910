/**
 * The auth store in PostgreSQL, for pools that span machines (node-postgres, `pg`: the driver
 * with the widest use, a pool, LISTEN/NOTIFY on a plain client and libpq's URL forms through
 * pg-connection-string; see docs/decisions/postgres-driver.md).
 *
 * - Schema and migrations: pg-schema.ts. Every change fires a NOTIFY from a trigger; each
 *   worker LISTENs on a client of its own and drops its caches on a notification and after
 *   every reconnect (what was sent while it was away is lost).
 * - Reads the request path makes are cached until such a notification. While the server cannot
 *   be reached, a cached answer is still given, anything else fails with StoreUnavailableError
 *   (503): an outage is never a wrong password or a missing repo.
 */
import pg from 'pg'
import { parseIntoClientConfig } from 'pg-connection-string'
import { readFileSync } from 'node:fs'
import { LRUCache } from 'lru-cache'
import { LOCKED_AMONG_BATCH, type AuthStore, type GrantRecord, type Level, type LockFilter, type LockRecord, type Protection, type RepoRecord, type StoreDump, type TokenRecord, type UserRecord } from './store.js'
import { StoreConflictError, StoreNotFoundError, StoreUnavailableError } from './store.js'
import { CHANNEL, migrate } from './pg-schema.js'
import { pgFailureCounter } from './pg-throttle.js'

const TOUCH_EVERY_S = 3600
export interface PgStoreOptions {
  url: string
  /** a file holding the password (first line), instead of the URL or PGPASSWORD */
  passwordFile?: string
  poolSize?: number
  /** how long a connection attempt or a query may take */
  timeoutMs?: number
  /** cache request-path reads until a change is announced (default true; the benchmark turns it off) */
  readCache?: boolean
  /** told of connection losses and recoveries (never the URL's password), and of each change heard (its table) */
  onEvent?: (event: 'listening' | 'lost' | 'changed', detail: string) => void
}

/** Is this error the server being unreachable or going away (rather than a bad query or row)? */
export function isUnavailable(err: unknown): boolean {
  const e = err as { code?: string; message?: string }
  if (typeof e?.code === 'string') {
    // SQLSTATE classes 08 (connection), 53 (resources), 57P (shutdown, crash recovery), 28 (auth: a rotated password)
    if (/^(08|53|57P|28)/.test(e.code)) return true
    if (/^E[A-Z]+$/.test(e.code)) return true // ECONNREFUSED, ENOENT (socket), ETIMEDOUT, ECONNRESET, EPIPE...
  }
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection terminated due to connection timeout|Query read timeout|not queryable/i.test(e?.message ?? '')
}

export function unavailable(err: unknown): StoreUnavailableError {
  return new StoreUnavailableError((err as Error).message.split('\n')[0]!)
}

interface LockRow { id: string | number; repo: string; path: string; user_id: number; locked_at: string | number; owner: string }
const lockRecord = (r: LockRow): LockRecord => ({ id: Number(r.id), repo: r.repo, path: r.path, ownerId: r.user_id, owner: r.owner, lockedAt: Number(r.locked_at) })

/** How a client of the store connects: the URL, the password file, the time bounds. */
export function pgClientConfig(opts: Pick<PgStoreOptions, 'url' | 'passwordFile' | 'timeoutMs'>): pg.ClientConfig {
  const timeoutMs = opts.timeoutMs ?? 5000
  const password = opts.passwordFile ? readFileSync(opts.passwordFile, 'utf8').split('\n')[0] : undefined
  // parsed here, not passed as connectionString: pg would let the URL's (absent) password
  // override the one from the file
  return {
    ...parseIntoClientConfig(opts.url),
    ...(password !== undefined ? { password } : {}),
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    application_name: 'vcs-worker',
  }
}

/** Connects, migrates (once across the pool) and starts listening. Throws if the server cannot be reached. */
export async function openPgStore(opts: PgStoreOptions): Promise<AuthStore> {
  const clientConfig = pgClientConfig(opts)
  const pool = new pg.Pool({ ...clientConfig, max: opts.poolSize ?? 10, idleTimeoutMillis: 30_000 })
  // an idle client losing its server is reported here; the next query reconnects
  pool.on('error', () => {})
  try {
    await migrate(pool)
  } catch (err) {
    await pool.end().catch(() => {})
    throw err
  }

  // ---- change notifications and the read cache ----
  const reads = new LRUCache<string, { value: unknown }>({ max: 20_000 })
  let listening = false
  /** true when a query last reached the server */
  let reachable = true
  let changed = false
  let closed = false
  let listener: pg.Client | undefined
  let retryMs = 100
  let retryTimer: NodeJS.Timeout | undefined
  const dropCaches = (): void => {
    reads.clear()
    changed = true
  }
  const listen = async (): Promise<void> => {
    retryTimer = undefined
    if (closed) return
    const client = new pg.Client({ ...clientConfig, query_timeout: undefined })
    listener = client
    let lost = false
    const onLost = (err?: Error): void => {
      if (lost) return
      lost = true
      listening = false
      client.end().catch(() => {})
      if (closed) return
      opts.onEvent?.('lost', err?.message ?? 'connection ended')
      retryTimer = setTimeout(() => { void listen() }, retryMs)
      retryTimer.unref()
      retryMs = Math.min(retryMs * 2, 1000)
    }
    client.on('error', onLost)
    client.on('end', () => onLost())
    client.on('notification', (msg) => {
      if (msg.channel !== CHANNEL) return
      dropCaches()
      opts.onEvent?.('changed', msg.payload ?? '')
    })
    try {
      await client.connect()
      await client.query(`LISTEN ${CHANNEL}`)
    } catch (err) {
      onLost(err as Error)
      return
    }
    if (lost) return
    // notifications sent while nobody listened are lost: trust nothing cached before now
    dropCaches()
    listening = true
    reachable = true
    retryMs = 100
    opts.onEvent?.('listening', 'listening for changes')
  }
  await listen()

  const query = async <R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> => {
    try {
      const res = await pool.query<R>(text, values)
      reachable = true
      return res.rows
    } catch (err) {
      if (isUnavailable(err)) {
        reachable = false
        throw unavailable(err)
      }
      if ((err as { code?: string }).code === '23505') throw new StoreConflictError((err as Error).message)
      throw err
    }
  }
  /**
   * A request-path read: cached while notifications arrive; asked afresh when they cannot; and
   * when the server cannot be reached, the last answer known is better than a 503.
   */
  const cached = async <V>(key: string, read: () => Promise<V>): Promise<V> => {
    const hit = opts.readCache === false ? undefined : reads.get(key)
    if (hit && listening) return hit.value as V
    try {
      const value = await read()
      reads.set(key, { value })
      return value
    } catch (err) {
      if (err instanceof StoreUnavailableError && hit) return hit.value as V
      throw err
    }
  }
  const now = (): number => Math.floor(Date.now() / 1000)
  const userId = async (name: string): Promise<number> => {
    const [row] = await query<{ id: number }>('SELECT id FROM users WHERE name = $1', [name])
    if (!row) throw new StoreNotFoundError(`no such user: ${name}`)
    return row.id
  }
  // PostgreSQL text cannot hold NUL (SQLite can, and finds nothing there): no row has one
  const hasNul = (text: string): boolean => text.includes('\0')
  const num = (v: string | number | null): number | null => (v === null ? null : Number(v))

  const listLocks = async (repo: string, f: LockFilter): Promise<LockRecord[]> => {
    if (hasNul(repo) || (f.path !== undefined && hasNul(f.path))) return []
    const rows = await query<LockRow>(
      `SELECT l.id, l.repo, l.path, l.user_id, l.locked_at, u.name AS owner FROM lfs_locks l JOIN users u ON u.id = l.user_id
       WHERE l.repo = $1 AND ($2::text IS NULL OR l.path = $2) AND ($3::bigint IS NULL OR l.id = $3) AND l.id > $4 ORDER BY l.id LIMIT $5`,
      [repo, f.path ?? null, f.id ?? null, f.afterId ?? 0, f.limit])
    return rows.map(lockRecord)
  }

  return {
    async findUser(name): Promise<UserRecord | undefined> {
      if (hasNul(name)) return undefined
      return cached(`u\0${name}`, async () => {
        const [row] = await query<{ id: number; name: string; password: string }>('SELECT id, name, password FROM users WHERE name = $1', [name])
        return row && { id: row.id, name: row.name, passwordHash: row.password }
      })
    },
    async findToken(hash): Promise<TokenRecord | undefined> {
      return cached(`t\0${hash.toString('hex')}`, async () => {
        const [row] = await query<{ id: number; user_id: number; name: string; expires_at: string | null; revoked_at: string | null }>(
          'SELECT t.id, t.user_id, u.name, t.expires_at, t.revoked_at FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1', [hash])
        return row && { id: row.id, userId: row.user_id, userName: row.name, expiresAt: num(row.expires_at), revokedAt: num(row.revoked_at) }
      })
    },
    async authorizeRepo(name): Promise<RepoRecord | undefined> {
      if (hasNul(name)) return undefined
      return cached(`r\0${name}`, async () => {
        const [row] = await query<{ name: string; kind: 'git' | 'hg'; public: boolean }>('SELECT name, kind, public FROM repos WHERE name = $1', [name])
        return row && { name: row.name, kind: row.kind, public: row.public }
      })
    },
    async findGrant(id, repo) {
      if (hasNul(repo)) return undefined
      return cached(`g\0${id}\0${repo}`, async () => {
        const [row] = await query<{ level: Level }>('SELECT level FROM grants WHERE user_id = $1 AND repo = $2', [id, repo])
        return row?.level
      })
    },
    async protections(repo): Promise<Protection[]> {
      if (hasNul(repo)) return []
      return cached(`p\0${repo}`, async () => {
        const rows = await query<{ pattern: string; users: string }>('SELECT pattern, users FROM protections WHERE repo = $1 ORDER BY pattern', [repo])
        return rows.map((r) => ({ pattern: r.pattern, users: r.users ? r.users.split(',') : [] }))
      })
    },
    changedSinceLastCheck() {
      if (changed) {
        changed = false
        return true
      }
      // not listening but the server answers: changes go unannounced, so nothing cached holds
      return !listening && reachable
    },
    failureCounter(name, limit, windowMs) {
      return pgFailureCounter(query, name, limit, windowMs)
    },
    async ping() {
      const [row] = await query<{ version: number }>('SELECT version FROM vcs_worker_schema')
      if (!listening) throw new Error('reachable, but not listening for changes (reconnecting)')
      return `PostgreSQL reachable, schema version ${row?.version}, listening for changes`
    },
    async addUser(name, hash) {
      try {
        await query('INSERT INTO users (name, password, created_at) VALUES ($1, $2, $3)', [name, hash, now()])
      } catch (err) {
        if (err instanceof StoreConflictError) throw new StoreConflictError(`user ${name} already exists`)
        throw err
      }
    },
    async setPassword(name, hash) {
      if (!(await query('UPDATE users SET password = $1 WHERE name = $2 RETURNING id', [hash, name])).length) throw new StoreNotFoundError(`no such user: ${name}`)
    },
    async removeUser(name) {
      if (!(await query('DELETE FROM users WHERE name = $1 RETURNING id', [name])).length) throw new StoreNotFoundError(`no such user: ${name}`)
    },
    async renameUser(from, to) {
      try {
        if (!(await query('UPDATE users SET name = $1 WHERE name = $2 RETURNING id', [to, from])).length) throw new StoreNotFoundError(`no such user: ${from}`)
      } catch (err) {
        if (err instanceof StoreConflictError) throw new StoreConflictError(`user ${to} already exists`)
        throw err
      }
    },
    async moveRepo(from, to) {
      if (hasNul(from) || (to !== null && hasNul(to))) return { grants: 0, protections: 0, locks: 0 }
      const client = await pool.connect().catch((err) => { throw unavailable(err) })
      try {
        await client.query('BEGIN')
        const tables = ['repos', 'grants', 'protections', 'lfs_locks'] as const
        const col = (t: string) => (t === 'repos' ? 'name' : 'repo')
        if (to !== null) {
          for (const t of tables) {
            if ((await client.query(`SELECT 1 FROM ${t} WHERE ${col(t)} = $1 LIMIT 1`, [to])).rowCount) throw new StoreConflictError(`the store already holds records for ${to}`)
          }
        }
        const counts: number[] = []
        for (const t of tables) {
          const r = to === null
            ? await client.query(`DELETE FROM ${t} WHERE ${col(t)} = $1`, [from])
            : await client.query(`UPDATE ${t} SET ${col(t)} = $1 WHERE ${col(t)} = $2`, [to, from])
          counts.push(r.rowCount ?? 0)
        }
        await client.query('COMMIT')
        return { grants: counts[1]!, protections: counts[2]!, locks: counts[3]! }
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        if (isUnavailable(err)) throw unavailable(err)
        if ((err as { code?: string }).code === '23505') throw new StoreConflictError(`the store already holds records for ${to}`)
        throw err
      } finally {
        client.release()
      }
    },
    async addToken(name, hash, expiresAt) {
      const [row] = await query<{ id: number }>('INSERT INTO tokens (user_id, hash, expires_at, created_at) VALUES ($1, $2, $3, $4) RETURNING id', [await userId(name), hash, expiresAt, now()])
      return row!.id
    },
    async revokeToken(name, id) {
      const rows = await query('UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL RETURNING id', [now(), id, await userId(name)])
      if (!rows.length) throw new StoreNotFoundError(`no active token ${id} for user ${name}`)
    },
    async setRepo(name, kind, isPublic) {
      await query('INSERT INTO repos (name, kind, public) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, public = excluded.public', [name, kind, isPublic])
    },
    async setGrant(name, repo, level) {
      await query('INSERT INTO grants (user_id, repo, level) VALUES ($1, $2, $3) ON CONFLICT (user_id, repo) DO UPDATE SET level = excluded.level', [await userId(name), repo, level])
    },
    async removeGrant(name, repo) {
      if (!(await query('DELETE FROM grants WHERE user_id = $1 AND repo = $2 RETURNING repo', [await userId(name), repo])).length) {
        throw new StoreNotFoundError(`${name} has no grant on ${repo}`)
      }
    },
    async setProtection(repo, pattern, users) {
      await query('INSERT INTO protections (repo, pattern, users) VALUES ($1, $2, $3) ON CONFLICT (repo, pattern) DO UPDATE SET users = excluded.users', [repo, pattern, users.join(',')])
    },
    async removeProtection(repo, pattern) {
      if (!(await query('DELETE FROM protections WHERE repo = $1 AND pattern = $2 RETURNING repo', [repo, pattern])).length) {
        throw new StoreNotFoundError(`${repo} has no protection ${pattern}`)
      }
    },
    async createLock(repo, path, user, maxPerRepo) {
      if (hasNul(repo) || hasNul(path)) throw new StoreNotFoundError('a lock path cannot hold a NUL byte')
      // one statement: the count and the insert see the same snapshot; two workers racing for the
      // last places may pass the limit by one each, never more
      const [row] = await query<LockRow>(
        `WITH ins AS (INSERT INTO lfs_locks (repo, path, user_id, locked_at) SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM lfs_locks WHERE repo = $1) < $5
           ON CONFLICT (repo, path) DO NOTHING RETURNING *)
         SELECT ins.id, ins.repo, ins.path, ins.user_id, ins.locked_at, u.name AS owner FROM ins JOIN users u ON u.id = ins.user_id`,
        [repo, path, user, Date.now(), maxPerRepo])
      if (row) return { created: lockRecord(row) }
      const [existing] = await listLocks(repo, { path, limit: 1 })
      return existing ? { existing } : { full: true }
    },
    listLocks,
    async unlockLogins(subject) {
      if (hasNul(subject)) return
      await query(`INSERT INTO login_unlocks (subject, at_ms) VALUES ($1, ${'(extract(epoch from clock_timestamp()) * 1000)::bigint'}) ON CONFLICT (subject) DO UPDATE SET at_ms = excluded.at_ms`, [subject])
    },
    async loginsUnlockedAt(subject) {
      if (hasNul(subject)) return undefined
      const [row] = await query<{ at_ms: string }>('SELECT at_ms FROM login_unlocks WHERE subject = $1', [subject])
      return row ? Number(row.at_ms) : undefined
    },
    async hasLocksOfOthers(repo, exceptUserId) {
      if (hasNul(repo)) return false
      return (await query('SELECT 1 FROM lfs_locks WHERE repo = $1 AND user_id != $2 LIMIT 1', [repo, exceptUserId])).length > 0
    },
    async locksOn(repo, paths, exceptUserId) {
      if (paths.length > LOCKED_AMONG_BATCH) throw new Error(`locksOn: at most ${LOCKED_AMONG_BATCH} paths at once`)
      if (hasNul(repo)) return []
      const rows = await query<LockRow>(
        `SELECT l.id, l.repo, l.path, l.user_id, l.locked_at, u.name AS owner FROM lfs_locks l JOIN users u ON u.id = l.user_id
         WHERE l.repo = $1 AND l.path = ANY($2::text[]) AND l.user_id != $3 ORDER BY l.id`,
        [repo, paths.filter((p) => !hasNul(p)), exceptUserId])
      return rows.map(lockRecord)
    },
    async removeLock(repo, id) {
      if (hasNul(repo)) return false
      return (await query('DELETE FROM lfs_locks WHERE repo = $1 AND id = $2 RETURNING id', [repo, id])).length > 0
    },
    async touchToken(id) {
      const t = now()
      await query('UPDATE tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)', [t, id, t - TOUCH_EVERY_S])
    },
    async listUsers() {
      const rows = await query<{ name: string; created_at: string; tokens: string; grants: string }>(
        `SELECT u.name, u.created_at,
           (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL) AS tokens,
           (SELECT COUNT(*) FROM grants g WHERE g.user_id = u.id) AS grants
         FROM users u ORDER BY u.name COLLATE "C"`)
      return rows.map((r) => ({ name: r.name, createdAt: Number(r.created_at), tokens: Number(r.tokens), grants: Number(r.grants) }))
    },
    async listTokens(name) {
      const rows = await query<{ id: number; created_at: string; expires_at: string | null; revoked_at: string | null; last_used_at: string | null }>(
        'SELECT id, created_at, expires_at, revoked_at, last_used_at FROM tokens WHERE user_id = $1 ORDER BY id', [await userId(name)])
      return rows.map((r) => ({ id: r.id, createdAt: Number(r.created_at), expiresAt: num(r.expires_at), revokedAt: num(r.revoked_at), lastUsedAt: num(r.last_used_at) }))
    },
    async listGrants(filter) {
      return query<GrantRecord>(
        `SELECT u.name AS user, g.repo, g.level FROM grants g JOIN users u ON u.id = g.user_id
         WHERE ($1::text IS NULL OR u.name = $1) AND ($2::text IS NULL OR g.repo = $2) ORDER BY g.repo COLLATE "C", u.name COLLATE "C"`, [filter.user ?? null, filter.repo ?? null])
    },
    async listRepos() {
      return query<RepoRecord>('SELECT name, kind, public FROM repos ORDER BY name COLLATE "C"')
    },
    async dump(): Promise<StoreDump> {
      // one snapshot: a user added or removed while the copy reads cannot leave a grant without its user
      const client = await pool.connect().catch((err) => { throw unavailable(err) })
      const read = async <R extends pg.QueryResultRow>(text: string): Promise<R[]> => (await client.query<R>(text)).rows
      let rows
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        rows = [
          await read<{ id: number; name: string; password: string; created_at: string }>('SELECT id, name, password, created_at FROM users ORDER BY id'),
          await read<{ id: number; user_id: number; hash: Buffer; expires_at: string | null; revoked_at: string | null; created_at: string; last_used_at: string | null }>('SELECT * FROM tokens ORDER BY id'),
          await read<{ name: string; kind: 'git' | 'hg'; public: boolean }>('SELECT name, kind, public FROM repos ORDER BY name'),
          await read<{ user_id: number; repo: string; level: Level }>('SELECT user_id, repo, level FROM grants ORDER BY user_id, repo'),
          await read<{ repo: string; pattern: string; users: string }>('SELECT repo, pattern, users FROM protections ORDER BY repo, pattern'),
          await read<Omit<LockRow, 'owner'>>('SELECT id, repo, path, user_id, locked_at FROM lfs_locks ORDER BY id'),
        ] as const
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        throw isUnavailable(err) ? unavailable(err) : err
      } finally {
        client.release()
      }
      const [users, tokens, repos, grants, protections, locks] = rows
      return {
        users: users.map((u) => ({ id: u.id, name: u.name, password: u.password, createdAt: Number(u.created_at) })),
        tokens: tokens.map((t) => ({ id: t.id, userId: t.user_id, hash: t.hash, expiresAt: num(t.expires_at), revokedAt: num(t.revoked_at), createdAt: Number(t.created_at), lastUsedAt: num(t.last_used_at) })),
        repos, grants: grants.map((g) => ({ userId: g.user_id, repo: g.repo, level: g.level })), protections,
        locks: locks.map((l) => ({ id: Number(l.id), repo: l.repo, path: l.path, userId: l.user_id, lockedAt: Number(l.locked_at) })),
      }
    },
    async restore(dump) {
      const client = await pool.connect().catch((err) => { throw unavailable(err) })
      try {
        await client.query('BEGIN')
        // one restore at a time, and only into an empty store (checked inside the transaction)
        await client.query('LOCK TABLE users, tokens, repos, grants, protections, lfs_locks IN EXCLUSIVE MODE')
        const counts = await client.query<{ n: string }>('SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM repos) + (SELECT COUNT(*) FROM grants) + (SELECT COUNT(*) FROM protections) + (SELECT COUNT(*) FROM lfs_locks) AS n')
        if (Number(counts.rows[0]!.n) > 0) throw new StoreConflictError('the target store is not empty')
        for (const u of dump.users) await client.query('INSERT INTO users (id, name, password, created_at) VALUES ($1, $2, $3, $4)', [u.id, u.name, u.password, u.createdAt])
        for (const t of dump.tokens) {
          await client.query('INSERT INTO tokens (id, user_id, hash, expires_at, revoked_at, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)',
            [t.id, t.userId, t.hash, t.expiresAt, t.revokedAt, t.createdAt, t.lastUsedAt])
        }
        for (const r of dump.repos) await client.query('INSERT INTO repos (name, kind, public) VALUES ($1, $2, $3)', [r.name, r.kind, r.public])
        for (const g of dump.grants) await client.query('INSERT INTO grants (user_id, repo, level) VALUES ($1, $2, $3)', [g.userId, g.repo, g.level])
        for (const p of dump.protections) await client.query('INSERT INTO protections (repo, pattern, users) VALUES ($1, $2, $3)', [p.repo, p.pattern, p.users])
        for (const l of dump.locks) await client.query('INSERT INTO lfs_locks (id, repo, path, user_id, locked_at) VALUES ($1, $2, $3, $4, $5)', [l.id, l.repo, l.path, l.userId, l.lockedAt])
        // identities continue after the copied ids
        for (const table of ['users', 'tokens', 'lfs_locks']) {
          await client.query(`SELECT setval(pg_get_serial_sequence('${table}', 'id'), GREATEST((SELECT MAX(id) FROM ${table}), 0) + 1, false)`)
        }
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        if (isUnavailable(err)) throw unavailable(err)
        throw err
      } finally {
        client.release()
      }
    },
    async close() {
      closed = true
      if (retryTimer) clearTimeout(retryTimer)
      await Promise.all([listener?.end().catch(() => {}), pool.end().catch(() => {})])
    },
  }
}
