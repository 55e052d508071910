/**
 * A child killed in the middle of a push leaves an abandoned transaction: `.hg/store/journal`
 * stays, and the next push aborts with "abandoned transaction found - run hg recover". Before a
 * repo is served, the worker checks for a journal (one stat); if the store lock is held by a
 * live process the transaction is real and in progress, so nothing is done; otherwise the
 * worker runs `hg recover` (which takes hg's lock itself) once, logs it, and only then serves.
 * A push is acknowledged to the client only after hg committed it, so rolling back an
 * unfinished one never loses an acknowledged push.
 *
 * On shared storage the lock may name another host: hg writes `HOST/PIDNS:PID` (its lock
 * prefix: the host name, and on Linux the pid namespace's inode in hex). A pid can only be
 * checked in our own namespace on our own host; a lock from anywhere else is taken as live, as
 * hg itself does, and the transaction left alone. Clearing a dead host's lock is an operator's
 * act (docs/operating.md).
 */
import { readFile, readlink, stat } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/load.js'
import { hgRecover } from './spawn.js'
import { processAlive } from '../process/child.js'

let prefix: Promise<string> | undefined
/** hg's lock prefix for processes of this host and pid namespace (mercurial/lock.py, _getlockprefix) */
export function lockPrefix(): Promise<string> {
  prefix ??= stat('/proc/self/ns/pid').then((st) => `${os.hostname()}/${st.ino.toString(16)}`, () => os.hostname())
  return prefix
}

/** True when hg's store lock (a symlink to "prefix:pid") may be held: a live process here, or anyone elsewhere. */
export async function lockHeld(storeDir: string): Promise<boolean> {
  const file = path.join(storeDir, 'lock')
  // a symlink, or a plain file where the filesystem has no symlinks (hg falls back to one)
  const target = await readlink(file).catch((err: NodeJS.ErrnoException) => (err.code === 'EINVAL' ? readFile(file, 'utf8').catch(() => undefined) : undefined))
  if (target === undefined) return false
  const colon = target.lastIndexOf(':')
  if (target.slice(0, colon) !== (await lockPrefix())) return true // another host or namespace: cannot tell, so live
  const pid = Number(target.slice(colon + 1))
  return Number.isInteger(pid) && pid > 0 ? processAlive(pid) : true
}

export class JournalRecovery {
  private readonly running = new Map<string, Promise<void>>()
  constructor(private readonly config: Config, private readonly log: FastifyBaseLogger) {}

  /** Recovers `repoDir` if it holds an abandoned transaction; concurrent callers share one run. */
  async ensure(repoDir: string): Promise<void> {
    const store = path.join(repoDir, '.hg', 'store')
    const journal = await stat(path.join(store, 'journal')).catch(() => undefined)
    if (!journal) return
    if (await lockHeld(store)) return
    let run = this.running.get(repoDir)
    if (!run) {
      run = (async () => {
        try {
          const out = await hgRecover(this.config, repoDir)
          this.log.warn({ repo_dir: repoDir, output: out }, 'recovered an abandoned hg transaction')
        } catch (err) {
          this.log.error({ repo_dir: repoDir, err }, 'hg recover failed')
        }
      })().finally(() => this.running.delete(repoDir))
      this.running.set(repoDir, run)
    }
    await run
  }
}
