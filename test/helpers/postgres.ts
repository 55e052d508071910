/**
 * A real PostgreSQL server for tests (tools/pool/postgres.ts: initdb in a temp dir, socket
 * only, scram passwords, as the postgres user when root, stopped by its PID). One server per
 * test file; each test takes a database of its own (`database()`).
 */
import type * as Tap from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { startLocalPostgres, type LocalPostgres } from '../../tools/pool/postgres.js'

export const PG_USER = 'vcs'
export const PG_PASSWORD = 'pg-test-password'

export interface PgServer extends LocalPostgres {
  /** a fresh empty database, dropped with the server */
  database(): Promise<string>
  /** runs SQL as the superuser on `db` */
  sql(db: string, text: string, values?: unknown[]): Promise<pg.QueryResult>
}

let counter = 0

export async function startPostgres(t: Tap.Test): Promise<PgServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vcsw-pg-'))
  const server = await startLocalPostgres(dir, PG_USER, PG_PASSWORD)
  t.teardown(async () => {
    await server.stop()
    await rm(dir, { recursive: true, force: true })
  })
  const sql = async (db: string, text: string, values?: unknown[]): Promise<pg.QueryResult> => {
    const client = new pg.Client({ connectionString: server.url(db) })
    await client.connect()
    try {
      return await client.query(text, values)
    } finally {
      await client.end()
    }
  }
  return {
    ...server,
    sql,
    async database() {
      const name = `t${process.pid}_${++counter}`
      await sql('postgres', `CREATE DATABASE ${name}`)
      return name
    },
  }
}
