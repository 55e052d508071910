/**
 * pino options and the access log. One line per request with the fields docs/design.md names, written when
 * the connection's response closes, so a clone the client abandoned is logged too. Credentials
 * never reach a log line: the access line carries no headers, and any serialized request has
 * `authorization` and `cookie` redacted.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { pino, type Logger, type LoggerOptions } from 'pino'
import { randomBytes } from 'node:crypto'
import { writeSync } from 'node:fs'
import { Writable } from 'node:stream'

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
  /** writes the access line now (once): for an answer whose connection the worker no longer holds (http/deliver.ts) */
  finish?: () => void
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
  /** a login that failed: the user name tried (none for a Bearer token) and why */
  login?: { user?: string; reason: string }
  /** a push's ref updates as the client sent them, with git's verdict on each (`ok`, or the reason it was refused) */
  refs?: RefOutcome[]
  /** receive-pack's unpack status when it was not `ok` (a pack fsck refused) */
  unpack?: string
  /** the push event this push's committed refs were journaled as (docs/events.md) */
  event?: string
  /** reads the byte count of the request body lazily, at log time */
  countIn?: () => number
}

/** One ref of a push in the access log. */
export interface RefOutcome {
  ref: string
  old: string
  new: string
  /** `ok`, or why it was refused (protection, a lock, fsck, a hook) */
  result?: string
}

/** refs of one push written in its access line, at most; the line says how many more */
const MAX_LOGGED_REFS = 100

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
 * one short line per entry (terminalLine), made from the same entry after redaction.
 */
export function createLogger(level: string, tty = process.stdout.isTTY === true): Logger {
  if (!tty) return pino(loggerOptions(level))
  const color = process.stdout.hasColors?.() === true
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const text of chunk.toString().split('\n')) {
        if (!text) continue
        const line = terminalLine(JSON.parse(text) as Record<string, unknown>, color)
        if (line !== undefined) writeSync(1, `${line}\n`)
      }
      cb()
    },
  })
  return pino(loggerOptions(level), out)
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
/** what a terminal line leaves out: pino's own fields, and those the line already shows */
const QUIET_KEYS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'req_id', 'reqId'])

/**
 * One log entry as a person reads it at a terminal, or undefined for entries the terminal
 * skips: a request is one line (time, status, method, repo or path, user, bytes, ms, and why it
 * was refused or cut), the start-up is the worker's own "listening" line on stdout, and the
 * details a request's handlers logged at info level are in the JSON log only.
 */
export function terminalLine(e: Record<string, unknown>, color = false): string | undefined {
  const level = Number(e.level)
  const msg = String(e.msg ?? '')
  const time = new Date(Number(e.time)).toTimeString().slice(0, 8)
  if (level <= 30 && (msg === 'vcs-worker listening' || msg.startsWith('Server listening at'))) return undefined
  if (msg === 'request') {
    const status = Number(e.status)
    const parts = [time, String(status), String(e.method), String(e.repo ? `${e.repo} ${e.service ?? ''}`.trim() : e.url),
      String(e.user ?? '-'), `${bytes(Number(e.bytes_in))} in`, `${bytes(Number(e.bytes_out))} out`, `${e.duration_ms} ms`]
    if (e.refused) parts.push(`refused: ${String(e.refused)}`)
    if (e.aborted) parts.push('aborted')
    const line = parts.join('  ')
    return color && status >= 500 ? `\x1b[31m${line}\x1b[39m` : color && status >= 400 ? `\x1b[33m${line}\x1b[39m` : line
  }
  if (level <= 30 && e.req_id !== undefined) return undefined // a request's own detail: its access line says what came of it
  const fields = Object.entries(e).filter(([k, v]) => !QUIET_KEYS.has(k) && v !== undefined).map(([k, v]) => {
    const value = k === 'err' && v && typeof v === 'object' ? (v as { message?: string }).message : v
    return `${k}=${typeof value === 'string' ? (/\s/.test(value) ? JSON.stringify(value) : value) : JSON.stringify(value)}`
  })
  const name = LEVEL_NAMES[level] ?? String(level)
  const shown = color && level >= 40 ? `\x1b[${level >= 50 ? 31 : 33}m${name}\x1b[39m` : name
  return [time, shown, msg, ...fields].join(' ').slice(0, 2000)
}

function bytes(n: number): string {
  if (!Number.isFinite(n)) return '0 B'
  if (n < 1024) return `${n} B`
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  return `${(n / 1024 ** 3).toFixed(2)} GiB`
}

/** A request id: the process prefix keeps ids unique across a pool of workers. */
export function requestIdGenerator(): () => string {
  const prefix = randomBytes(3).toString('hex')
  let n = 0
  return () => `${prefix}-${(++n).toString(36)}`
}

/** A User-Agent as logs may show it: printable ASCII, at most 200 characters. */
function userAgent(value: string | undefined): string | undefined {
  return value === undefined ? undefined : value.replace(/[^\x20-\x7e]/g, '?').slice(0, 200)
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
    let declared: number | undefined
    res.writeHead = function (this: typeof res, ...args: unknown[]) {
      ttfbMs ??= Number(process.hrtime.bigint() - started) / 1e6
      // fastify hands its headers to writeHead itself: getHeader() never sees their length
      const headers = args.find((a) => a !== null && typeof a === 'object') as Record<string, unknown> | undefined
      const length = headers?.['content-length'] ?? headers?.['Content-Length']
      if (length !== undefined) declared = Number(length)
      return (writeHead as (...a: unknown[]) => typeof res).apply(this, args)
    } as typeof res.writeHead
    const ended = observer.started?.(req)
    res.once('close', () => {
      // an answer someone else wrote (the pack relay) is judged a moment after the connection closes
      const settled = req.accessRecord.settled
      if (settled) void settled.then(record, record)
      else record()
    })
    let recorded = false
    req.accessRecord.finish = record
    function record(): void {
      if (recorded) return
      recorded = true
      ended?.()
      const a = req.accessRecord
      const record: AccessRecord = {
        route: a.route,
        repo: a.repo,
        service: a.service,
        protocol: a.protocol,
        status: res.statusCode,
        bytesIn: a.countIn ? a.countIn() : a.bytesIn,
        bytesOut: a.bytesOut || (declared ?? Number(res.getHeader('content-length') ?? 0)), // streamed bodies are counted, others declared
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
        client: req.ip,
        user_agent: userAgent(req.headers['user-agent']),
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
        login_user: a.login?.user,
        login_failure: a.login?.reason,
        refs: a.refs?.slice(0, MAX_LOGGED_REFS),
        event: a.event,
        refs_more: a.refs && a.refs.length > MAX_LOGGED_REFS ? a.refs.length - MAX_LOGGED_REFS : undefined,
        unpack: a.unpack,
        duration_ms: record.durationMs,
      }, 'request')
      observer.finished?.(record)
    }
  })
}
