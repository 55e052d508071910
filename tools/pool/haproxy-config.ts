/**
 * The HAProxy 2.6 configuration of a pool of workers: one frontend that sends git clients to
 * servers-git, hg clients to servers-hg and everything else to servers-web, by the protocols'
 * own paths, queries, content types and headers (never User-Agent). README "Operating a pool"
 * explains every line; `vcs-worker haproxy-config` prints it.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { ConfigError } from '../../src/errors.js'

export interface PoolWorker {
  name: string
  /** host:port of the worker's HTTP listener */
  address: string
  /** the worker's --agent-port */
  agentPort: number
  /** the worker's --health-port: HAProxy's HTTP checks go there (answered on the worker's probe
   * thread, never behind its streaming); without it they go to `address` */
  healthPort?: number
}

export interface PoolSpec {
  /** host:port the pool is reached at */
  frontend: string
  /** host:port of HAProxy's stats page */
  stats: string
  /** HAProxy's admin socket (stats, enable/disable servers) */
  adminSocket: string
  /** host:port of the web application */
  web: string
  workers: PoolWorker[]
  /** leastconn, or repo-hash: consistent hashing on the repo path (a repo's traffic stays on one worker) */
  balance: 'leastconn' | 'repo-hash'
  /** health and agent check interval; a worker is down after `fall` failures, up after `rise` successes */
  checkIntervalMs: number
  fall: number
  rise: number
  /** a worker back up gets its full weight over this long */
  slowstartMs: number
  /** inactivity allowed on a client or server connection: a clone or push may take an hour */
  idleTimeoutMs: number
}

/** The pool `npm run pool` starts: two workers, the web stand-in, fixed loopback ports. */
export function defaultPool(workers = 2, adminSocket = path.resolve('data/pool/haproxy.sock')): PoolSpec {
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

const HOST_PORT = /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/
const NAME = /^[A-Za-z0-9_-]{1,32}$/

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

export function checkPoolSpec(spec: PoolSpec, where = 'pool'): PoolSpec {
  const problems: string[] = []
  const known = new Set(Object.keys(defaultPool()))
  for (const key of Object.keys(spec)) if (!known.has(key)) problems.push(`${key}: unknown pool key (in ${where})`)
  for (const key of ['frontend', 'stats', 'web'] as const) {
    if (typeof spec[key] !== 'string' || !HOST_PORT.test(spec[key])) problems.push(`${key}: expected host:port, got ${JSON.stringify(spec[key])}`)
  }
  if (typeof spec.adminSocket !== 'string' || !path.isAbsolute(spec.adminSocket) || /[\s"]/.test(spec.adminSocket)) problems.push(`adminSocket: expected an absolute path without spaces or quotes`)
  else if (Buffer.byteLength(spec.adminSocket) > 107) problems.push(`adminSocket: ${spec.adminSocket.length} bytes; a unix socket path has at most 107`)
  if (spec.balance !== 'leastconn' && spec.balance !== 'repo-hash') problems.push(`balance: must be leastconn or repo-hash, got ${JSON.stringify(spec.balance)}`)
  for (const key of ['checkIntervalMs', 'fall', 'rise', 'slowstartMs', 'idleTimeoutMs'] as const) {
    if (!Number.isSafeInteger(spec[key]) || spec[key] < (key === 'slowstartMs' ? 0 : 1)) problems.push(`${key}: expected a positive integer, got ${JSON.stringify(spec[key])}`)
  }
  if (!Array.isArray(spec.workers) || spec.workers.length === 0) problems.push('workers: expected a non-empty list of {name, address, agentPort[, healthPort]}')
  else {
    const names = new Set<string>()
    spec.workers.forEach((w, i) => {
      if (!w || typeof w.name !== 'string' || !NAME.test(w.name)) problems.push(`workers[${i}].name: expected [A-Za-z0-9_-]{1,32}`)
      else if (names.has(w.name)) problems.push(`workers[${i}].name: ${w.name} is used twice`)
      else names.add(w.name)
      if (!w || typeof w.address !== 'string' || !HOST_PORT.test(w.address)) problems.push(`workers[${i}].address: expected host:port`)
      if (!w || !Number.isSafeInteger(w.agentPort) || w.agentPort < 1 || w.agentPort > 65535) problems.push(`workers[${i}].agentPort: expected a port number`)
      if (w && w.healthPort !== undefined && (!Number.isSafeInteger(w.healthPort) || w.healthPort < 1 || w.healthPort > 65535)) problems.push(`workers[${i}].healthPort: expected a port number`)
    })
  }
  if (problems.length) throw new ConfigError(problems)
  return spec
}

/** hg wire-protocol commands (Mercurial 6.x wireprotov1server): `?cmd=` with one of these is hg. */
const HG_COMMANDS = [
  'capabilities', 'batch', 'getbundle', 'unbundle', 'pushkey', 'listkeys', 'heads', 'known', 'lookup',
  'branchmap', 'between', 'branches', 'changegroup', 'changegroupsubset', 'stream_out', 'clonebundles',
  'clonebundles_manifest', 'protocaps', 'hello', 'debugwireargs', 'filelog',
]

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
    '  # git smart HTTP (git\'s http-protocol.txt): the three endpoints, the service query, its content types, its header',
    '  acl git_path path_end /info/refs /git-upload-pack /git-receive-pack',
    '  acl git_service url_param(service) -m beg git-',
    '  acl git_type req.hdr(content-type) -m beg application/x-git-',
    '  acl git_proto req.hdr(git-protocol) -m found',
    '  # Mercurial\'s wire protocol: a known ?cmd=, its arguments and capabilities headers, its content types',
    `  acl hg_cmd url_param(cmd) -m str ${HG_COMMANDS.join(' ')}`,
    '  acl hg_args req.hdr(x-hgarg-1) -m found',
    '  acl hg_proto req.hdr(x-hgproto-1) -m found',
    '  acl hg_type req.hdr(content-type) -m beg application/mercurial-',
    '  # the repo path, for repo-hash balancing: /team/project.git/info/refs -> /team/project/',
    '  http-request set-var(txn.repo) path,regsub(/info/refs$,/),regsub(/git-upload-pack$,/),regsub(/git-receive-pack$,/),regsub([.]git/$,/)',
    '  use_backend servers-git if git_path || git_service || git_type || git_proto',
    '  use_backend servers-hg if hg_cmd || hg_args || hg_proto || hg_type',
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
