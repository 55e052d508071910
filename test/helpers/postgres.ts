/**
 * A real PostgreSQL server for tests, from Debian's postgresql package: initdb into a temp dir,
 * a unix socket only (no TCP port at all), run as the unprivileged `postgres` user when the
 * tests run as root (initdb refuses root), stopped by its PID. Password authentication
 * (scram-sha-256) even on the socket, so a wrong password is refused as in production.
 * One server per test file; each test takes a database of its own (`database()`).
 */
import type * as Tap from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { chown, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { run } from './worker.js'

type T = Tap.Test

export const PG_USER = 'vcs'
export const PG_PASSWORD = 'pg-test-password'

export interface PgServer {
  /** the directory holding the server's unix socket */
  socketDir: string
  /** a URL for `db` (libpq form, socket directory in `host=`) with the password unless `password` is false */
  url(db: string, opts?: { password?: boolean | string; user?: string }): string
  /** a fresh empty database, dropped with the server */
  database(): Promise<string>
  /** runs SQL as the superuser on `db` */
  sql(db: string, text: string, values?: unknown[]): Promise<pg.QueryResult>
  pid(): number | undefined
  /** SIGINT (fast shutdown) and wait; the data dir stays */
  stop(): Promise<void>
  /** starts it again on the same data dir and socket */
  start(): Promise<void>
  /** SIGKILL of the postmaster (what a crash looks like); start() recovers */
  kill(): Promise<void>
}

export async function pgBinDir(): Promise<string> {
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root) ? (await readdir(root)).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : []
  if (!versions.length) throw new Error('PostgreSQL is not installed (npm test installs the postgresql package)')
  return path.join(root, versions[0]!, 'bin')
}

const asRoot = process.getuid?.() === 0

let counter = 0

export async function startPostgres(t: T): Promise<PgServer> {
  const bin = await pgBinDir()
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vcsw-pg-'))
  const dataDir = path.join(dir, 'data')
  const socketDir = path.join(dir, 'sock')
  await mkdir(socketDir)
  const pwfile = path.join(dir, 'pw')
  await writeFile(pwfile, `${PG_PASSWORD}\n`)
  // as root, the server runs as the unprivileged postgres user (its PID is the server's own)
  const ids: { uid?: number; gid?: number } = asRoot ? await userIds('postgres') : {}
  if (ids.uid !== undefined) for (const p of [dir, socketDir, pwfile]) await chown(p, ids.uid, ids.gid!)
  const init = await runAs(ids, path.join(bin, 'initdb'), ['-D', dataDir, '-U', PG_USER, '--pwfile', pwfile, '-A', 'scram-sha-256', '--no-sync', '-E', 'UTF8', '--locale', 'C'])
  if (init.code !== 0) throw new Error(`initdb failed: ${init.output}`)

  let proc: ChildProcess | undefined
  let output = ''
  const start = async (): Promise<void> => {
    const child = spawn(path.join(bin, 'postgres'), ['-D', dataDir, '-k', socketDir, '-c', 'listen_addresses=', '-c', 'fsync=off', '-c', 'max_connections=200'], { ...ids, stdio: ['ignore', 'pipe', 'pipe'] })
    proc = child
    child.stdout!.on('data', (d) => { output += d })
    child.stderr!.on('data', (d) => { output += d })
    const deadline = Date.now() + 30_000
    for (;;) {
      if (child.exitCode !== null) throw new Error(`postgres exited: ${output}`)
      const ready = await run(path.join(bin, 'pg_isready'), ['-h', socketDir, '-U', PG_USER, '-q'])
      if (ready.code === 0) return
      if (Date.now() > deadline) throw new Error(`postgres not ready in 30 s: ${output}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  const stopWith = async (signal: NodeJS.Signals): Promise<void> => {
    const child = proc
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((r) => child.once('exit', r))
    child.kill(signal)
    await exited
  }
  await start()
  t.teardown(async () => {
    await stopWith('SIGINT')
    await rm(dir, { recursive: true, force: true })
  })

  const url = (db: string, opts: { password?: boolean | string; user?: string } = {}): string => {
    const password = opts.password === false ? '' : `:${encodeURIComponent(typeof opts.password === 'string' ? opts.password : PG_PASSWORD)}`
    return `postgres://${encodeURIComponent(opts.user ?? PG_USER)}${password}@localhost/${db}?host=${encodeURIComponent(socketDir)}`
  }
  const sql = async (db: string, text: string, values?: unknown[]): Promise<pg.QueryResult> => {
    const client = new pg.Client({ connectionString: url(db) })
    await client.connect()
    try {
      return await client.query(text, values)
    } finally {
      await client.end()
    }
  }
  return {
    socketDir,
    url,
    async database() {
      const name = `t${process.pid}_${++counter}`
      await sql('postgres', `CREATE DATABASE ${name}`)
      return name
    },
    sql,
    pid: () => proc?.pid,
    stop: () => stopWith('SIGINT'),
    start,
    kill: () => stopWith('SIGKILL'),
  }
}

async function runAs(ids: { uid?: number; gid?: number }, cmd: string, args: string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(cmd, args, { ...ids, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d) => { output += d })
  child.stderr.on('data', (d) => { output += d })
  const code = await new Promise<number | null>((resolve, reject) => { child.on('error', reject); child.on('close', resolve) })
  return { code, output }
}

async function userIds(name: string): Promise<{ uid: number; gid: number }> {
  const r = await run('id', ['-u', name])
  const g = await run('id', ['-g', name])
  if (r.code !== 0) throw new Error(`no ${name} user: ${r.stderr}`)
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) }
}
