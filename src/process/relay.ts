/**
 * The relay (src/git/pack-relay.c, built into dist/bin): an answer's body goes to the client's
 * socket without crossing the worker's event loop. Two uses: a fetch's answer from git (the pack
 * relay, src/git/relay.ts) and a file (a Git LFS object, a clone bundle: send-file.ts, with
 * sendfile(2)). The worker authenticates, authorizes, admits and judges the request as for any
 * other, then starts the relay with the client's connection as its stdout (through the spawn
 * helper: the connection's handle passed over the IPC channel, the worker keeping its own copy).
 * The relay writes the status line and headers the worker gives it, then the body, and reports
 * on its fd 3. What the worker gives up: keep-alive on that connection (`Connection: close`).
 */
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Child, ExitStatus } from './child.js'
import { bareHandle } from './node-internals.js'

/** The relay binary, built by `npm run build` (scripts/build-native.sh). */
export const PACK_RELAY = fileURLToPath(new URL('../../bin/pack-relay', import.meta.url))

/**
 * How long a relay may run on after its connection closed. The connection closing is no sign
 * the client left early: the relay ends it itself after a whole answer, and a client may hang up
 * once it has what it asked for, both while the relay (and git) are still exiting. A relay whose
 * client did leave sees it at its next write; one still running after the grace (git thinking,
 * with nothing to write) is ended then.
 */
export const RELAY_CLOSE_GRACE_MS = 1000

/** What the relay tells once done (pack-relay.c). */
export interface RelayReport {
  /** bytes written after the head */
  sent: number
  /** the head went out: the connection carries this answer */
  head: boolean
  /** the answer stopped between two packets (an error packet can follow) */
  boundary: boolean
  sideband: boolean
  /** ended for no progress either way for the idle timeout */
  idle: boolean
  /** the client went away */
  gone: boolean
  /** why git (or the file) could not be opened (its errno), 0 when it was */
  execErrno: number
  /** the answer was whole: the relay ended the connection itself */
  closed: boolean
  /** ended for taking the file slower than the minimum rate */
  slow: boolean
}

/**
 * The relay's protocol, as pack-relay.c speaks it: its report line (`v=` and the keys below) and,
 * in `--wait` mode, its `{"took":true,"v":...}` on the IPC channel (relay-spare.ts). A relay of
 * another build is refused: its report reads as none, a spare of it is never used.
 */
export const RELAY_PROTOCOL = 1
/** the report's keys (pack-relay.c) */
const REPORT_KEYS = ['v', 'sent', 'head', 'boundary', 'sideband', 'idle', 'gone', 'exec', 'closed', 'slow'] as const

/** The relay's report line (`key=value` pairs in any order), or undefined when there is none (the relay was killed, or crashed) or it is of another version. */
export function parseReport(text: string): RelayReport | undefined {
  if (!text.endsWith('\n')) return undefined
  const fields = new Map<string, number>()
  for (const pair of text.trim().split(' ')) {
    const m = /^([a-z]+)=(\d{1,15})$/.exec(pair)
    if (!m || fields.has(m[1]!)) return undefined
    fields.set(m[1]!, Number(m[2]))
  }
  if (!REPORT_KEYS.every((k) => fields.has(k)) || fields.get('v') !== RELAY_PROTOCOL) return undefined
  const flag = (k: string) => fields.get(k) === 1
  return { sent: fields.get('sent')!, head: flag('head'), boundary: flag('boundary'), sideband: flag('sideband'), idle: flag('idle'), gone: flag('gone'), execErrno: fields.get('exec')!, closed: flag('closed'), slow: flag('slow') }
}

/**
 * The status line and headers the relay writes: the reply's own, and `Connection: close`, since
 * the connection ends after the answer. A body of unknown length (git's) goes without a
 * Content-Length and ends with the connection; a file's keeps the one the reply has (`length`).
 * Undefined when a header cannot be passed as it is (a line break in a value): the answer then
 * goes through the worker as usual.
 */
export function relayHead(reply: FastifyReply, opts: { length?: boolean } = {}): string | undefined {
  const code = reply.statusCode
  let head = `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Unknown'}\r\nDate: ${new Date().toUTCString()}\r\n`
  const skip = opts.length ? /^(connection|transfer-encoding|date)$/i : /^(connection|content-length|transfer-encoding|date)$/i
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value === undefined || skip.test(name)) continue
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      if (/[\r\n\0]/.test(name) || /[\r\n\0]/.test(v)) return undefined
      head += `${name}: ${v}\r\n`
    }
  }
  return `${head}Connection: close\r\n\r\n`
}

/**
 * The client's connection, when the relay can write to it: plain TCP (TLS is encrypted by this
 * process, so it must stay in the byte path) with nothing of ours still queued on it.
 */
export function relayableSocket(req: FastifyRequest): Socket | undefined {
  const socket = req.raw.socket
  if ((socket as { encrypted?: boolean }).encrypted || socket.destroyed || !socket.writable || socket.writableLength > 0) return undefined
  if (!bareHandle(socket)) return undefined
  return socket
}

/** Waits for a relay to end: its exit status and its report (undefined when it made none). */
export async function relayOutcome(child: Child): Promise<{ status: ExitStatus; report: RelayReport | undefined }> {
  let text = ''
  child.report?.setEncoding('latin1').on('data', (s: string) => { if (text.length < 256) text += s })
  const status = await child.exited
  return { status, report: parseReport(text) }
}
