/**
 * Every setting of the worker, once: its type, default, range, meaning and, where it is not the
 * key in kebab-case, its flag name. The TypeScript type, the defaults, the flag and environment
 * names, the validation messages and docs/configuration.md all come from this schema.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { BRANCH_NAME } from '../repos/create.js'

const NO_NUL = { pattern: '^[^\\x00]*$', expected: 'text without NUL bytes' }
const text = (def: string, description: string, extra: object = {}) => Type.String({ default: def, description, ...NO_NUL, ...extra })
const int = (def: number, description: string, range: { minimum?: number; maximum?: number } = {}) => Type.Integer({ default: def, description, ...range })
const bool = (def: boolean, description: string) => Type.Boolean({ default: def, description })

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
type LogLevel = (typeof LOG_LEVELS)[number]

export const SETTINGS = Type.Object({
  host: text('127.0.0.1', 'address to listen on'),
  port: int(8080, 'TCP port (0 = any free port)', { minimum: 0, maximum: 65535 }),
  dataDir: text('data', 'data dir: auth store, temp files, hook sockets, the HOME of git and hg. A relative path is relative to the current directory in a flag or the environment, to the config file\'s directory in the file, and to the install (the directory of package.json) by default, so every command finds the same store from anywhere', { flag: 'data' }),
  reposDir: text('', 'repository root; must exist when given (empty: DATA/repos); relative as dataDir', { flag: 'repos' }),
  publicUrl: text('', 'the URL clients reach this worker (or its balancer) by, e.g. `https://git.example.com`: LFS hrefs and hg clone bundle URLs are built from it. Empty: from the request\'s Host (and X-Forwarded-Proto) only when it came from trustedProxies, else from the address the request reached', { pattern: '^(https?://[^\\s/?#]+(/[^\\s?#]*)?)?$', expected: 'an http:// or https:// URL with no query' }),
  gitBin: text('git', 'git executable'),
  hgBin: text('hg', 'hg executable'),
  hgProcesses: int(2, 'number of `hg serve` children', { minimum: 0, maximum: 64 }),
  logLevel: Type.Unsafe<LogLevel>({ type: 'string', enum: LOG_LEVELS, default: 'info', description: 'pino log level' }),
  maxPushBytes: int(2 * 1024 ** 3, 'largest push body (after gzip decoding)', { minimum: 1 }),
  maxNegotiationBytes: int(64 * 1024 ** 2, 'largest upload-pack request body (after gzip decoding)', { minimum: 1 }),
  headersTimeoutMs: int(20_000, 'time a client has to send its request headers', { minimum: 100 }),
  keepAliveTimeoutMs: int(5_000, 'idle time allowed between two requests on one connection', { minimum: 100 }),
  idleTimeoutMs: int(300_000, 'socket inactivity (no byte either way) that ends a connection', { minimum: 1000 }),
  hgProbeIntervalMs: int(5_000, 'how often each ready hg serve child is probed; two failures in a row replace it', { minimum: 100 }),
  hgTimeoutMs: int(120_000, 'an hg serve child silent this long is cut off (504) and replaced', { minimum: 100 }),
  healthIntervalMs: int(2_000, 'how often the background health checks run', { minimum: 100 }),
  healthTimeoutMs: int(2_000, 'time each health check may take', { minimum: 50 }),
  diskFreeFloorBytes: int(1024 ** 3, 'free space under the repos dir below which git and hg are unhealthy', { minimum: 0 }),
  inodesFreeFloor: int(10_000, 'free inodes below which git and hg are unhealthy', { minimum: 0 }),
  killGraceMs: int(5_000, 'SIGTERM to SIGKILL delay for child processes', { minimum: 0 }),
  trustedProxies: Type.Array(Type.String(NO_NUL), { default: [], description: 'addresses/CIDRs whose X-Forwarded-For is believed (HAProxy); comma-separated in flags and environment' }),
  authCacheTtlMs: int(60_000, 'how long a verified credential is remembered', { minimum: 0, maximum: 3_600_000 }),
  loginFailureLimit: int(10, 'failed logins per user and address before 429', { minimum: 1 }),
  loginFailureUserLimit: int(10, 'failed password logins of one user name, from all addresses together, before that user\'s password logins get 429 from anywhere (tokens still pass; `vcs-worker user unlock NAME` clears it)', { minimum: 1 }),
  loginFailureAddressLimit: int(50, 'failed password logins from one address, across all user names, before 429', { minimum: 1 }),
  kdfCost: int(17, 'scrypt cost of new password hashes, as log2 of N (r=8, p=1): 17 is OWASP\'s floor. Existing hashes keep the cost they were made with; unknown users are checked against a hash of this cost, so their answer takes as long as a real user\'s', { minimum: 10, maximum: 22 }),
  passwordQueueLimit: int(16, 'password checks waiting for the slow KDF (two run at once); past it, 503', { minimum: 0 }),
  loginFailureWindowMs: int(300_000, 'window of the failed-login count', { minimum: 1000 }),
  realm: text('vcs-worker', 'HTTP Basic realm shown by clients'),
  heavyLimit: int(16, 'clones, fetches and pushes served at once (git upload/receive-pack POSTs, hg bundle commands)', { minimum: 1 }),
  repoHeavyLimit: int(0, 'of those, at once on one repository (0 = half of heavyLimit)', { minimum: 0 }),
  fullCloneLimit: int(0, 'of those, full clones (fetches with no `have`): the rest of the slots stay free for incremental fetches and pushes (0 = three quarters of heavyLimit)', { minimum: 0 }),
  clientHeavyLimit: int(0, 'of those, at once for one client: a user, or an address for anonymous requests (X-Forwarded-For from trustedProxies); a slow reader holds no more (0 = half of heavyLimit)', { minimum: 0 }),
  queueLimit: int(64, 'heavy requests waiting for a slot; past it, 503', { minimum: 0 }),
  queueTimeoutMs: int(30_000, 'longest wait for a slot; past it, 503', { minimum: 1 }),
  transferLimit: int(256, 'file downloads (Git LFS objects, hg clone bundles) sent at once; they take no heavy slot, and past a bound are refused at once (503), never queued', { minimum: 1 }),
  transferRepoLimit: int(0, 'of those, at once from one repository (0 = half of transferLimit)', { minimum: 0 }),
  transferClientLimit: int(8, 'of those, at once for one client: a user, or an address for anonymous requests (git-lfs downloads 8 at a time)', { minimum: 1 }),
  transferMinRate: int(16 * 1024, 'a file download that takes fewer bytes per second than this over a transferGraceMs window is ended, so slow readers cannot hold the transfer slots (0 = no minimum)', { minimum: 0 }),
  transferGraceMs: int(10_000, 'the window transferMinRate is measured over; the first window is the grace a download has to get going', { minimum: 1000 }),
  agentPort: int(-1, 'HAProxy agent-check TCP port on the same host (-1 = off, 0 = any free port)', { minimum: -1, maximum: 65535 }),
  healthPort: int(-1, 'a second HTTP port with only /health/*, answered on a thread of its own (-1 = off, 0 = any free port)', { minimum: -1, maximum: 65535 }),
  drainGraceMs: int(10_000, 'after SIGTERM, how long new work is still accepted (longer than the balancer\'s check interval x fall)', { minimum: 0 }),
  drainTimeoutMs: int(300_000, 'after SIGTERM, how long in-flight clones and pushes may take before the exit is forced', { minimum: 0 }),
  childNice: int(10, 'niceness of git and hg serve children (and what they fork): the worker stays responsive when they saturate the CPU (0 = the worker\'s own)', { minimum: 0, maximum: 19 }),
  hgHandoff: bool(true, 'hand the client connection of a bundle download (getbundle) to the hg serve child, which streams the bundle to the client itself; false proxies every byte'),
  packRelay: bool(true, 'a fetch\'s answer goes from git to the client\'s connection through the pack relay (splice), not through the worker; so do Git LFS objects and clone bundles of 1 MiB or more (by relays started ahead); the connection then closes after the answer. false copies every byte through the worker (needed where the worker itself must see the bytes)'),
  spawnHelper: bool(true, 'start git through a helper process, so its fork never blocks the worker\'s event loop; false makes the worker spawn git itself'),
  pushCompleteTimeoutMs: int(600_000, 'a push whose whole body arrived runs to completion (git receive-pack and its hooks, hg unbundle) even if the client leaves; past this long after it left, it is killed', { minimum: 1000 }),
  quarantineStaleMs: int(86_400_000, 'a push quarantine (objects/tmp_objdir-incoming-*) unchanged this long and held open by no process on this host is removed, swept before pushes', { minimum: 1000 }),
  refLockStaleMs: int(600_000, 'a ref lock (refs/...lock, packed-refs.lock) older than this and open in no process on this host was left by a killed git: removed when a push updates that ref (git holds one for milliseconds; keep hosts\' clocks within this)', { minimum: 10_000 }),
  fsckObjects: bool(true, 'check every pushed object (git\'s receive.fsckObjects): a malformed commit, tree or tag is refused, with fsck\'s reason in git push'),
  defaultBranch: Type.String({
    default: 'main', pattern: BRANCH_NAME.source, expected: 'a branch name (segments of A-Z a-z 0-9 . _ -)',
    description: 'the branch HEAD of a new git repo names (repo create); a push that creates the first branch of a repo whose HEAD names none moves HEAD to it',
  }),
  authStore: Type.String({
    default: 'sqlite', pattern: '^(sqlite|postgres(ql)?://[^\\x00\\s]+)$', expected: 'sqlite or a postgres:// URL', secret: true,
    description: 'where accounts, tokens, grants and repo visibility live: `sqlite` (DATA/auth.sqlite, one machine) or a PostgreSQL URL in libpq\'s form, e.g. `postgres://vcs@db.internal/vcs` or `postgres://vcs@localhost/vcs?host=/run/postgresql` (a socket directory); the password from the URL, authStorePasswordFile, PGPASSWORD or ~/.pgpass',
  }),
  authStorePasswordFile: text('', 'a file whose first line is the PostgreSQL password (keeps it off the command line and out of the config file)'),
  authStorePoolSize: int(10, 'PostgreSQL connections each worker keeps at most (plus one that listens for changes)', { minimum: 1, maximum: 1000 }),
  lfsMaxObjectBytes: int(5 * 1024 ** 3, 'largest Git LFS object accepted (413 past it)', { minimum: 1 }),
  lfsLockCheckTimeoutMs: int(20_000, 'how long listing a push\'s changed paths for the Git LFS lock check may take; past it the push is refused (fail closed). Under the push hook\'s own 30 s wait', { minimum: 100, maximum: 25_000 }),
  lfsMaxLocksPerRepo: int(10_000, 'Git LFS file locks one repository may hold; past it a new lock is refused (422)', { minimum: 1, maximum: 1_000_000 }),
  packCache: bool(true, 'the pack-objects cache: identical clone and fetch packs computed once, kept on disk for packCacheMaxAgeMs; an identical fetch that follows is served from it (docs/git.md, "The pack-objects cache"); false computes every pack'),
  packCacheDir: text('', 'where the pack-objects cache keeps its entries, per host (empty: DATA/pack-cache)'),
  packCacheMaxAgeMs: int(300_000, 'how long a cached pack is served (bounds the disk; a pack is correct forever)', { minimum: 1000 }),
  packCacheMaxBytes: int(10 * 1024 ** 3, 'disk the pack-objects cache may use; the oldest entries go first', { minimum: 1024 * 1024 }),
  packCacheWriteOn: int(2, 'a pack is written to the cache on this occurrence of its key (most packs are asked for once)', { minimum: 1, maximum: 100 }),
  hgCloneBundles: bool(true, 'keep clone bundles of each hg repo (a stream bundle and a zstd bundle, in REPO/.hg/clonebundles/, so every worker on the shared storage serves them) and advertise them: a clone downloads one and pulls only what was pushed since'),
  hgCloneBundleDelayMs: int(30_000, 'how long after a push (or a clone of a repo that has none) its clone bundles are made again; pushes meanwhile make one generation', { minimum: 0 }),
  metricsRepoLabel: bool(false, 'label request metrics with the repo (unbounded with many repos)'),
}, { additionalProperties: false })

export type Settings = Static<typeof SETTINGS>
export type SettingKey = keyof Settings

/** What the schema says of one setting. */
export interface SettingSchema extends TSchema {
  default: unknown
  description: string
  flag?: string
  type?: string
  minimum?: number
  maximum?: number
}

/** One setting's schema. */
export function settingSchema(key: SettingKey): SettingSchema {
  return SETTINGS.properties[key] as unknown as SettingSchema
}

/** The settings' keys, in the schema's order. */
export const SETTING_KEYS = Object.keys(SETTINGS.properties) as SettingKey[]

/** A setting's command-line flag (without `--`): its `flag`, or the key in kebab-case. */
export function flagOf(key: SettingKey): string {
  return settingSchema(key).flag ?? key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
}

/** A setting's environment variable: VCS_WORKER_ and the flag in upper snake case. */
export function envOf(key: SettingKey): string {
  return `VCS_WORKER_${flagOf(key).toUpperCase().replace(/-/g, '_')}`
}

/** How a setting is written on the command line and in the environment. */
export function kindOf(key: SettingKey): 'int' | 'bool' | 'list' | 'string' {
  const s = settingSchema(key)
  return s.type === 'integer' ? 'int' : s.type === 'boolean' ? 'bool' : s.type === 'array' ? 'list' : 'string'
}

/** The defaults, read off the schema. */
export function defaultSettings(): Settings {
  return Object.fromEntries(SETTING_KEYS.map((k) => [k, structuredClone(settingSchema(k).default)])) as Settings
}
