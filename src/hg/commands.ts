/**
 * Read or write, the way Mercurial decides it: each wire command has a permission
 * (mercurial/wireprotov1server.py registers `unbundle` and `pushkey` with 'push', the rest with
 * 'pull'), and a command Mercurial does not know needs 'push' — its own default for commands
 * registered without one. `batch` is judged by each of its sub-commands.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { WorkClass } from '../admission.js'

export type HgAction = 'read' | 'write'

/** Wire-protocol v1 commands that only read (Mercurial 6.x). */
const READ_COMMANDS = new Set([
  'between', 'branchmap', 'branches', 'capabilities', 'changegroup', 'changegroupsubset',
  'clonebundles', 'clonebundles_manifest', 'debugwireargs', 'getbundle', 'heads', 'hello',
  'known', 'listkeys', 'lookup', 'protocaps', 'stream_out', 'filelog',
])
const WRITE_COMMANDS = new Set(['unbundle', 'pushkey'])
const MAX_ARG_HEADERS = 1000

/** Classifies one command name. */
export function commandAction(cmd: string): HgAction {
  if (READ_COMMANDS.has(cmd)) return 'read'
  if (WRITE_COMMANDS.has(cmd)) return 'write'
  return 'write' // unknown: fail closed, as Mercurial does
}

/** The arguments a client sent in `X-HgArg-1..N` headers, joined and decoded; undefined if malformed. */
export function headerArgs(headers: IncomingHttpHeaders): URLSearchParams | undefined {
  let joined = ''
  for (let i = 1; ; i++) {
    const v = headers[`x-hgarg-${i}`]
    if (v === undefined) break
    if (typeof v !== 'string' || i > MAX_ARG_HEADERS) return undefined
    joined += v
  }
  return new URLSearchParams(joined)
}

/**
 * The action a whole hg request needs. `batch` takes the strongest action of its commands
 * (`cmds=heads ;known nodes=...;pushkey namespace=...`), wherever its arguments are; arguments
 * in the body (`X-HgArgs-Post`) are not read here, so such a batch counts as a write: the
 * children do not advertise httppostargs, so no real client sends one.
 */
export function requestAction(query: URLSearchParams, headers: IncomingHttpHeaders): HgAction {
  const cmd = query.get('cmd')
  if (cmd === null) return 'read' // hgweb pages
  if (cmd !== 'batch') return commandAction(cmd)
  if (headers['x-hgargs-post'] !== undefined) return 'write'
  const fromHeaders = headerArgs(headers)
  if (!fromHeaders) return 'write'
  const cmds = [query.get('cmds'), fromHeaders.get('cmds')].filter((c): c is string => c !== null)
  if (!cmds.length) return 'read'
  for (const list of cmds) {
    for (const entry of list.split(';')) {
      const name = entry.trim().split(' ', 1)[0] ?? ''
      if (commandAction(name) === 'write') return 'write'
    }
  }
  return 'read'
}

const NULL_NODE = /^0{40}$/
/**
 * The admission class of a bundle command, undefined for the light ones: a push (`unbundle`)
 * is incremental; `getbundle` with no common node but the null one, `stream_out`, and a
 * `changegroup` from the null root send the whole repository: a full clone.
 */
export function hgWorkClass(query: URLSearchParams, headers: IncomingHttpHeaders): WorkClass | undefined {
  const cmd = query.get('cmd')
  if (cmd === 'unbundle') return 'incremental'
  if (cmd === 'stream_out') return 'full'
  if (cmd !== 'getbundle' && cmd !== 'changegroup' && cmd !== 'changegroupsubset') return undefined
  const args = headerArgs(headers) ?? new URLSearchParams()
  const arg = (name: string): string => args.get(name) ?? query.get(name) ?? ''
  const nodes = (cmd === 'getbundle' ? arg('common') : arg('roots')).split(/[ ,]+/).filter(Boolean)
  return nodes.every((n) => NULL_NODE.test(n)) ? 'full' : 'incremental'
}
