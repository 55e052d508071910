/**
 * pino options and the access log. One line per request with DESIGN.md's fields, written when
 * the connection's response closes, so a clone the client abandoned is logged too. Credentials
 * never reach a log line: the access line carries no headers, and any serialized request has
 * `authorization` and `cookie` redacted.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { LoggerOptions } from 'pino'
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
  /** reads the byte count of the request body lazily, at log time */
  countIn?: () => number
}

declare module 'fastify' {
  interface FastifyRequest {
    access: AccessInfo
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
      req: (req: { method?: string; url?: string; id?: string }) => ({ method: req.method, url: stripQuery(req.url), id: req.id }),
    },
  }
}

/** A request id: the process prefix keeps ids unique across a pool of workers. */
export function requestIdGenerator(): () => string {
  const prefix = randomBytes(3).toString('hex')
  let n = 0
  return () => `${prefix}-${(++n).toString(36)}`
}

/** URLs may carry hg arguments but never credentials; logs keep the path and a bounded query. */
function stripQuery(url: string | undefined): string | undefined {
  if (!url) return url
  return url.length > 512 ? `${url.slice(0, 509)}...` : url
}

/** Registers the per-request access record and its log line. */
export function installAccessLog(app: FastifyInstance): void {
  app.decorateRequest('access', null as unknown as AccessInfo)
  app.addHook('onRequest', async (req: FastifyRequest, reply) => {
    req.access = { route: 'other', bytesIn: 0, bytesOut: 0 }
    const started = process.hrtime.bigint()
    reply.raw.once('close', () => {
      const a = req.access
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6
      req.log.info({
        method: req.method,
        url: stripQuery(req.url),
        route: a.route,
        repo: a.repo,
        service: a.service,
        protocol: a.protocol,
        user: a.user,
        status: reply.raw.statusCode,
        bytes_in: a.countIn ? a.countIn() : a.bytesIn,
        bytes_out: a.bytesOut || Number(reply.raw.getHeader('content-length') ?? 0), // streamed bodies are counted, others declared
        exit_code: a.exitCode,
        child_pid: a.pid,
        aborted: a.aborted || !reply.raw.writableFinished || undefined,
        duration_ms: Math.round(durationMs * 10) / 10,
      }, 'request')
    })
  })
}
