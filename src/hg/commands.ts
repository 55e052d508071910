/**
 * The one table of hg wire-protocol commands (Mercurial 6.x, wireprotov1server.py): what each
 * needs, which carries a body, and which costs a bundle. The judging of requests (request.ts),
 * the metrics' service label and the HAProxy ACL that sends `?cmd=` requests to servers-hg
 * (tools/pool) all read it.
 *
 * Read or write, the way Mercurial decides it: `unbundle` and `pushkey` are registered with
 * 'push', the rest with 'pull'; a command Mercurial does not know needs 'push', its own default
 * for commands registered without one. `batch` is judged by each of its sub-commands.
 */

export type HgAction = 'read' | 'write'

interface HgCommand {
  /** the permission it needs; `batch`: the strongest of its sub-commands' */
  action: HgAction | 'batch'
  /** what it sends back: a bundle of changes (admission), or light answers */
  bundle?: true
  /** it takes a request body (only a push's bundle) */
  body?: true
}

export const HG_COMMANDS: Readonly<Record<string, HgCommand>> = {
  batch: { action: 'batch' },
  between: { action: 'read' },
  branchmap: { action: 'read' },
  branches: { action: 'read' },
  capabilities: { action: 'read' },
  changegroup: { action: 'read', bundle: true },
  changegroupsubset: { action: 'read', bundle: true },
  clonebundles: { action: 'read' },
  clonebundles_manifest: { action: 'read' },
  debugwireargs: { action: 'read' },
  filelog: { action: 'read' },
  getbundle: { action: 'read', bundle: true },
  heads: { action: 'read' },
  hello: { action: 'read' },
  known: { action: 'read' },
  listkeys: { action: 'read' },
  lookup: { action: 'read' },
  protocaps: { action: 'read' },
  pushkey: { action: 'write' },
  stream_out: { action: 'read', bundle: true },
  unbundle: { action: 'write', bundle: true, body: true },
}

/** Every command name the table knows. */
export const HG_COMMAND_NAMES: readonly string[] = Object.keys(HG_COMMANDS)

/** The action one command (not `batch`) needs; an unknown one needs write (fail closed, as Mercurial does). */
export function commandAction(cmd: string): HgAction {
  const action = Object.hasOwn(HG_COMMANDS, cmd) ? HG_COMMANDS[cmd]!.action : 'write'
  return action === 'batch' ? 'write' : action
}

/** True for the one command that takes a request body. */
export function takesBody(cmd: string | undefined): boolean {
  return cmd !== undefined && Object.hasOwn(HG_COMMANDS, cmd) && HG_COMMANDS[cmd]!.body === true
}

/** The metrics label of a command: its name when the table knows it, `hgweb` for pages, `clonebundle` for a clone bundle's download, else `other`. */
export function commandLabel(service: string): string {
  return service === 'hgweb' || service === 'clonebundle' || Object.hasOwn(HG_COMMANDS, service) ? service : 'other'
}
