/**
 * `vcs-worker store copy --from FILE|URL --to URL|FILE`: moves a whole auth store (users with
 * their password hashes, tokens, grants, repos, protections; ids kept, so nothing changes for
 * anyone) from SQLite to PostgreSQL, or back. The target must be empty; the copy is one
 * transaction, so it lands whole or not at all.
 */
import { existsSync } from 'node:fs'
import { openPgStore } from '../auth/pg-store.js'
import { redactUrl } from '../auth/pg-url.js'
import { openSqliteStore } from '../auth/sqlite-store.js'
import { isPostgresUrl } from '../auth/open.js'
import { StoreConflictError, type AuthStore } from '../auth/store.js'
import type { Config } from '../config/load.js'
import { UsageError } from './errors.js'

async function open(where: string, config: Config, mustExist: boolean): Promise<AuthStore> {
  if (isPostgresUrl(where)) {
    try {
      return await openPgStore({ url: where, passwordFile: config.authStorePasswordFile || undefined, poolSize: 2 })
    } catch (err) {
      throw new Error(`${redactUrl(where)}: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  if (mustExist && !existsSync(where)) throw new Error(`${where}: no such SQLite store`)
  return openSqliteStore(where)
}

const label = (where: string): string => (isPostgresUrl(where) ? redactUrl(where) : where)

export async function storeCopy(args: string[], flags: { from?: string; to?: string }, config: Config, out: (line: string) => void): Promise<void> {
  if (args.length !== 1 || args[0] !== 'copy') throw new UsageError('usage: vcs-worker store copy --from FILE|URL --to URL|FILE')
  if (!flags.from || !flags.to) throw new UsageError('store copy needs --from and --to (a SQLite file or a postgres:// URL)')
  if (flags.from === flags.to) throw new UsageError('--from and --to name the same store')
  const from = await open(flags.from, config, true)
  try {
    const to = await open(flags.to, config, false)
    try {
      const dump = await from.dump()
      try {
        await to.restore(dump)
      } catch (err) {
        if (err instanceof StoreConflictError) throw new Error(`${label(flags.to)} is not empty: store copy writes only into an empty store; nothing was copied`)
        throw err
      }
      out(`copied ${dump.users.length} users, ${dump.tokens.length} tokens, ${dump.grants.length} grants, ${dump.repos.length} repos, ${dump.protections.length} protections, ${dump.locks.length} locks to ${label(flags.to)}`)
    } finally {
      await to.close()
    }
  } finally {
    await from.close()
  }
}
