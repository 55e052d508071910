import t from 'tap'
import type * as Tap from 'tap'
import pg from 'pg'
import { openPgStore } from '../../src/auth/pg-store.js'
import { redactUrl } from '../../src/auth/pg-url.js'
import { CHANNEL, PG_MIGRATIONS } from '../../src/auth/pg-schema.js'
import Database from 'better-sqlite3'
import { openSqliteStore, SQLITE_MIGRATIONS } from '../../src/auth/sqlite-store.js'
import type { AuthStore } from '../../src/auth/store.js'
import { StoreConflictError, StoreNotFoundError, StoreUnavailableError } from '../../src/auth/store.js'
import { startPostgres, PG_PASSWORD } from '../helpers/postgres.js'
import { waitFor } from '../helpers/worker.js'
import path from 'node:path'

const server = await startPostgres(t)

async function store(t: Tap.Test, url?: string): Promise<AuthStore> {
  const s = await openPgStore({ url: url ?? server.url(await server.database()) })
  t.teardown(() => s.close())
  return s
}

t.test('four workers starting at once on an empty database: one migration, four stores', async (t) => {
  const db = await server.database()
  const stores = await Promise.all(Array.from({ length: 4 }, () => openPgStore({ url: server.url(db) })))
  t.teardown(() => Promise.all(stores.map((s) => s.close())))
  const rows = (await server.sql(db, 'SELECT version FROM vcs_worker_schema')).rows
  t.same(rows, [{ version: PG_MIGRATIONS.length }], 'one schema row at the latest version')
  await stores[0]!.addUser('ana', 'hash-a')
  t.same((await stores[3]!.findUser('ana'))?.name, 'ana', 'all four use the same tables')
  t.match(await stores[1]!.ping(), `PostgreSQL reachable, schema version ${PG_MIGRATIONS.length}, listening`)
})

t.test('a database whose schema is newer than the worker: refused, naming both versions', async (t) => {
  const db = await server.database()
  await (await openPgStore({ url: server.url(db) })).close()
  await server.sql(db, 'UPDATE vcs_worker_schema SET version = 99')
  await t.rejects(openPgStore({ url: server.url(db) }), { message: `auth store schema version 99 is newer than this worker (${PG_MIGRATIONS.length}); upgrade the worker` })
})

t.test('PostgreSQL killed in the middle of a migration: the next start completes it', async (t) => {
  const db = await server.database()
  // a migration under way: its transaction holds the lock and half the tables when the server dies
  const client = new pg.Client({ connectionString: server.url(db) })
  await client.connect()
  client.on('error', () => {})
  await client.query('BEGIN')
  await client.query('CREATE TABLE vcs_worker_schema (version integer NOT NULL)')
  await client.query('INSERT INTO vcs_worker_schema VALUES (0)')
  await client.query(PG_MIGRATIONS[0]!.split(';')[0]!)
  await server.kill()
  await server.start()
  await client.end().catch(() => {})
  const s = await store(t, server.url(db))
  t.same((await server.sql(db, 'SELECT version FROM vcs_worker_schema')).rows, [{ version: PG_MIGRATIONS.length }])
  await s.addUser('bo', 'hash')
  t.equal((await s.findUser('bo'))?.passwordHash, 'hash', 'the schema is whole')
})

t.test('the same answers as SQLite, names with quotes, backslashes, %, unicode and 10 KB included', async (t) => {
  const names = ['o\'brien', 'back\\slash', '100%', 'ünï', 'x'.repeat(10_000), 'semi;colon -- DROP TABLE users']
  const sqlite = openSqliteStore(path.join(t.testdir(), 'auth.sqlite'))
  t.teardown(() => sqlite.close())
  const pgStore = await store(t)
  for (const s of [sqlite, pgStore]) {
    for (const n of names) {
      await s.addUser(n, `hash-${n}`)
      await s.setRepo(`${n}/repo`, 'git', false)
      await s.setGrant(n, `${n}/repo`, 'write')
    }
    await s.setProtection('o\'brien/repo', 'refs/heads/%', ['o\'brien', 'ünï'])
    await s.addToken('ünï', Buffer.alloc(32, 7), null)
  }
  for (const [what, read] of [
    ['users', (s: AuthStore) => s.listUsers().then((u) => u.map(({ createdAt: _, ...r }) => r))],
    ['grants', (s: AuthStore) => s.listGrants({})],
    ['repos', (s: AuthStore) => s.listRepos()],
    ['protections', (s: AuthStore) => s.protections('o\'brien/repo')],
    ['a user', (s: AuthStore) => s.findUser('back\\slash').then((u) => u?.passwordHash)],
    ['a grant', async (s: AuthStore) => s.findGrant((await s.findUser('100%'))!.id, '100%/repo')],
    ['a token', (s: AuthStore) => s.findToken(Buffer.alloc(32, 7)).then((tk) => tk?.userName)],
  ] as const) {
    t.same(await read(pgStore), await read(sqlite), `${what}: the same on both`)
  }
  t.equal(await pgStore.findUser('x'.repeat(9_999)), undefined, 'a near miss is a miss')
  t.equal(await pgStore.findUser('NUL\0name'), undefined, 'NUL in a name is just a name no one has (PostgreSQL text cannot hold one)')
  t.equal(await pgStore.authorizeRepo('a\0b'), undefined)
  t.type(await (pgStore.addUser('o\'brien', 'h')).catch((e: unknown) => e), StoreConflictError)
  t.type(await (pgStore.removeGrant('ünï', 'nothing')).catch((e: unknown) => e), StoreNotFoundError)
  t.type(await (pgStore.revokeToken('nobody', 1)).catch((e: unknown) => e), StoreNotFoundError)
})

t.test('Git LFS locks: the same on both stores; one per path, paged by id, a limit per repo, gone with their owner, never an id twice', async (t) => {
  const sqlite = openSqliteStore(path.join(t.testdir(), 'auth.sqlite'))
  t.teardown(() => sqlite.close())
  const pgStore = await store(t)
  const seen: unknown[] = []
  const ODD = "ünï co\\de's 100%.bin"
  for (const s of [sqlite, pgStore]) {
    await s.addUser('ana', 'h')
    await s.addUser('bo', 'h')
    const ana = (await s.findUser('ana'))!.id
    const bo = (await s.findUser('bo'))!.id
    const made = await s.createLock('r.git', 'art/logo.psd', ana, 3)
    t.match(made, { created: { path: 'art/logo.psd', owner: 'ana', ownerId: ana, repo: 'r.git' } })
    t.match(await s.createLock('r.git', 'art/logo.psd', bo, 3), { existing: { owner: 'ana' } }, 'a locked path: the lock that is there')
    t.match(await s.createLock('other.git', 'art/logo.psd', bo, 3), { created: { owner: 'bo' } }, 'locks are per repo')
    await s.createLock('r.git', ODD, bo, 3)
    await s.createLock('r.git', 'c', bo, 3)
    t.same(await s.createLock('r.git', 'd', bo, 3), { full: true }, 'a repo at its limit takes no more')
    const all = await s.listLocks('r.git', { limit: 10 })
    t.same(all.map((l) => l.path), ['art/logo.psd', ODD, 'c'], 'by id')
    t.same((await s.listLocks('r.git', { afterId: all[0]!.id, limit: 1 })).map((l) => l.path), [ODD], 'a page after a cursor')
    t.same((await s.listLocks('r.git', { path: 'c', limit: 10 })).map((l) => l.owner), ['bo'])
    t.same((await s.listLocks('r.git', { id: all[1]!.id, limit: 10 })).map((l) => l.path), [ODD])
    t.same(await s.listLocks('r.git', { path: 'a\0b', limit: 10 }), [])
    t.equal(await s.hasLocksOfOthers('r.git', ana), true, 'bo holds locks ana does not')
    t.equal(await s.hasLocksOfOthers('other.git', bo), false, 'the only lock of other.git is bo\'s own')
    t.same((await s.locksOn('r.git', [ODD, 'c', 'art/logo.psd', 'nothing', 'a\0b'], ana)).map((l) => l.path), [ODD, 'c'], 'the paths locked by others, by id')
    t.same(await s.locksOn('r.git', [], ana), [])
    t.equal(await s.removeLock('other.git', all[2]!.id), false, 'an id of another repo removes nothing')
    t.equal(await s.removeLock('r.git', all[2]!.id), true)
    t.equal(await s.removeLock('r.git', all[2]!.id), false, 'once')
    const again = await s.createLock('r.git', 'c', bo, 3)
    t.ok('created' in again && again.created.id > all[2]!.id, 'a new lock never gets a removed one\'s id')
    await s.removeUser('bo')
    t.same((await s.listLocks('r.git', { limit: 10 })).map((l) => l.owner), ['ana'], 'a removed user\'s locks go with them')
    const dump = await s.dump()
    seen.push(dump.locks.map(({ repo, path, userId }) => ({ repo, path, userId }))) // ids differ: PostgreSQL spends one on a conflicting insert
  }
  t.same(seen[1], seen[0], 'both dump the same locks')
})

t.test('a store of the version before locks gains them at open, its accounts kept (SQLite and PostgreSQL)', async (t) => {
  const file = path.join(t.testdir(), 'old.sqlite')
  const old = new Database(file)
  for (const [i, sql] of SQLITE_MIGRATIONS.slice(0, 2).entries()) {
    old.exec(sql)
    old.pragma(`user_version = ${i + 1}`)
  }
  old.prepare('INSERT INTO users (name, password, created_at) VALUES (?, ?, ?)').run('ana', 'h', 1)
  old.close()
  const db = await server.database()
  await server.sql(db, 'CREATE TABLE vcs_worker_schema (version integer NOT NULL)')
  await server.sql(db, 'INSERT INTO vcs_worker_schema VALUES (1)')
  const client = new pg.Client({ connectionString: server.url(db) })
  await client.connect()
  await client.query(PG_MIGRATIONS[0]!)
  await client.query('INSERT INTO users (name, password, created_at) VALUES ($1, $2, $3)', ['ana', 'h', 1])
  await client.end()
  const sqlite = openSqliteStore(file)
  t.teardown(() => sqlite.close())
  for (const s of [sqlite, await store(t, server.url(db))]) {
    t.match(await s.ping(), new RegExp(`schema version ${SQLITE_MIGRATIONS.length}|schema version ${PG_MIGRATIONS.length}`))
    const ana = (await s.findUser('ana'))!
    t.equal(ana.passwordHash, 'h', 'the account is kept')
    t.match(await s.createLock('r.git', 'f', ana.id, 10), { created: { owner: 'ana' } }, 'and locks can be taken')
  }
})

t.test('a wrong password, a missing database, a malformed URL: one line each, the password never in it', async (t) => {
  const wrong = server.url('postgres', { password: 'not-the-password' })
  const err = await openPgStore({ url: wrong }).catch((e: Error) => e)
  t.match(err, { message: /password authentication failed for user "vcs"/ })
  t.notMatch(String((err as Error).message), /not-the-password/)
  t.match(await openPgStore({ url: server.url('no_such_db') }).catch((e: Error) => e.message), /database "no_such_db" does not exist/)
  t.equal(redactUrl(server.url('x')).includes(PG_PASSWORD), false, 'redacted for messages')
  t.match(redactUrl(server.url('x')), /^postgres:\/\/vcs:\*\*\*@localhost\/x\?host=/)
})

t.test('a change through one store is seen by another within a second (NOTIFY), whoever made it', async (t) => {
  const db = await server.database()
  const a = await store(t, server.url(db))
  const b = await store(t, server.url(db))
  await a.addUser('cy', 'h')
  await a.setRepo('r', 'git', false)
  t.equal(await b.authorizeRepo('r').then((r) => r?.public), false, 'b reads it (and caches it)')
  b.changedSinceLastCheck()
  await a.setRepo('r', 'git', true)
  const t0 = Date.now()
  let told = false
  while (!(told = b.changedSinceLastCheck()) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10))
  t.ok(told, 'b told of the change')
  t.comment(`b told ${Date.now() - t0} ms after the change (the pool's target, 1 s, is measured by bench:auth)`)
  t.equal(await b.authorizeRepo('r').then((r) => r?.public), true, 'and its cache dropped')
  // a DBA's own SQL fires the same trigger
  await server.sql(db, 'UPDATE repos SET public = false WHERE name = $1', ['r'])
  const t1 = Date.now()
  while (!b.changedSinceLastCheck() && Date.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 10))
  t.equal(await b.authorizeRepo('r').then((r) => r?.public), false, 'psql changes are seen too')
  // a token's last use is not a change anyone needs to hear about: what the channel carries
  // between the touch and a marker change made after it (notifications arrive in commit order)
  const listener = new pg.Client({ connectionString: server.url(db) })
  await listener.connect()
  t.teardown(() => listener.end())
  const heard: string[] = []
  listener.on('notification', (n) => heard.push(n.payload ?? ''))
  await listener.query(`LISTEN ${CHANNEL}`)
  const id = await a.addToken('cy', Buffer.alloc(32, 1), null)
  await waitFor(() => heard.includes('tokens'), 5000, 'the new token announced')
  heard.length = 0
  await a.touchToken(id)
  await a.setRepo('marker', 'git', false)
  await waitFor(() => heard.includes('repos'), 5000, 'the marker change announced')
  t.same(heard, ['repos'], 'touchToken notified nobody: only the marker was heard')
})

t.test('server down: cached answers still given, the rest StoreUnavailableError; back up: served afresh', async (t) => {
  const db = await server.database()
  const heard: string[] = []
  const s = await openPgStore({ url: server.url(db), onEvent: (event, detail) => { if (event === 'changed') heard.push(detail) } })
  t.teardown(() => s.close())
  await s.addUser('dee', 'h')
  await s.setRepo('known', 'git', true)
  // our own writes are announced too (NOTIFY), and their arrival drops the cache: read only
  // after they came (in commit order: the last write's last), or the read cached here can be
  // dropped just before the outage
  await waitFor(() => heard.at(-1) === 'repos' && heard.includes('users'), 5000, 'both writes announced')
  s.changedSinceLastCheck()
  t.equal((await s.authorizeRepo('known'))?.public, true)
  t.equal(s.changedSinceLastCheck(), false, 'no change announced since that read: it stays cached')
  await server.stop()
  t.equal((await s.authorizeRepo('known'))?.public, true, 'a cached read answers during the outage')
  t.type(await (s.authorizeRepo('never-read')).catch((e: unknown) => e), StoreUnavailableError, 'an uncached one is unavailable, not missing')
  t.type(await (s.findUser('dee-not-cached')).catch((e: unknown) => e), StoreUnavailableError)
  t.type(await (s.ping()).catch((e: unknown) => e), StoreUnavailableError, 'the health check fails')
  await server.start()
  const t0 = Date.now()
  let pong = ''
  while (!pong && Date.now() - t0 < 10_000) pong = await s.ping().catch(() => '')
  t.ok(pong, 'the store answers again after the restart')
  t.comment(`answering again ${Date.now() - t0} ms after the restart`)
  t.equal(s.changedSinceLastCheck(), true, 'after the reconnect, caches are dropped (notifications were lost)')
  t.equal(await s.authorizeRepo('never-read'), undefined, 'served afresh')
})

t.test('login unlocks: the same on both stores; failures before an unlock stop counting, pool-wide on PostgreSQL', async (t) => {
  const sqlite = openSqliteStore(path.join(t.testdir(), 'auth.sqlite'))
  t.teardown(() => sqlite.close())
  const pgStore = await store(t)
  for (const s of [sqlite, pgStore]) {
    t.equal(await s.loginsUnlockedAt('user:bob'), undefined, 'never unlocked')
    await s.unlockLogins('user:bob')
    const first = await s.loginsUnlockedAt('user:bob')
    t.ok(first !== undefined && Math.abs(first - Date.now()) < 60_000, 'unlocked now')
    await s.unlockLogins('user:bob')
    t.ok((await s.loginsUnlockedAt('user:bob'))! >= first!, 'a second unlock moves it on')
    t.equal(await s.loginsUnlockedAt('address:192.0.2.1'), undefined, 'subjects apart')
    t.equal(await s.loginsUnlockedAt('user:a\0b'), undefined)
  }
  const counter = pgStore.failureCounter!('user-any', 2, 60_000)
  await counter.fail('password:bob', '')
  await counter.fail('password:bob', '')
  t.ok((await counter.retryAfter('password:bob', '')) > 0, 'two failures: locked')
  await pgStore.unlockLogins('user:bob')
  t.equal(await counter.retryAfter('password:bob', '', (await pgStore.loginsUnlockedAt('user:bob'))!), 0, 'not counted once unlocked (the database\'s clock on both sides)')
})
