/**
 * A child killed in the middle of a push leaves an abandoned transaction: `.hg/store/journal`
 * stays, and the next push aborts with "abandoned transaction found - run hg recover". Before a
 * repo is served, the worker checks for a journal (one stat); if the store lock is held by a
 * live process the transaction is real and in progress, so nothing is done; otherwise the
 * worker runs `hg recover` (which takes hg's lock itself) once, logs it, and only then serves.
 * A push is acknowledged to the client only after hg committed it, so rolling back an
 * unfinished one never loses an acknowledged push.
 */
import { readlink, stat } from 'node:fs/promises'
import path from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config/load.js'
import { hgRecover } from './spawn.js'

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** True when hg's store lock (a symlink to "host:pid") names a live process. */
async function lockHeld(storeDir: string): Promise<boolean> {
  const target = await readlink(path.join(storeDir, 'lock')).catch(() => undefined)
  if (target === undefined) return false
  const pid = Number(target.slice(target.lastIndexOf(':') + 1))
  return Number.isInteger(pid) && pid > 0 ? alive(pid) : true
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
