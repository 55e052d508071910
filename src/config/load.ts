/**
 * The one configuration object: defaults < config file (`--config FILE`, JSON) < `VCS_WORKER_*`
 * environment < command-line flags (docs/design.md). Read once, checked against the schema
 * (schema.ts) with every problem named by its key, then frozen and passed in. Only this file
 * reads `process.env`.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parseIntoClientConfig } from 'pg-connection-string'
import { ConfigError } from '../errors.js'
import { INSTALL_ROOT } from '../install.js'
import { schemaProblems } from './check.js'
import { defaultSettings, envOf, flagOf, kindOf, SETTING_KEYS, SETTINGS, type Settings } from './schema.js'

/** What the settings imply, worked out once at load. */
interface Derived {
  /** PATH handed to children (the worker's own) */
  readonly envPath: string
  /** HOME for children, `<dataDir>/home` */
  readonly homeDir: string
  /** temp files (spilled request bodies), `<dataDir>/tmp` */
  readonly tmpDir: string
  /** the SQLite auth store, `<dataDir>/auth.sqlite` */
  readonly authDb: string
  /** the hook program, under each hook name git runs (git/hook-service.ts), `<dataDir>/hooks` */
  readonly hooksDir: string
}

export type Config = Readonly<Settings> & Derived

/** Flags that every command accepts, for `util.parseArgs`. */
export function flagSpec(): Record<string, { type: 'string' | 'boolean' }> {
  const spec: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' } }
  for (const key of SETTING_KEYS) spec[flagOf(key)] = { type: kindOf(key) === 'bool' ? 'boolean' : 'string' }
  return spec
}

interface Source {
  /** parsed flag values (strings, or booleans for bool options) */
  flags: Record<string, string | boolean | undefined>
  env: NodeJS.ProcessEnv
  cwd?: string
}

/** Builds, validates and freezes the configuration. Throws ConfigError naming every bad key. */
export function loadConfig(src: Source): Config {
  const problems: string[] = []
  const raw: Record<string, unknown> = defaultSettings()
  const cwd = src.cwd ?? process.cwd()
  // what a relative dataDir or reposDir is relative to: the install for the default (every
  // command finds the same store from any directory), the config file's own dir for the file's,
  // the current directory for the environment's and the flags'
  const base: Partial<Record<keyof Settings, string>> = { dataDir: INSTALL_ROOT }
  const configFile = src.flags.config ?? src.env.VCS_WORKER_CONFIG
  if (typeof configFile === 'string') {
    // a file's unknown keys come along, for the schema to name them
    const fromFile = readConfigFile(configFile, problems)
    Object.assign(raw, fromFile)
    for (const key of ['dataDir', 'reposDir'] as const) if (key in fromFile) base[key] = path.dirname(path.resolve(cwd, configFile))
  }
  for (const key of SETTING_KEYS) {
    const fromEnv = src.env[envOf(key)]
    if (fromEnv !== undefined && fromEnv !== '') {
      raw[key] = coerce(key, fromEnv, envOf(key), problems) ?? raw[key]
      base[key] = cwd
    }
    const fromFlag = src.flags[flagOf(key)]
    if (fromFlag !== undefined) {
      raw[key] = coerce(key, fromFlag, `--${flagOf(key)}`, problems) ?? raw[key]
      base[key] = cwd
    }
  }
  problems.push(...schemaProblems(SETTINGS, raw, 'configuration', typeof configFile === 'string' ? configFile : undefined))
  if (!problems.length) problems.push(...storeUrlProblems(raw.authStore as string))
  if (problems.length) throw new ConfigError(problems)
  const settings = raw as Settings
  const dataDir = path.resolve(base.dataDir ?? cwd, settings.dataDir)
  const heavy = settings.heavyLimit
  return deepFreeze({
    ...settings,
    dataDir,
    reposDir: settings.reposDir ? path.resolve(base.reposDir ?? cwd, settings.reposDir) : path.join(dataDir, 'repos'),
    repoHeavyLimit: Math.min(heavy, settings.repoHeavyLimit || Math.ceil(heavy / 2)),
    fullCloneLimit: Math.min(heavy, settings.fullCloneLimit || Math.ceil(heavy * 0.75)),
    clientHeavyLimit: Math.min(heavy, settings.clientHeavyLimit || Math.ceil(heavy / 2)),
    transferRepoLimit: Math.min(settings.transferLimit, settings.transferRepoLimit || Math.ceil(settings.transferLimit / 2)),
    transferClientLimit: Math.min(settings.transferLimit, settings.transferClientLimit),
    envPath: src.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    homeDir: path.join(dataDir, 'home'),
    tmpDir: path.join(dataDir, 'tmp'),
    authDb: path.join(dataDir, 'auth.sqlite'),
    hooksDir: path.join(dataDir, 'hooks'),
  })
}

/** A PostgreSQL URL that will not parse: told without repeating it (it may hold a password). */
function storeUrlProblems(value: string): string[] {
  if (value === 'sqlite') return []
  try {
    parseIntoClientConfig(value)
    new URL(value) // parseIntoClientConfig accepts some that URL does not
    return []
  } catch (err) {
    return [`authStore: not a valid PostgreSQL URL (${(err as Error).message.replace(value, '...').split('\n')[0]}); the form is postgres://USER@HOST[:PORT]/DATABASE[?host=/socket/dir]`]
  }
}

function readConfigFile(file: string, problems: string[]): Record<string, unknown> {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    problems.push(`config file ${file}: ${(err as Error).message}`)
    return {}
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    problems.push(`config file ${file}: must hold a JSON object`)
    return {}
  }
  return parsed as Record<string, unknown>
}

/** A flag's or variable's text as the setting's type; undefined (and a problem told) when it is none. */
function coerce(key: keyof Settings, value: string | boolean, where: string, problems: string[]): unknown {
  if (typeof value === 'boolean') return value
  switch (kindOf(key)) {
    case 'int':
      if (/^-?\d+$/.test(value.trim())) return Number(value)
      problems.push(`${where}: expected an integer, got ${JSON.stringify(value)}`)
      return undefined
    case 'bool':
      if (/^(1|true|yes|on)$/i.test(value)) return true
      if (/^(0|false|no|off)$/i.test(value)) return false
      problems.push(`${where}: expected true or false, got ${JSON.stringify(value)}`)
      return undefined
    case 'list': return value.split(',').map((s) => s.trim()).filter(Boolean)
    case 'string': return value
  }
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (v && typeof v === 'object') deepFreeze(v as object)
  return Object.freeze(o)
}
