/**
 * Read or write, the way Mercurial decides it: each wire command has a permission
 * (mercurial/wireprotov1server.py registers `unbundle` and `pushkey` with 'push', the rest with
 * 'pull'), and a command Mercurial does not know needs 'push' — its own default for commands
 * registered without one. `batch` is judged by each of its sub-commands (request.ts).
 */

export type HgAction = 'read' | 'write'

/** Wire-protocol v1 commands that only read (Mercurial 6.x). */
const READ_COMMANDS = new Set([
  'between', 'branchmap', 'branches', 'capabilities', 'changegroup', 'changegroupsubset',
  'clonebundles', 'clonebundles_manifest', 'debugwireargs', 'getbundle', 'heads', 'hello',
  'known', 'listkeys', 'lookup', 'protocaps', 'stream_out', 'filelog',
])
const WRITE_COMMANDS = new Set(['unbundle', 'pushkey'])

/** Classifies one command name. */
export function commandAction(cmd: string): HgAction {
  if (READ_COMMANDS.has(cmd)) return 'read'
  if (WRITE_COMMANDS.has(cmd)) return 'write'
  return 'write' // unknown: fail closed, as Mercurial does
}
