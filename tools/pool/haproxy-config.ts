/**
 * The HAProxy 2.6 configuration of a pool of workers: one frontend that sends git clients to
 * servers-git, hg clients to servers-hg and everything else to servers-web, by the protocols'
 * own paths, queries, content types and headers (never User-Agent). README "Operating a pool"
 * explains every line; `vcs-worker haproxy-config` prints it.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import os from 'node:os'
import { createHash } from 'node:crypto'
import { INSTALL_ROOT } from '../../src/install.js'
import { Type, type Static } from '@sinclair/typebox'
import { ConfigError } from '../../src/errors.js'
import { schemaProblems } from '../../src/config/check.js'
import { DUMB_GIT_SUFFIX, GIT_SUFFIXES, HG_BUNDLE_SUFFIX, HG_COMMANDS, LFS_SUFFIXES, WORKER_OWN_PATHS } from '../../src/http/route-table.js'

const HOST_PORT = { type: 'string', pattern: '^(\\d{1,3}(\\.\\d{1,3}){3}|\\[[0-9a-fA-F:]+\\]|[A-Za-z0-9.-]+):\\d{1,5}$', expected: 'host:port' } as const
const PORT = { minimum: 1, maximum: 65535 }

const POOL_WORKER = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$', expected: '[A-Za-z0-9_-]{1,32}' }),
  /** host:port of the worker's HTTP listener */
  address: Type.Unsafe<string>(HOST_PORT),
  /** the worker's --agent-port */
  agentPort: Type.Integer(PORT),
  /** the worker's --health-port: HAProxy's HTTP checks go there (answered on the worker's probe
   * thread, never behind its streaming); without it they go to `address` */
  healthPort: Type.Optional(Type.Integer(PORT)),
}, { additionalProperties: false })

/** A pool description: the pool file's schema (`--pool FILE`; missing keys from the default pool). */
export const POOL_SPEC = Type.Object({
  /** host:port the pool is reached at */
  frontend: Type.Unsafe<string>(HOST_PORT),
  /** host:port of HAProxy's stats page */
  stats: Type.Unsafe<string>(HOST_PORT),
  /** HAProxy's admin socket (stats, enable/disable servers); a unix socket path has at most 107 bytes */
  adminSocket: Type.String({ pattern: '^/[^\\s"]*$', maxLength: 107, expected: 'an absolute path of at most 107 characters without spaces or quotes' }),
  /** host:port of the web application */
  web: Type.Unsafe<string>(HOST_PORT),
  workers: Type.Array(POOL_WORKER, { minItems: 1, expected: 'a non-empty list of {name, address, agentPort[, healthPort]}' }),
  /** leastconn, or repo-hash: consistent hashing on the repo path (a repo's traffic stays on one worker) */
  balance: Type.Unsafe<'leastconn' | 'repo-hash'>({ type: 'string', enum: ['leastconn', 'repo-hash'] }),
  /** health and agent check interval; a worker is down after `fall` failures, up after `rise` successes */
  checkIntervalMs: Type.Integer({ minimum: 1 }),
  fall: Type.Integer({ minimum: 1 }),
  rise: Type.Integer({ minimum: 1 }),
  /** a worker back up gets its full weight over this long */
  slowstartMs: Type.Integer({ minimum: 0 }),
  /** inactivity allowed on a client or server connection: a clone or push may take an hour */
  idleTimeoutMs: Type.Integer({ minimum: 1 }),
}, { additionalProperties: false })

export type PoolWorker = Static<typeof POOL_WORKER>
export type PoolSpec = Static<typeof POOL_SPEC>

/** The pool `npm run pool` starts: two workers, the web stand-in, fixed loopback ports. */
/**
 * The admin socket of the pool whose data dir is `data`: in DATA/pool, or, past a unix socket
 * path's 107 bytes, a fixed temp path named after the data dir (so pool:stats finds it too).
 */
export function adminSocketOf(data: string): string {
  const socket = path.join(data, 'pool', 'haproxy.sock')
  if (Buffer.byteLength(socket) <= 107) return socket
  return path.join(os.tmpdir(), `vcs-pool-${createHash('sha256').update(data).digest('hex').slice(0, 16)}.sock`)
}

export function defaultPool(workers = 2, adminSocket = adminSocketOf(path.join(INSTALL_ROOT, 'data'))): PoolSpec {
  return {
    frontend: '127.0.0.1:8000',
    stats: '127.0.0.1:8404',
    adminSocket,
    web: '127.0.0.1:8090',
    workers: Array.from({ length: workers }, (_, i) => ({ name: `w${i + 1}`, address: `127.0.0.1:${8081 + i}`, agentPort: 9081 + i, healthPort: 9181 + i })),
    balance: 'leastconn',
    checkIntervalMs: 1000,
    fall: 2,
    rise: 2,
    slowstartMs: 10_000,
    idleTimeoutMs: 3_600_000,
  }
}

/** Reads a pool description (JSON; keys of PoolSpec, missing ones from the default pool); every problem named. */
export function loadPoolSpec(file: string): PoolSpec {
  let raw: unknown
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new ConfigError([`pool file ${file}: ${(err as Error).message}`])
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError([`pool file ${file}: must hold a JSON object`])
  return checkPoolSpec({ ...defaultPool(), ...(raw as Partial<PoolSpec>) }, file)
}

/** Checks a pool description against POOL_SPEC; throws ConfigError naming every problem. */
export function checkPoolSpec(spec: PoolSpec, where = 'pool'): PoolSpec {
  const problems = schemaProblems(POOL_SPEC, spec, 'pool', where)
  const names = new Set<string>()
  if (!problems.length) {
    spec.workers.forEach((w, i) => {
      if (names.has(w.name)) problems.push(`workers[${i}].name: ${w.name} is used twice`)
      names.add(w.name)
    })
  }
  if (problems.length) throw new ConfigError(problems)
  return spec
}

const s = (ms: number): string => (ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`)

/** The complete HAProxy configuration for `spec`. */
export function haproxyConfig(spec: PoolSpec): string {
  const check = `inter ${s(spec.checkIntervalMs)} fall ${spec.fall} rise ${spec.rise}`
  const balance = spec.balance === 'leastconn'
    ? ['balance leastconn']
    : ['balance hash var(txn.repo)', 'hash-type consistent']
  // weight 100: the agent's `up 60%` scales the configured weight (with the default 1 it would round to 0)
  const servers = (agentSend: string) => spec.workers.map((w) =>
    `  server ${w.name} ${w.address} weight 100 check ${w.healthPort ? `port ${w.healthPort} ` : ''}${check} slowstart ${s(spec.slowstartMs)} agent-check agent-port ${w.agentPort} agent-inter ${s(spec.checkIntervalMs)} agent-send "${agentSend}\\n"`)
  // a worker is in a protocol's backend only while it can serve that protocol
  const vcsBackend = (protocol: 'git' | 'hg'): string[] => [
    `backend servers-${protocol}`,
    ...balance.map((l) => `  ${l}`),
    `  option httpchk GET /health/${protocol}`,
    '  http-check expect status 200',
    ...servers(protocol),
    '',
  ]
  return [
    '# Generated by `vcs-worker haproxy-config`. README "Operating a pool" explains each line.',
    'global',
    '  log stdout format raw local0 info',
    `  stats socket ${spec.adminSocket} mode 600 level admin`,
    '  # hg sends its arguments as X-HgArg-N headers, 16 KiB each as the workers advertise, and',
    '  # HAProxy must hold all headers in one buffer: 256 KiB buffers and up to 1,000 headers',
    '  # (the defaults, 16 KiB and 101, reject a big discovery with 400).',
    '  tune.bufsize 262144',
    '  tune.maxrewrite 16384',
    '  tune.http.maxhdr 1000',
    '',
    'defaults',
    '  mode http',
    '  log global',
    '  option httplog',
    '  option dontlognull',
    '  timeout connect 5s',
    '  timeout http-request 20s',
    '  timeout http-keep-alive 5s',
    `  timeout client ${s(spec.idleTimeoutMs)}`,
    `  timeout server ${s(spec.idleTimeoutMs)}`,
    '  timeout queue 30s',
    `  timeout check ${s(Math.max(1000, spec.checkIntervalMs))}`,
    '  # a request that found no server or a dead one goes to another; small requests that got',
    '  # a 503 (a draining or saturated worker) are retried there too',
    '  retries 3',
    '  option redispatch 1',
    '  retry-on conn-failure empty-response 503',
    '',
    'frontend vcs',
    `  bind ${spec.frontend}`,
    '  # the headers workers trust come only from here: whatever a client sent is dropped',
    '  http-request del-header X-Forwarded-For',
    '  http-request del-header Forwarded',
    '  http-request del-header X-Real-IP',
    '  http-request del-header X-VCS-Worker-Secret',
    '  http-request del-header X-VCS-Worker-User',
    '  http-request del-header X-VCS-Worker-Access',
    '  option forwardfor',
    '  # what each URL is, rendered from the worker\'s route table (src/http/route-table.ts):',
    '  # git smart HTTP\'s endpoints, dumb-HTTP files (the worker refuses them with the reason),',
    '  # Git LFS under a git repo, hg\'s wire commands (a known ?cmd=) and clone bundles',
    `  acl git_path path_end ${GIT_SUFFIXES.map(([suffix]) => suffix).join(' ')}`,
    `  acl git_dumb path_reg ${DUMB_GIT_SUFFIX}$`,
    `  acl lfs_path path_reg (${LFS_SUFFIXES.map(([suffix]) => suffix).join('|')})$`,
    `  acl hg_cmd url_param(cmd) -m str ${HG_COMMANDS.join(' ')}`,
    `  acl hg_bundle path_reg ${HG_BUNDLE_SUFFIX}$`,
    '  # the repo path, for repo-hash balancing: /team/project.git/info/refs -> /team/project/',
    '  http-request set-var(txn.repo) path,regsub(/info/lfs/.*$,/),regsub(/info/refs$,/),regsub(/git-upload-pack$,/),regsub(/git-receive-pack$,/),regsub([.]git/$,/)',
    '  # the workers\' own URLs (/health/*, /metrics) never reach a VCS backend from here, whatever',
    '  # else the request carries (a ?cmd=, a git or hg header or content type): the web app answers them',
    `  acl worker_own path,url_dec -m reg ^/+(${WORKER_OWN_PATHS.prefixes.map((p) => `${p.slice(1)}`).join('|')}|${WORKER_OWN_PATHS.exact.map((p) => `${p.slice(1)}/*$`).join('|')})`,
    '  use_backend servers-web if worker_own',
    '  use_backend servers-git if git_path || git_dumb || lfs_path',
    '  use_backend servers-hg if hg_cmd || hg_bundle',
    '  default_backend servers-web',
    '',
    ...vcsBackend('git'),
    ...vcsBackend('hg'),
    'backend servers-web',
    '  option httpchk GET /',
    `  server web ${spec.web} check ${check}`,
    '',
    'frontend stats',
    `  bind ${spec.stats}`,
    '  stats enable',
    '  stats uri /',
    '  stats refresh 5s',
    '  stats show-legends',
    '',
  ].join('\n')
}
