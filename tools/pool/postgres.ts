/**
 * A local PostgreSQL from Debian's postgresql package, for `npm run pool -- --auth-store
 * postgres` and the tests: initdb into a directory, a unix socket only (no TCP port), password
 * authentication (scram-sha-256) even on the socket, run as the unprivileged `postgres` user
 * when we are root (initdb refuses root), stopped by its PID. Not for production: there, point
 * `authStore` at your own server.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chown, mkdir, readdir, writeFile } from 'node:fs/promises'
import path from 'node:path'

export interface LocalPostgres {
  /** the directory holding the server's unix socket */
  socketDir: string
  /** a libpq URL for `db` (socket directory in `host=`), with the password unless told otherwise */
  url(db: string, opts?: { password?: boolean | string; user?: string }): string
  pid(): number | undefined
  /** SIGINT (fast shutdown) and wait; the data dir stays */
  stop(): Promise<void>
  /** starts it again on the same data dir and socket */
  start(): Promise<void>
  /** SIGKILL of the postmaster (what a crash looks like); start() recovers */
  kill(): Promise<void>
  /** the server's own output so far */
  output(): string
}

export async function pgBinDir(): Promise<string> {
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root) ? (await readdir(root)).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : []
  if (!versions.length) throw new Error('PostgreSQL is not installed (Debian package postgresql; npm test and npm run pool install it)')
  return path.join(root, versions[0]!, 'bin')
}

interface Ids { uid?: number; gid?: number }

async function runAs(ids: Ids, cmd: string, args: string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(cmd, args, { ...ids, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d) => { output += d })
  child.stderr.on('data', (d) => { output += d })
  const code = await new Promise<number | null>((resolve, reject) => { child.on('error', reject); child.on('close', resolve) })
  return { code, output }
}

async function userIds(name: string): Promise<Ids> {
  const uid = await runAs({}, 'id', ['-u', name])
  const gid = await runAs({}, 'id', ['-g', name])
  if (uid.code !== 0) throw new Error(`no ${name} user to run PostgreSQL as: ${uid.output.trim()}`)
  return { uid: Number(uid.output.trim()), gid: Number(gid.output.trim()) }
}

/** Can the server's user reach `dir` (every directory above it searchable)? Always, when we are not root. */
export async function reachableByServer(dir: string): Promise<boolean> {
  if (process.getuid?.() !== 0) return true
  return (await runAs(await userIds('postgres'), 'test', ['-x', dir])).code === 0
}

/**
 * Starts a server whose files live in `dir` (data/, sock/), initialising it on first use with
 * superuser `user` and `password`. The socket goes to `socketDir` (a socket path has at most 107 bytes).
 */
export async function startLocalPostgres(dir: string, user: string, password: string, socketDir = path.join(dir, 'sock')): Promise<LocalPostgres> {
  const bin = await pgBinDir()
  const dataDir = path.join(dir, 'data')
  await mkdir(socketDir, { recursive: true })
  const ids = process.getuid?.() === 0 ? await userIds('postgres') : {}
  if (ids.uid !== undefined) for (const p of [dir, socketDir]) await chown(p, ids.uid, ids.gid!)
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    const pwfile = path.join(dir, 'initdb-password')
    await writeFile(pwfile, `${password}\n`, { mode: 0o600 })
    if (ids.uid !== undefined) await chown(pwfile, ids.uid, ids.gid!)
    const init = await runAs(ids, path.join(bin, 'initdb'), ['-D', dataDir, '-U', user, '--pwfile', pwfile, '-A', 'scram-sha-256', '--no-sync', '-E', 'UTF8', '--locale', 'C'])
    if (init.code !== 0) throw new Error(`initdb failed: ${init.output.trim()}`)
  }
  let proc: ChildProcess | undefined
  let output = ''
  const start = async (): Promise<void> => {
    const child = spawn(path.join(bin, 'postgres'), ['-D', dataDir, '-k', socketDir, '-c', 'listen_addresses=', '-c', 'fsync=off', '-c', 'max_connections=200'], { ...ids, stdio: ['ignore', 'pipe', 'pipe'] })
    proc = child
    child.stdout!.on('data', (d) => { output += d })
    child.stderr!.on('data', (d) => { output += d })
    const deadline = Date.now() + 30_000
    for (;;) {
      if (child.exitCode !== null) throw new Error(`postgres exited: ${output.trim()}`)
      if ((await runAs({}, path.join(bin, 'pg_isready'), ['-h', socketDir, '-U', user, '-q'])).code === 0) return
      if (Date.now() > deadline) throw new Error(`postgres not ready in 30 s: ${output.trim()}`)
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
  return {
    socketDir,
    url(db, opts = {}) {
      const pw = opts.password === false ? '' : `:${encodeURIComponent(typeof opts.password === 'string' ? opts.password : password)}`
      return `postgres://${encodeURIComponent(opts.user ?? user)}${pw}@localhost/${db}?host=${encodeURIComponent(socketDir)}`
    },
    pid: () => proc?.pid,
    stop: () => stopWith('SIGINT'),
    start,
    kill: () => stopWith('SIGKILL'),
    output: () => output,
  }
}
