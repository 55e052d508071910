/**
 * The accounts of `npm run pool -- --auth-store postgres|URL`. `postgres` starts a local server
 * in DATA/pool/postgres (its password generated once into its `password` file, 0600; run as
 * root with a data dir the postgres user cannot reach, in a temp dir named after it instead)
 * with a database `vcs`; an empty store is filled from DATA/auth.sqlite when there is one (store
 * copy), so the accounts and public demo repos of `npm start` carry over.
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { openPgStore } from '../../src/auth/pg-store.js'
import { redactUrl } from '../../src/auth/pg-url.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { reachableByServer, startLocalPostgres } from './postgres.js'

export interface PoolStore {
  /** `serve` flags every worker gets */
  workerArgs: string[]
  /** lines for the pool's banner */
  describe: string[]
  stop(): Promise<void>
}

const USER = 'vcs'

export async function prepareLocalStore(authStore: string, data: string, runDir: string): Promise<PoolStore> {
  if (authStore !== 'postgres') {
    await seed(authStore, undefined, data)
    return {
      workerArgs: ['--auth-store', authStore],
      describe: [`  accounts: PostgreSQL at ${redactUrl(authStore)}; each worker on a data dir of its own (${runDir}/host-N)`],
      stop: async () => {},
    }
  }
  await mkdir(runDir, { recursive: true })
  // run as root, the server runs as the postgres user, who may not reach a private data dir:
  // its files then live in a temp dir of their own (kept across runs, named after the data dir)
  const dir = (await reachableByServer(runDir))
    ? path.join(runDir, 'postgres')
    : path.join(os.tmpdir(), `vcs-pool-pg-${createHash('sha256').update(runDir).digest('hex').slice(0, 12)}`)
  await mkdir(dir, { recursive: true })
  const passwordFile = path.join(dir, 'password')
  if (!existsSync(passwordFile)) await writeFile(passwordFile, `${randomBytes(18).toString('base64url')}\n`, { mode: 0o600 })
  const password = (await readFile(passwordFile, 'utf8')).trim()
  let socketDir = path.join(dir, 'sock')
  if (Buffer.byteLength(path.join(socketDir, '.s.PGSQL.5432')) > 107) socketDir = await mkdtemp(path.join(os.tmpdir(), 'vcs-pg-'))
  const server = await startLocalPostgres(dir, USER, password, socketDir)
  try {
    const admin = new pg.Client({ connectionString: server.url('postgres') })
    await admin.connect()
    if (!(await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', ['vcs'])).rowCount) await admin.query('CREATE DATABASE vcs')
    await admin.end()
    const url = server.url('vcs', { password: false })
    await seed(url, passwordFile, data)
    return {
      workerArgs: ['--auth-store', url, '--auth-store-password-file', passwordFile],
      describe: [
        `  accounts: a local PostgreSQL (pid ${server.pid()}, files in ${dir}, socket only), URL ${url}`,
        `            each worker on a data dir of its own (${runDir}/host-N), as on separate hosts`,
        `            admin: vcs-worker user add NAME --auth-store '${url}' --auth-store-password-file ${passwordFile}`,
        '  a real server: npm run pool -- --auth-store postgres://USER@HOST/DB (password in PGPASSWORD or ~/.pgpass)',
      ],
      stop: () => server.stop(),
    }
  } catch (err) {
    await server.stop()
    throw err
  }
}

/** An empty store gets what DATA/auth.sqlite holds (users, tokens, grants, public demo repos). */
async function seed(url: string, passwordFile: string | undefined, data: string): Promise<void> {
  const store = await openPgStore({ url, passwordFile, poolSize: 2 })
  try {
    const sqliteFile = path.join(data, 'auth.sqlite')
    const empty = (await store.listUsers()).length === 0 && (await store.listRepos()).length === 0
    if (empty && existsSync(sqliteFile)) {
      const sqlite = openSqliteStore(sqliteFile)
      try {
        await store.restore(await sqlite.dump())
      } finally {
        sqlite.close()
      }
    }
  } finally {
    await store.close()
  }
}
