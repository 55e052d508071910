/**
 * The one configuration object: defaults < config file (`--config FILE`, JSON) < `VCS_WORKER_*`
 * environment < command-line flags (DESIGN.md). Read once, every problem reported with the key
 * that has it, then frozen and passed in. Only this file reads `process.env`.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { ConfigError } from './errors.js'
import { isBranchName } from './repos/create.js'

type Kind = 'string' | 'int' | 'bool' | 'list'

interface Option {
  kind: Kind
  /** the flag name (without `--`) */
  flag: string
  /** the environment variable */
  env: string
  doc: string
  min?: number
  max?: number
  choices?: readonly string[]
  /** a string's shape: the test, and what to say when it fails */
  shape?: { test: (value: string) => boolean; expected: string }
}

/** Every setting, its flag, variable and meaning; README's configuration table mirrors this. */
export const OPTIONS = {
  host: { kind: 'string', flag: 'host', env: 'VCS_WORKER_HOST', doc: 'address to listen on' },
  port: { kind: 'int', flag: 'port', env: 'VCS_WORKER_PORT', doc: 'TCP port (0 = any free port)', min: 0, max: 65535 },
  dataDir: { kind: 'string', flag: 'data', env: 'VCS_WORKER_DATA', doc: 'data dir: auth store, temp files, git HOME' },
  reposDir: { kind: 'string', flag: 'repos', env: 'VCS_WORKER_REPOS', doc: 'repository root (default DATA/repos)' },
  gitBin: { kind: 'string', flag: 'git-bin', env: 'VCS_WORKER_GIT_BIN', doc: 'git executable' },
  hgBin: { kind: 'string', flag: 'hg-bin', env: 'VCS_WORKER_HG_BIN', doc: 'hg executable' },
  hgProcesses: { kind: 'int', flag: 'hg-processes', env: 'VCS_WORKER_HG_PROCESSES', doc: 'number of `hg serve` children', min: 0, max: 64 },
  logLevel: {
    kind: 'string', flag: 'log-level', env: 'VCS_WORKER_LOG_LEVEL', doc: 'pino log level',
    choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
  },
  maxPushBytes: { kind: 'int', flag: 'max-push-bytes', env: 'VCS_WORKER_MAX_PUSH_BYTES', doc: 'largest push body (after gzip decoding)', min: 1 },
  maxNegotiationBytes: {
    kind: 'int', flag: 'max-negotiation-bytes', env: 'VCS_WORKER_MAX_NEGOTIATION_BYTES',
    doc: 'largest upload-pack request body (after gzip decoding)', min: 1,
  },
  headersTimeoutMs: { kind: 'int', flag: 'headers-timeout-ms', env: 'VCS_WORKER_HEADERS_TIMEOUT_MS', doc: 'time a client has to send its request headers', min: 100 },
  keepAliveTimeoutMs: { kind: 'int', flag: 'keep-alive-timeout-ms', env: 'VCS_WORKER_KEEP_ALIVE_TIMEOUT_MS', doc: 'idle time allowed between two requests on one connection', min: 100 },
  idleTimeoutMs: { kind: 'int', flag: 'idle-timeout-ms', env: 'VCS_WORKER_IDLE_TIMEOUT_MS', doc: 'socket inactivity (no byte either way) that ends a connection', min: 1000 },
  hgProbeIntervalMs: { kind: 'int', flag: 'hg-probe-interval-ms', env: 'VCS_WORKER_HG_PROBE_INTERVAL_MS', doc: 'how often each ready hg serve child is probed; two failures in a row replace it', min: 100 },
  hgTimeoutMs: { kind: 'int', flag: 'hg-timeout-ms', env: 'VCS_WORKER_HG_TIMEOUT_MS', doc: 'an hg serve child silent this long is cut off (504) and replaced', min: 100 },
  healthIntervalMs: { kind: 'int', flag: 'health-interval-ms', env: 'VCS_WORKER_HEALTH_INTERVAL_MS', doc: 'how often the background health checks run', min: 100 },
  healthTimeoutMs: { kind: 'int', flag: 'health-timeout-ms', env: 'VCS_WORKER_HEALTH_TIMEOUT_MS', doc: 'time each health check may take', min: 50 },
  diskFreeFloorBytes: { kind: 'int', flag: 'disk-free-floor-bytes', env: 'VCS_WORKER_DISK_FREE_FLOOR_BYTES', doc: 'free space under the repos dir below which git and hg are unhealthy', min: 0 },
  inodesFreeFloor: { kind: 'int', flag: 'inodes-free-floor', env: 'VCS_WORKER_INODES_FREE_FLOOR', doc: 'free inodes below which git and hg are unhealthy', min: 0 },
  killGraceMs: { kind: 'int', flag: 'kill-grace-ms', env: 'VCS_WORKER_KILL_GRACE_MS', doc: 'SIGTERM to SIGKILL delay for child processes', min: 0 },
  trustedProxies: { kind: 'list', flag: 'trusted-proxies', env: 'VCS_WORKER_TRUSTED_PROXIES', doc: 'addresses/CIDRs whose X-Forwarded-For is believed (HAProxy)' },
  authCacheTtlMs: { kind: 'int', flag: 'auth-cache-ttl-ms', env: 'VCS_WORKER_AUTH_CACHE_TTL_MS', doc: 'how long a verified credential is remembered', min: 0, max: 3_600_000 },
  loginFailureLimit: { kind: 'int', flag: 'login-failure-limit', env: 'VCS_WORKER_LOGIN_FAILURE_LIMIT', doc: 'failed logins per user and address before 429', min: 1 },
  loginFailureAddressLimit: { kind: 'int', flag: 'login-failure-address-limit', env: 'VCS_WORKER_LOGIN_FAILURE_ADDRESS_LIMIT', doc: 'failed password logins from one address, across all user names, before 429', min: 1 },
  passwordQueueLimit: { kind: 'int', flag: 'password-queue-limit', env: 'VCS_WORKER_PASSWORD_QUEUE_LIMIT', doc: 'password checks waiting for the slow KDF (two run at once); past it, 503', min: 0 },
  loginFailureWindowMs: { kind: 'int', flag: 'login-failure-window-ms', env: 'VCS_WORKER_LOGIN_FAILURE_WINDOW_MS', doc: 'window of the failed-login count', min: 1000 },
  realm: { kind: 'string', flag: 'realm', env: 'VCS_WORKER_REALM', doc: 'HTTP Basic realm shown by clients' },
  heavyLimit: { kind: 'int', flag: 'heavy-limit', env: 'VCS_WORKER_HEAVY_LIMIT', doc: 'clones, fetches and pushes served at once (git upload/receive-pack POSTs, hg bundle commands)', min: 1 },
  repoHeavyLimit: { kind: 'int', flag: 'repo-heavy-limit', env: 'VCS_WORKER_REPO_HEAVY_LIMIT', doc: 'of those, at once on one repository (0 = half of heavyLimit)', min: 0 },
  fullCloneLimit: { kind: 'int', flag: 'full-clone-limit', env: 'VCS_WORKER_FULL_CLONE_LIMIT', doc: 'of those, full clones (fetches with no `have`): the rest of the slots stay free for incremental fetches and pushes (0 = three quarters of heavyLimit)', min: 0 },
  clientHeavyLimit: { kind: 'int', flag: 'client-heavy-limit', env: 'VCS_WORKER_CLIENT_HEAVY_LIMIT', doc: 'of those, at once for one client: a user, or an address for anonymous requests (X-Forwarded-For from trustedProxies); a slow reader holds no more (0 = half of heavyLimit)', min: 0 },
  queueLimit: { kind: 'int', flag: 'queue-limit', env: 'VCS_WORKER_QUEUE_LIMIT', doc: 'heavy requests waiting for a slot; past it, 503', min: 0 },
  queueTimeoutMs: { kind: 'int', flag: 'queue-timeout-ms', env: 'VCS_WORKER_QUEUE_TIMEOUT_MS', doc: 'longest wait for a slot; past it, 503', min: 1 },
  agentPort: { kind: 'int', flag: 'agent-port', env: 'VCS_WORKER_AGENT_PORT', doc: 'HAProxy agent-check TCP port on the same host (-1 = off, 0 = any free port)', min: -1, max: 65535 },
  healthPort: { kind: 'int', flag: 'health-port', env: 'VCS_WORKER_HEALTH_PORT', doc: 'a second HTTP port with only /health/*, answered on a thread of its own (-1 = off, 0 = any free port)', min: -1, max: 65535 },
  drainGraceMs: { kind: 'int', flag: 'drain-grace-ms', env: 'VCS_WORKER_DRAIN_GRACE_MS', doc: 'after SIGTERM, how long new work is still accepted (longer than the balancer\'s check interval x fall)', min: 0 },
  drainTimeoutMs: { kind: 'int', flag: 'drain-timeout-ms', env: 'VCS_WORKER_DRAIN_TIMEOUT_MS', doc: 'after SIGTERM, how long in-flight clones and pushes may take before the exit is forced', min: 0 },
  childNice: { kind: 'int', flag: 'child-nice', env: 'VCS_WORKER_CHILD_NICE', doc: 'niceness of git and hg serve children: the worker stays responsive when they saturate the CPU (0 = same as the worker)', min: 0, max: 19 },
  hgHandoff: { kind: 'bool', flag: 'hg-handoff', env: 'VCS_WORKER_HG_HANDOFF', doc: 'hand the client connection of a bundle download (getbundle) to the hg serve child, which streams the bundle to the client itself' },
  spawnHelper: { kind: 'bool', flag: 'spawn-helper', env: 'VCS_WORKER_SPAWN_HELPER', doc: 'start git through a helper process, so its fork never blocks the event loop' },
  quarantineStaleMs: { kind: 'int', flag: 'quarantine-stale-ms', env: 'VCS_WORKER_QUARANTINE_STALE_MS', doc: 'a push quarantine (objects/tmp_objdir-incoming-*) unchanged this long and held open by no process on this host is removed, swept before pushes', min: 1000 },
  fsckObjects: { kind: 'bool', flag: 'fsck-objects', env: 'VCS_WORKER_FSCK_OBJECTS', doc: 'check every pushed object (git\'s receive.fsckObjects): a malformed commit, tree or tag is refused' },
  defaultBranch: {
    kind: 'string', flag: 'default-branch', env: 'VCS_WORKER_DEFAULT_BRANCH', doc: 'the branch HEAD of a new git repo names (repo create); a push that creates the first branch of a repo whose HEAD names none moves HEAD to it',
    shape: { test: isBranchName, expected: 'a branch name (segments of A-Z a-z 0-9 . _ -)' },
  },
  metricsRepoLabel: { kind: 'bool', flag: 'metrics-repo-label', env: 'VCS_WORKER_METRICS_REPO_LABEL', doc: 'label request metrics with the repo (unbounded with many repos)' },
} as const satisfies Record<string, Option>

export type ConfigKey = keyof typeof OPTIONS

export interface Config {
  readonly host: string
  readonly port: number
  readonly dataDir: string
  readonly reposDir: string
  readonly gitBin: string
  readonly hgBin: string
  readonly hgProcesses: number
  readonly logLevel: string
  readonly maxPushBytes: number
  readonly maxNegotiationBytes: number
  readonly headersTimeoutMs: number
  readonly keepAliveTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly killGraceMs: number
  readonly healthIntervalMs: number
  readonly healthTimeoutMs: number
  readonly diskFreeFloorBytes: number
  readonly inodesFreeFloor: number
  readonly hgTimeoutMs: number
  readonly hgProbeIntervalMs: number
  readonly trustedProxies: readonly string[]
  readonly authCacheTtlMs: number
  readonly loginFailureLimit: number
  readonly loginFailureWindowMs: number
  readonly loginFailureAddressLimit: number
  readonly passwordQueueLimit: number
  readonly realm: string
  readonly heavyLimit: number
  readonly repoHeavyLimit: number
  readonly fullCloneLimit: number
  readonly clientHeavyLimit: number
  readonly queueLimit: number
  readonly queueTimeoutMs: number
  readonly agentPort: number
  readonly healthPort: number
  readonly drainGraceMs: number
  readonly drainTimeoutMs: number
  readonly metricsRepoLabel: boolean
  readonly fsckObjects: boolean
  readonly quarantineStaleMs: number
  readonly defaultBranch: string
  readonly childNice: number
  readonly hgHandoff: boolean
  readonly spawnHelper: boolean
  /** derived: PATH handed to children (the worker's own) */
  readonly envPath: string
  /** derived: HOME for children, `<dataDir>/home` */
  readonly homeDir: string
  /** derived: temp files (spilled request bodies), `<dataDir>/tmp` */
  readonly tmpDir: string
  /** derived: the SQLite auth store, `<dataDir>/auth.sqlite` */
  readonly authDb: string
  /** derived: hook scripts receive-pack runs, `<dataDir>/hooks` */
  readonly hooksDir: string
}

/** Defaults; `reposDir` empty means `<dataDir>/repos`. */
export const DEFAULTS: Config = {
  host: '127.0.0.1',
  port: 8080,
  dataDir: 'data',
  reposDir: '',
  gitBin: 'git',
  hgBin: 'hg',
  hgProcesses: 2,
  logLevel: 'info',
  maxPushBytes: 2 * 1024 ** 3,
  maxNegotiationBytes: 64 * 1024 ** 2,
  headersTimeoutMs: 20_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 300_000,
  killGraceMs: 5_000,
  healthIntervalMs: 2_000,
  healthTimeoutMs: 2_000,
  diskFreeFloorBytes: 1024 ** 3,
  inodesFreeFloor: 10_000,
  hgTimeoutMs: 120_000,
  hgProbeIntervalMs: 5_000,
  trustedProxies: [],
  authCacheTtlMs: 60_000,
  loginFailureLimit: 10,
  loginFailureWindowMs: 300_000,
  loginFailureAddressLimit: 50,
  passwordQueueLimit: 16,
  realm: 'vcs-worker',
  heavyLimit: 16,
  repoHeavyLimit: 0,
  fullCloneLimit: 0,
  clientHeavyLimit: 0,
  queueLimit: 64,
  queueTimeoutMs: 30_000,
  agentPort: -1,
  healthPort: -1,
  drainGraceMs: 10_000,
  drainTimeoutMs: 300_000,
  metricsRepoLabel: false,
  fsckObjects: true,
  quarantineStaleMs: 86_400_000,
  defaultBranch: 'main',
  childNice: 10,
  hgHandoff: true,
  spawnHelper: true,
  envPath: '/usr/local/bin:/usr/bin:/bin',
  homeDir: '',
  tmpDir: '',
  authDb: '',
  hooksDir: '',
}

/** Flags that every command accepts for `util.parseArgs`. */
export function flagSpec(): Record<string, { type: 'string' | 'boolean' }> {
  const spec: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' } }
  for (const opt of Object.values(OPTIONS) as Option[]) spec[opt.flag] = { type: opt.kind === 'bool' ? 'boolean' : 'string' }
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
  const raw: Record<string, unknown> = { ...DEFAULTS }
  const configFile = src.flags.config ?? src.env.VCS_WORKER_CONFIG
  if (typeof configFile === 'string') Object.assign(raw, readConfigFile(configFile, problems))
  for (const [key, opt] of Object.entries(OPTIONS) as [ConfigKey, Option][]) {
    const fromEnv = src.env[opt.env]
    if (fromEnv !== undefined && fromEnv !== '') raw[key] = coerce(fromEnv, opt, `${opt.env}`, problems)
    const fromFlag = src.flags[opt.flag]
    if (fromFlag !== undefined) raw[key] = coerce(fromFlag, opt, `--${opt.flag}`, problems)
  }
  for (const [key, opt] of Object.entries(OPTIONS) as [ConfigKey, Option][]) checkValue(key, raw[key], opt, problems)
  if (problems.length) throw new ConfigError(problems)
  const cwd = src.cwd ?? process.cwd()
  const dataDir = path.resolve(cwd, raw.dataDir as string)
  raw.dataDir = dataDir
  raw.reposDir = raw.reposDir ? path.resolve(cwd, raw.reposDir as string) : path.join(dataDir, 'repos')
  raw.envPath = src.env.PATH ?? DEFAULTS.envPath
  raw.homeDir = path.join(dataDir, 'home')
  raw.tmpDir = path.join(dataDir, 'tmp')
  raw.authDb = path.join(dataDir, 'auth.sqlite')
  raw.hooksDir = path.join(dataDir, 'hooks')
  const heavy = raw.heavyLimit as number
  raw.repoHeavyLimit = Math.min(heavy, (raw.repoHeavyLimit as number) || Math.ceil(heavy / 2))
  raw.fullCloneLimit = Math.min(heavy, (raw.fullCloneLimit as number) || Math.ceil(heavy * 0.75))
  raw.clientHeavyLimit = Math.min(heavy, (raw.clientHeavyLimit as number) || Math.ceil(heavy / 2))
  return Object.freeze(raw as unknown as Config)
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
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(parsed)) {
    if (!(key in OPTIONS)) problems.push(`${key}: unknown configuration key (in ${file})`)
    else out[key] = value
  }
  return out
}

function coerce(value: string | boolean, opt: Option, where: string, problems: string[]): unknown {
  if (typeof value === 'boolean') return value
  switch (opt.kind) {
    case 'int': {
      if (!/^-?\d+$/.test(value.trim())) {
        problems.push(`${where}: expected an integer, got ${JSON.stringify(value)}`)
        return undefined
      }
      return Number(value)
    }
    case 'bool': {
      if (/^(1|true|yes|on)$/i.test(value)) return true
      if (/^(0|false|no|off)$/i.test(value)) return false
      problems.push(`${where}: expected true or false, got ${JSON.stringify(value)}`)
      return undefined
    }
    case 'list': return value.split(',').map((s) => s.trim()).filter(Boolean)
    case 'string': return value
  }
}

function checkValue(key: string, value: unknown, opt: Option, problems: string[]): void {
  if (value === undefined) return // already reported by coerce
  switch (opt.kind) {
    case 'int':
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) problems.push(`${key}: expected an integer, got ${JSON.stringify(value)}`)
      else if ((opt.min !== undefined && value < opt.min) || (opt.max !== undefined && value > opt.max))
        problems.push(`${key}: ${value} is out of range [${opt.min ?? '-inf'}, ${opt.max ?? 'inf'}]`)
      return
    case 'bool':
      if (typeof value !== 'boolean') problems.push(`${key}: expected true or false, got ${JSON.stringify(value)}`)
      return
    case 'list':
      if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) problems.push(`${key}: expected a list of strings`)
      return
    case 'string':
      if (typeof value !== 'string') problems.push(`${key}: expected a string, got ${JSON.stringify(value)}`)
      else if (opt.choices && !opt.choices.includes(value)) problems.push(`${key}: must be one of ${opt.choices.join(', ')}, got ${JSON.stringify(value)}`)
      else if (value.includes('\0')) problems.push(`${key}: contains a NUL byte`)
      else if (opt.shape && !opt.shape.test(value)) problems.push(`${key}: expected ${opt.shape.expected}, got ${JSON.stringify(value)}`)
      return
  }
}
