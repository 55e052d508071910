/**
 * pino options and the access log. One line per request with DESIGN.md's fields, written when
 * the connection's response closes, so a clone the client abandoned is logged too. Credentials
 * never reach a log line: the access line carries no headers, and any serialized request has
 * `authorization` and `cookie` redacted.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { pino, type Logger, type LoggerOptions } from 'pino'
import pretty, { isColorSupported } from 'pino-pretty'
import { randomBytes } from 'node:crypto'

/** What a route learned about a request, for its access line. */
export interface AccessInfo {
  route: string
  repo?: string
  service?: string
  protocol?: string
  user?: string
  bytesIn: number
  bytesOut: number
  exitCode?: number | string | null
  pid?: number
  aborted?: boolean
  /** set when someone else wrote the answer (an hg child on a handed-over connection, the pack relay): whether it went out whole */
  completed?: boolean
  /** the connection was handed over to a child which answered on it: an hg serve child, or git's pack relay */
  handedOver?: boolean
  /** the access line waits for this: a relayed answer's outcome is known only once the relay reported */
  settled?: Promise<unknown>
  /** refused inside the protocol (HTTP 200 with git's ERR packet): why */
  refused?: string
  /** what the pack-objects cache did for this fetch: hit, miss, follow, off */
  packCache?: string
  /** the Git LFS object a transfer moved */
  oid?: string
  /** the Git LFS lock a locks request took, removed or was refused */
  lockId?: string
  /** a git process was started (or tried) for this request */
  spawned?: boolean
  /** reads the byte count of the request body lazily, at log time */
  countIn?: () => number
}

declare module 'fastify' {
  interface FastifyRequest {
    accessRecord: AccessInfo
  }
}

/** pino options shared by the server and the CLI. */
export function loggerOptions(level: string): LoggerOptions {
  return {
    level,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'req.headers["proxy-authorization"]', 'headers.authorization', 'authorization', 'password', 'token'],
      censor: '[redacted]',
    },
    serializers: {
      req: (req: { method?: string; url?: string; id?: string }) => ({ method: req.method, url: safeUrl(req.url), id: req.id }),
    },
  }
}

/**
 * The worker's logger: JSON lines for machines (files, journald, log shippers); on a terminal,
 * pino-pretty's readable lines (the same fields, redacted the same way before formatting).
 */
export function createLogger(level: string, tty = process.stdout.isTTY === true): Logger {
  if (!tty) return pino(loggerOptions(level))
  return pino(loggerOptions(level), pretty({ colorize: isColorSupported, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', sync: true }))
}

/** A request id: the process prefix keeps ids unique across a pool of workers. */
export function requestIdGenerator(): () => string {
  const prefix = randomBytes(3).toString('hex')
  let n = 0
  return () => `${prefix}-${(++n).toString(36)}`
}

/** Query parameters whose values are secrets wherever they appear (`?access_token=…`, `?password=…`). */
const SECRET_PARAM = /^(access_token|private_token|token|password|passwd|secret|api_key|apikey|auth|authorization|signature)$|token|password/i

/**
 * A request target as logs may show it: userinfo of an absolute-form target
 * (`GET http://user:pw@host/…`) and secret-named query values redacted, the whole bounded.
 */
export function safeUrl(url: string | undefined): string | undefined {
  if (!url) return url
  let out = url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, '$1[redacted]@')
  const q = out.indexOf('?')
  if (q >= 0) {
    const query = out.slice(q + 1).split('&').map((field) => {
      const eq = field.indexOf('=')
      if (eq < 0) return field
      let name = field.slice(0, eq)
      try { name = decodeURIComponent(name.replaceAll('+', ' ')) } catch { /* keep it as sent */ }
      return SECRET_PARAM.test(name) ? `${field.slice(0, eq)}=[redacted]` : field
    })
    out = `${out.slice(0, q)}?${query.join('&')}`
  }
  return out.length > 512 ? `${out.slice(0, 509)}...` : out
}

/** Which part of the worker a request's route belongs to (metrics label, log level). */
export type Backend = 'git' | 'hg' | 'health' | 'metrics' | 'other'

export function backendOf(route: string): Backend {
  if (route.startsWith('git_') || route.startsWith('lfs_')) return 'git' // LFS is a git repo's, served by servers-git
  if (route.startsWith('hg_')) return 'hg'
  if (route.startsWith('health_')) return 'health'
  if (route === 'metrics') return 'metrics'
  return 'other'
}

/** What one request came to: the access line's fields, and what metrics count. */
export interface AccessRecord {
  route: string
  repo?: string
  service?: string
  protocol?: string
  status: number
  bytesIn: number
  bytesOut: number
  durationMs: number
  /** time until the status line went out */
  ttfbMs?: number
  exitCode?: number | string | null
  pid?: number
  childSpawned: boolean
  hadCredentials: boolean
}

export interface AccessObserver {
  /** a request began; the returned function runs when its connection's response closed */
  started?: (req: FastifyRequest) => () => void
  /** every finished request's record */
  finished?: (record: AccessRecord) => void
}

/** Registers the per-request access record, its log line and its observer (metrics). */
export function installAccessLog(app: FastifyInstance, observer: AccessObserver = {}): void {
  app.decorateRequest('accessRecord', null as unknown as AccessInfo)
  app.addHook('onRequest', async (req: FastifyRequest, reply) => {
    req.accessRecord = { route: req.routeOptions.config?.routeId ?? 'other', bytesIn: 0, bytesOut: 0 }
    const started = process.hrtime.bigint()
    const res = reply.raw
    let ttfbMs: number | undefined
    // Every status line goes through writeHead (an implicit header too, via _implicitHeader).
    const writeHead = res.writeHead
    res.writeHead = function (this: typeof res, ...args: unknown[]) {
      ttfbMs ??= Number(process.hrtime.bigint() - started) / 1e6
      return (writeHead as (...a: unknown[]) => typeof res).apply(this, args)
    } as typeof res.writeHead
    const ended = observer.started?.(req)
    res.once('close', () => {
      // an answer someone else wrote (the pack relay) is judged a moment after the connection closes
      const settled = req.accessRecord.settled
      if (settled) void settled.then(record, record)
      else record()
    })
    function record(): void {
      ended?.()
      const a = req.accessRecord
      const record: AccessRecord = {
        route: a.route,
        repo: a.repo,
        service: a.service,
        protocol: a.protocol,
        status: res.statusCode,
        bytesIn: a.countIn ? a.countIn() : a.bytesIn,
        bytesOut: a.bytesOut || Number(res.getHeader('content-length') ?? 0), // streamed bodies are counted, others declared
        durationMs: Math.round((Number(process.hrtime.bigint() - started) / 1e6) * 10) / 10,
        ttfbMs,
        exitCode: a.exitCode,
        pid: a.pid,
        childSpawned: a.spawned ?? false,
        hadCredentials: req.headers.authorization !== undefined,
      }
      // balancers probe every second and Prometheus scrapes: their lines only at debug level
      const backend = backendOf(record.route)
      const level = backend === 'health' || backend === 'metrics' ? 'debug' : 'info'
      req.log[level]({
        method: req.method,
        url: safeUrl(req.originalUrl),
        route: record.route,
        repo: record.repo,
        service: record.service,
        protocol: record.protocol,
        user: a.user,
        status: record.status,
        bytes_in: record.bytesIn,
        bytes_out: record.bytesOut,
        exit_code: record.exitCode,
        child_pid: record.pid,
        aborted: (a.completed === undefined ? a.aborted || !res.writableFinished : !a.completed) || undefined,
        refused: a.refused,
        handed_over: a.handedOver,
        pack_cache: a.packCache,
        oid: a.oid,
        lock_id: a.lockId,
        duration_ms: record.durationMs,
      }, 'request')
      observer.finished?.(record)
    }
  })
}
