/**
 * Opens the auth store the configuration names: SQLite in the data dir (the default, one
 * machine) or PostgreSQL (a pool across machines). The worker and every CLI command come here.
 */
import type { Config } from '../config/load.js'
import { redactUrl } from './pg-url.js'
import { openSqliteStore } from './sqlite-store.js'
import type { AuthStore } from './store.js'

export const isPostgresUrl = (value: string): boolean => /^postgres(ql)?:\/\//.test(value)

export interface OpenOptions {
  /** a PostgreSQL store's listener lost or regained its connection */
  onEvent?: (event: 'listening' | 'lost' | 'changed', detail: string) => void
}

/** The store, migrated and ready; a PostgreSQL server that cannot be reached throws one line naming it (without its password). */
export async function openStore(config: Config, opts: OpenOptions = {}): Promise<AuthStore> {
  if (!isPostgresUrl(config.authStore)) return openSqliteStore(config.authDb)
  try {
    const { openPgStore } = await import('./pg-store.js') // pg is loaded only for a PostgreSQL store
    return await openPgStore({
      url: config.authStore,
      passwordFile: config.authStorePasswordFile || undefined,
      poolSize: config.authStorePoolSize,
      onEvent: opts.onEvent,
    })
  } catch (err) {
    throw new StoreOpenError(`auth store ${redactUrl(config.authStore)}: ${(err as Error).message.split('\n')[0]}`)
  }
}

/** The store named by the configuration could not be opened (unreachable, refused, too new). */
export class StoreOpenError extends Error {}
