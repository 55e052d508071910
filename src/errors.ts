/**
 * Error classes with stable codes, and the one handler that maps them to HTTP.
 * Every body is one line of plain text: git prints a `text/plain` error body to its user as
 * `remote:` lines, hg prints the reason, so the line must make sense in a terminal.
 */
import type { Socket } from 'node:net'
import createError from '@fastify/error'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { settleUnreadBody } from './http/unread-body.js'

/**
 * The family every refusal of ours belongs to (built with @fastify/error's createError): a
 * stable `code` to branch on, an HTTP `statusCode`, a client-safe one-line message, and the
 * `headers` the answer carries (Retry-After, WWW-Authenticate, Allow).
 */
export abstract class VcsError extends Error {
  declare readonly code: string
  declare readonly statusCode: number
  declare headers?: Record<string, string>
}

type Cause = { cause: unknown }
/** A member of the family whose message is the one argument it is made with. */
const member = (code: string, statusCode: number) =>
  createError<[string, Cause?]>(code, '%s', statusCode, VcsError as unknown as ErrorConstructor) as unknown as new (message: string, cause?: Cause) => VcsError
/** A member that also sends `headers`. */
function withHeaders<T extends VcsError>(err: T, headers: Record<string, string>): T {
  err.headers = headers
  return err
}

export const BadRequestError = member('VCS_BAD_REQUEST', 400)
export const ForbiddenError = member('VCS_FORBIDDEN', 403)
export const UnsupportedMediaTypeError = member('VCS_UNSUPPORTED_MEDIA_TYPE', 415)
/** A git or hg process failed before it produced any output. */
export const ChildFailedError = member('VCS_CHILD_FAILED', 500)
/** An hg serve child broke (502) or never answered (504). */
export const HgUpstreamError = member('VCS_HG_UPSTREAM', 502)
export const HgTimeoutError = member('VCS_HG_TIMEOUT', 504)
/** The client closed its connection while its request waited for a slot: nobody to answer (nginx's 499). */
export const ClientGoneError = member('VCS_CLIENT_GONE', 499)

const Unauthorized = member('VCS_UNAUTHORIZED', 401)
const RepoNotFound = member('VCS_REPO_NOT_FOUND', 404)
const MethodNotAllowed = member('VCS_METHOD_NOT_ALLOWED', 405)
const PayloadTooLarge = member('VCS_PAYLOAD_TOO_LARGE', 413)
const Throttled = member('VCS_THROTTLED', 429)
const ServiceUnavailable = member('VCS_UNAVAILABLE', 503)

export class UnauthorizedError extends Unauthorized {
  constructor(message: string, realm: string) {
    super(message)
    withHeaders(this, { 'www-authenticate': `Basic realm="${realm}", charset="UTF-8"` })
  }
}
export class RepoNotFoundError extends RepoNotFound {
  constructor() { super('repository not found') }
}
/** A git client at an hg repo or the reverse, that may read it: 404 with what to run instead (the reason phrase too: hg prints only that). */
export const WrongKindError = member('VCS_WRONG_KIND', 404)
export class MethodNotAllowedError extends MethodNotAllowed {
  constructor(allow: string[]) {
    super(`method not allowed; use ${allow.join(' or ')}`)
    withHeaders(this, { allow: allow.join(', ') })
  }
}
export class PayloadTooLargeError extends PayloadTooLarge {
  constructor(limit: number) { super(`request body is larger than this server accepts (${limit} bytes)`) }
}
export class ThrottledError extends Throttled {
  constructor(retryAfterSeconds: number) {
    super('too many failed logins; try again later')
    withHeaders(this, { 'retry-after': String(retryAfterSeconds) })
  }
}
export class ServiceUnavailableError extends ServiceUnavailable {
  constructor(message: string, retryAfterSeconds = 5) {
    super(message)
    withHeaders(this, { 'retry-after': String(retryAfterSeconds) })
  }
}
/** Invalid configuration or command line: the CLI prints every problem and exits 2. */
export class ConfigError extends Error {
  readonly code = 'VCS_BAD_CONFIG'
  constructor(readonly problems: string[]) {
    super(problems.join('\n'))
    this.name = 'ConfigError'
  }
}

/** Keeps a message to one printable line. */
export function oneLine(text: string, max = 300): string {
  const line = text.replace(/[\r\n\t]+/g, ' ').replace(/[^\x20-\x7e]/g, '?').trim()
  return line.length > max ? `${line.slice(0, max - 3)}...` : line
}

/** Sends an error as one line of text; only for use before any byte of the body went out. */
/**
 * A Git LFS refusal (git-lfs docs/api/batch.md, "Response Errors"): `{"message": ...}` as
 * application/vnd.git-lfs+json; a 401's challenge is also sent as LFS-Authenticate.
 */
function sendLfsError(reply: FastifyReply, status: number, message: string, headers: Record<string, string> = {}): FastifyReply {
  const extra = headers['www-authenticate'] ? { 'lfs-authenticate': headers['www-authenticate'] } : {}
  return reply.code(status).headers({ ...headers, ...extra }).type('application/vnd.git-lfs+json').send(JSON.stringify({ message: oneLine(message) }))
}

/** A Git LFS refusal: rendered as the API's JSON error with this status (sendLfsError). */
export class LfsError extends Error {
  constructor(readonly statusCode: number, message: string) {
    super(message)
    this.name = 'LfsError'
  }
}

export function sendError(reply: FastifyReply, status: number, message: string, headers: Record<string, string> = {}): FastifyReply {
  // hg shows only the reason phrase ("abort: HTTP Error 403: <phrase>"), so it carries the line too.
  reply.raw.statusMessage = oneLine(message, 200)
  return reply.code(status).headers(headers).type('text/plain; charset=utf-8').send(`${oneLine(message)}\n`)
}

/** Installs the error and not-found handlers: the whole status table (README, docs/design.md) lives here. */
export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | VcsError, req: FastifyRequest, reply: FastifyReply) => {
    if (reply.sent || reply.raw.headersSent) {
      // Headers are out: the status can't change any more. The caller already reported in-band.
      req.log.warn({ err }, 'error after response started')
      reply.raw.destroy()
      return
    }
    settleUnreadBody(req, reply, req.routeOptions.config?.discardLimit)
    // Git LFS speaks JSON: every refusal on its routes is the API's error object
    const send = req.routeOptions.config?.routeId?.startsWith('lfs_') ? sendLfsError : sendError
    if (err instanceof LfsError) {
      req.log.info({ status: err.statusCode }, err.message)
      return send(reply, err.statusCode, err.message)
    }
    if (err instanceof VcsError) {
      const level = err.statusCode >= 500 ? 'error' : 'info'
      req.log[level]({ code: err.code, status: err.statusCode, err: err.statusCode >= 500 ? err : undefined }, err.message)
      return send(reply, err.statusCode, err.message, err.headers ?? {})
    }
    const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500
    if (status >= 500) {
      req.log.error({ err }, 'unhandled error')
      return send(reply, status, 'internal server error')
    }
    req.log.info({ code: err.code, status }, err.message)
    return send(reply, status, err.message)
  })
  app.setNotFoundHandler((req, reply) => {
    settleUnreadBody(req, reply)
    return sendError(reply, 404, 'not found')
  })
}

/**
 * Node's parser refused the request before Fastify saw it (a malformed request line or header,
 * headers over maxHeaderSize, a timeout): one line of text, as for every other refusal, never
 * Fastify's default JSON. Fastify's `clientErrorHandler` option.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException & { bytesParsed?: number }, socket: Socket): void {
  const [status, reason, text] =
    err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large', 'request headers are larger than this server accepts']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout', 'request headers not received in time']
    : [400, 'Bad Request', 'malformed HTTP request']
  if (socket.writable && err.code !== 'ECONNRESET') {
    const body = `${text}\n`
    socket.write(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}

/** Errors Fastify raises before routing (a URL that does not decode): one line of text. Fastify's `frameworkErrors` option. */
export function frameworkErrors(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  req.log.info({ code: err.code }, 'malformed request')
  void sendError(reply, 400, err.code === 'FST_ERR_BAD_URL' ? 'malformed URL: bad percent-encoding' : 'malformed request')
}
