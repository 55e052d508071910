/**
 * An hg request as the worker judges it, and the request the child gets: rebuilt from what was
 * judged, never passed through. Mercurial and Node read the same bytes differently — hgweb
 * takes the *last* `cmd` of a query string, Python's http.server maps `X_HgArg_1` and
 * `X-HgArg-1` to one CGI variable (`HTTP_X_HGARG_1`), hg reads arguments from the query, from
 * `X-HgArg-N` headers and from the body (`X-HgArgs-Post`) — so anything that two parsers could
 * read two ways is refused with 400 before hg sees it: a repeated `cmd` or argument, a header
 * name with `_`, a repeated hg header, a gap in the `X-HgArg-N` sequence, `X-HgArgs-Post`
 * (httppostargs, which our children do not advertise), a body on a command that takes none.
 * What the child receives is the one command, the arguments the worker read (re-encoded), a
 * fixed allow-list of other headers, and the control headers, which only the worker sets.
 */
import { BadRequestError } from '../errors.js'
import type { WorkClass } from '../admission/admission.js'
import { commandAction, HG_COMMANDS, takesBody, type HgAction } from './commands.js'

/** Request headers a child may see besides the arguments and the worker's own (hgweb pages use the conditional ones). */
const PASSED = new Set(['accept', 'accept-language', 'user-agent', 'content-type', 'if-none-match', 'if-modified-since'])
/** Headers whose value hg reads in pieces: `<prefix>-1`, `<prefix>-2`, … until one is missing (wireprotoserver.decodevaluefromheaders). */
const SEQUENCE = /^(x-hgarg|x-hgproto)-([1-9][0-9]{0,3})$/
/** Headers that would change what hg reads and that no client of ours needs. */
const REFUSED: Record<string, string> = {
  'x-hgargs-post': 'hg arguments in the request body (X-HgArgs-Post) are not accepted here',
}
/** Longest value of one rebuilt X-HgArg header: well under Python's 64 KiB header line limit. */
const ARG_CHUNK = 16_000
const MAX_ARG_HEADERS = 1000
const PRINTABLE = /^[\x21-\x7e]*$/
const NULL_NODE = /^0{40}$/

/** One decoded `name=value` pair of an urlencoded string, as bytes (hg's arguments are bytes). */
export interface Pair { name: string; value: Buffer }

export interface HgRequest {
  /** the wire command (`?cmd=`), undefined for hgweb pages */
  cmd: string | undefined
  /** the command's arguments from every carrier, each name once */
  args: Map<string, Buffer>
  /** the path and query the child is sent: the path as given (the repo part is checked), the query rebuilt */
  target: string
  /** the request headers the child is sent, before the worker's control headers */
  headers: Record<string, string>
  /** what the request needs: `write` for a push, `pushkey` and unknown commands */
  action: HgAction
  /** the admission class of its work; undefined for light commands */
  workClass: WorkClass | undefined
  /** it carries a body (only `unbundle` may) */
  hasBody: boolean
}

/**
 * Parses `application/x-www-form-urlencoded` text as Python's `parse_qsl(keep_blank_values=True)`
 * does (Python 3.10+: `&` separates, `+` is a space, a bad `%` escape stays as it is), keeping
 * values as bytes. Only printable ASCII is accepted: hg decodes its arguments as ASCII.
 */
export function parseUrlencoded(text: string, what: string): Pair[] {
  if (!PRINTABLE.test(text)) throw new BadRequestError(`malformed hg request: ${what} has characters outside printable ASCII`)
  const pairs: Pair[] = []
  for (const field of text.split('&')) {
    if (field === '') continue
    const eq = field.indexOf('=')
    const name = decode(eq < 0 ? field : field.slice(0, eq)).toString('latin1')
    pairs.push({ name, value: decode(eq < 0 ? '' : field.slice(eq + 1)) })
  }
  return pairs
}

function decode(text: string): Buffer {
  const plus = text.replaceAll('+', ' ')
  const out: number[] = []
  for (let i = 0; i < plus.length; i++) {
    const c = plus.charCodeAt(i)
    if (c === 0x25 && /^[0-9A-Fa-f]{2}$/.test(plus.slice(i + 1, i + 3))) {
      out.push(parseInt(plus.slice(i + 1, i + 3), 16))
      i += 2
    } else out.push(c)
  }
  return Buffer.from(out)
}

/** Encodes bytes as Python's `quote_plus(safe='')` does: unreserved characters stay, space is `+`. */
export function encodeComponent(bytes: Buffer): string {
  let out = ''
  for (const b of bytes) {
    if ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x2d || b === 0x2e || b === 0x5f || b === 0x7e) out += String.fromCharCode(b)
    else if (b === 0x20) out += '+'
    else out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

function encodePairs(pairs: Pair[]): string {
  return pairs.map((p) => `${encodeComponent(Buffer.from(p.name, 'latin1'))}=${encodeComponent(p.value)}`).join('&')
}

/**
 * The headers of a request, each name once, lower-cased, from Node's raw list (Node joins
 * repeated headers, which hides a repetition). Throws 400 on a name with `_` or a repeated hg header.
 */
function uniqueHeaders(rawHeaders: string[]): Map<string, string> {
  const seen = new Map<string, string>()
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase()
    if (name.includes('_')) throw new BadRequestError(`malformed hg request: header names with "_" are not accepted (${name.slice(0, 40)})`)
    if (seen.has(name) && (PASSED.has(name) || name.startsWith('x-hg') || name === 'content-length')) {
      throw new BadRequestError(`malformed hg request: header ${name.slice(0, 40)} is repeated`)
    }
    seen.set(name, rawHeaders[i + 1]!)
  }
  return seen
}

/** The value hg reads from `<prefix>-1..N`, and the names that made it; 400 on a gap or an oversized set. */
function sequenceValue(headers: Map<string, string>, prefix: string): { value: string; names: Set<string> } {
  let value = ''
  const names = new Set<string>()
  for (let i = 1; ; i++) {
    const v = headers.get(`${prefix}-${i}`)
    if (v === undefined) break
    if (i > MAX_ARG_HEADERS) throw new BadRequestError(`malformed hg request: more than ${MAX_ARG_HEADERS} ${prefix} headers`)
    names.add(`${prefix}-${i}`)
    value += v
  }
  for (const name of headers.keys()) {
    const m = SEQUENCE.exec(name)
    if (m && m[1] === prefix && !names.has(name)) throw new BadRequestError(`malformed hg request: ${name} without the headers before it`)
  }
  return { value, names }
}

/**
 * Judges one hg request from its method, raw URL (`/repo/path?query`) and raw header list.
 * Throws BadRequestError (400) for anything hg could read otherwise than the worker did.
 */
export function judgeHgRequest(method: string, rawUrl: string, rawHeaders: string[]): HgRequest {
  const q = rawUrl.indexOf('?')
  const path = q < 0 ? rawUrl : rawUrl.slice(0, q)
  const query = parseUrlencoded(q < 0 ? '' : rawUrl.slice(q + 1), 'the query string')
  const headers = uniqueHeaders(rawHeaders)
  for (const [name, reason] of Object.entries(REFUSED)) if (headers.has(name)) throw new BadRequestError(reason)

  const cmds = query.filter((p) => p.name === 'cmd')
  if (cmds.length > 1) throw new BadRequestError('malformed hg request: cmd is given more than once')
  const cmd = cmds[0]?.value.toString('latin1')
  if (cmd !== undefined && !/^[A-Za-z0-9_]{1,64}$/.test(cmd)) throw new BadRequestError('malformed hg request: bad cmd')

  const forward: Record<string, string> = {}
  for (const [name, value] of headers) if (PASSED.has(name)) forward[name] = value
  const proto = sequenceValue(headers, 'x-hgproto')
  if (proto.value) {
    if (!/^[\x20-\x7e]{1,4096}$/.test(proto.value)) throw new BadRequestError('malformed hg request: bad X-HgProto value')
    forward['x-hgproto-1'] = proto.value
  }

  const args = new Map<string, Buffer>()
  const add = (pairs: Pair[]): void => {
    for (const p of pairs) {
      if (p.name === 'cmd') continue
      if (args.has(p.name)) throw new BadRequestError(`malformed hg request: argument ${oneName(p.name)} is given more than once`)
      args.set(p.name, p.value)
    }
  }
  add(query)
  const argText = sequenceValue(headers, 'x-hgarg').value
  const headerArgs = parseUrlencoded(argText, 'X-HgArg headers')
  if (cmd === undefined && headerArgs.length) throw new BadRequestError('malformed hg request: X-HgArg headers without a cmd')
  add(headerArgs)
  const rebuilt = encodePairs(headerArgs)
  for (let i = 0; i * ARG_CHUNK < rebuilt.length; i++) forward[`x-hgarg-${i + 1}`] = rebuilt.slice(i * ARG_CHUNK, (i + 1) * ARG_CHUNK)

  for (const name of headers.keys()) {
    if (name.startsWith('x-hg') && !SEQUENCE.test(name)) throw new BadRequestError(`malformed hg request: unknown hg header ${name.slice(0, 40)}`)
  }

  const hasBody = headers.has('transfer-encoding') || (headers.get('content-length') ?? '0').trim() !== '0'
  if (hasBody && !(takesBody(cmd) && method === 'POST')) {
    throw new BadRequestError(cmd === undefined ? 'hg pages take no request body' : `hg command ${cmd} takes no request body`)
  }

  const queryText = encodePairs(cmd === undefined ? boundedPage(query) : query)
  return {
    cmd,
    args,
    target: queryText ? `${path}?${queryText}` : path,
    headers: forward,
    action: actionOf(cmd, args),
    workClass: cmd === undefined ? pageClass(path) : workClassOf(cmd, args),
    hasBody,
  }
}

/** the most changesets one hgweb page may list (`revcount`: graph, log, shortlog, filelog); hgweb has no bound of its own */
export const MAX_PAGE_REVCOUNT = 256
/** the longest search an hgweb page may run (`rev`: a keyword or a revset) */
export const MAX_PAGE_QUERY = 256

/**
 * What an hgweb page may ask, bounded: `revcount` clamped to MAX_PAGE_REVCOUNT (the page's
 * "more" link keeps working, it lists no more than that), a search (`rev`) of at most
 * MAX_PAGE_QUERY bytes. One anonymous `graph?revcount=2500` cost hg 1.2 CPU-seconds.
 */
function boundedPage(query: Pair[]): Pair[] {
  return query.map((p) => {
    if (p.name === 'revcount') {
      const text = p.value.toString('latin1')
      if (!/^[0-9]{1,9}$/.test(text)) throw new BadRequestError('revcount must be a whole number')
      return { name: p.name, value: Buffer.from(String(Math.max(1, Math.min(MAX_PAGE_REVCOUNT, Number(text))))) }
    }
    if (p.name === 'rev' && p.value.length > MAX_PAGE_QUERY) throw new BadRequestError(`a search of at most ${MAX_PAGE_QUERY} characters`)
    return p
  })
}

/**
 * The admission class of an hgweb page: each costs hg a repo open and a template run, some far
 * more (a graph, an annotate or a diff of a large file): heavy work, admitted as an incremental
 * fetch (per client, so anonymous callers are bounded by address); an archive sends the whole
 * tree: a full clone. The page's static files (CSS, images) are light.
 */
function pageClass(path: string): WorkClass | undefined {
  if (/\/static\/[^/]+$/.test(path)) return undefined
  return /\/archive\//.test(path) ? 'full' : 'incremental'
}

function oneName(name: string): string {
  return JSON.stringify(name.slice(0, 40))
}

/**
 * The action a request needs: a command's own, and for `batch` the strongest of its
 * sub-commands (`cmds=heads ;known nodes=…;pushkey namespace=…`, hg's batch encoding escapes
 * `;` and `,` inside arguments).
 */
function actionOf(cmd: string | undefined, args: Map<string, Buffer>): HgAction {
  if (cmd === undefined) return 'read' // hgweb pages
  if (cmd !== 'batch') return commandAction(cmd)
  const list = args.get('cmds')?.toString('latin1') ?? ''
  for (const entry of list.split(';')) {
    const name = entry.trim().split(' ', 1)[0] ?? ''
    if (name !== '' && commandAction(name) === 'write') return 'write'
  }
  return 'read'
}

/**
 * The admission class of a bundle command, undefined for the light ones: a push (`unbundle`)
 * is incremental; `getbundle` with no common node but the null one, `stream_out`, and a
 * `changegroup` from the null root send the whole repository: a full clone.
 */
function workClassOf(cmd: string | undefined, args: Map<string, Buffer>): WorkClass | undefined {
  if (cmd === undefined || !Object.hasOwn(HG_COMMANDS, cmd) || !HG_COMMANDS[cmd]!.bundle) return undefined
  if (cmd === 'unbundle') return 'incremental'
  if (cmd === 'stream_out') return 'full'
  return nodeList(args, cmd === 'getbundle' ? 'common' : 'roots').every((n) => NULL_NODE.test(n)) ? 'full' : 'incremental'
}

/** A list argument of nodes (`heads`, `common`, `roots`): separated by spaces (or commas, in `roots`' pairs). */
function nodeList(args: Map<string, Buffer>, name: string): string[] {
  return (args.get(name)?.toString('latin1') ?? '').split(/[ ,]+/).filter(Boolean)
}

/** Commands whose answer is light and read-only: the worker may keep it (answer-cache.ts). */
const KEPT = new Set(['capabilities', 'heads', 'known', 'branchmap', 'listkeys', 'lookup'])
const NODE = /^[0-9a-f]{40}$/

/**
 * What decides the answer to `judged` besides the repo, when the worker may keep that answer;
 * undefined otherwise. Kept: a GET without a body of a light read command, a `batch` of only
 * those, or a `getbundle` with nothing to send (every head asked for is among the common nodes:
 * the pull after a clone bundle). The text is the rebuilt target and the headers hg reads
 * the answer from.
 */
export function keptAnswerRequest(method: string, judged: HgRequest): string | undefined {
  if (method !== 'GET' || judged.hasBody || judged.action !== 'read' || judged.cmd === undefined) return undefined
  const { cmd, args } = judged
  let kept = KEPT.has(cmd)
  if (cmd === 'batch') {
    const names = (args.get('cmds')?.toString('latin1') ?? '').split(';').map((e) => e.trim().split(' ', 1)[0] ?? '')
    kept = names.length > 0 && names.every((n) => KEPT.has(n))
  } else if (cmd === 'getbundle') {
    const heads = nodeList(args, 'heads')
    const common = new Set(nodeList(args, 'common'))
    kept = heads.length > 0 && heads.every((h) => NODE.test(h) && common.has(h))
  }
  if (!kept) return undefined
  // the arguments always; the rest only where hg reads it: a bundle's compression is
  // negotiated from X-HgProto-1 (and Accept), the other commands answer plain bytes to anyone
  const decides = (name: string) => name.startsWith('x-hgarg-') || (cmd === 'getbundle' && name !== 'user-agent')
  const headers = Object.entries(judged.headers).filter(([k]) => decides(k)).sort(([a], [b]) => (a < b ? -1 : 1))
  return JSON.stringify([judged.target, headers])
}
