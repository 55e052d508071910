/**
 * The commands as `--help` shows them: one table, from which the whole usage, a command's own
 * help (`vcs-worker user --help`), the list of a command's subcommands and the nearest-command
 * suggestion are all made.
 */
import { nearest } from '../config/nearest.js'
import { flagOf, kindOf, SETTING_KEYS, settingSchema } from '../config/schema.js'

interface CommandLine {
  /** the command words, e.g. `user add` */
  words: string
  /** what follows them */
  args: string
  note?: string
}

export const COMMANDS: CommandLine[] = [
  { words: 'serve', args: '[--config FILE] [--host H] [--port N] [--repos DIR] [--data DIR] [...]', note: 'every setting: vcs-worker serve --help' },
  { words: 'repo create', args: 'PATH --git|--hg [--public] [--default-branch NAME]' },
  { words: 'repo visibility', args: 'PATH public|private' },
  { words: 'repo default-branch', args: 'PATH BRANCH', note: 'git: the branch HEAD names' },
  { words: 'repo rename', args: 'PATH NEW-PATH', note: 'grants, protections and LFS locks move with it' },
  { words: 'repo delete', args: 'PATH --yes', note: 'with its grants, protections and LFS locks; at a terminal, type the name instead of --yes' },
  { words: 'repo list', args: '[--json]' },
  { words: 'user add', args: 'NAME', note: 'password at the prompt, or one line on standard input' },
  { words: 'user passwd', args: 'NAME', note: 'the same' },
  { words: 'user rename', args: 'NAME NEW-NAME' },
  { words: 'user remove', args: 'NAME', note: 'with the user\'s tokens and grants' },
  { words: 'user unlock', args: 'NAME | --address ADDR', note: 'clears a login lockout on every worker' },
  { words: 'user list', args: '[--json]' },
  { words: 'token create', args: 'NAME [--expires 30d|12h|2027-01-31]', note: 'prints the token once' },
  { words: 'token revoke', args: 'NAME ID' },
  { words: 'token list', args: 'NAME [--json]', note: 'id, created, expires, last used, state; never the secret' },
  { words: 'grant', args: 'NAME PATH read|write|admin' },
  { words: 'grant list', args: '[--user NAME | --repo PATH] [--json]' },
  { words: 'revoke', args: 'NAME PATH' },
  { words: 'protect', args: 'PATH REF-PATTERN [--users a,b]', note: 'no force-push or delete; writable only by --users when given' },
  { words: 'protect list', args: '[PATH] [--json]' },
  { words: 'unprotect', args: 'PATH REF-PATTERN' },
  { words: 'haproxy-config', args: '[--pool FILE.json] [--workers N]', note: 'the default pool of `npm run pool` without --pool' },
  { words: 'store copy', args: '--from FILE|URL --to URL|FILE', note: 'a whole store into an empty one: SQLite or PostgreSQL either way; an online backup' },
  { words: 'lfs fsck', args: 'PATH', note: 're-hash a repo\'s Git LFS objects; names bad ones, deletes nothing' },
]

const line = (c: CommandLine): string => {
  const text = `  vcs-worker ${c.words} ${c.args}`
  return c.note ? `${text.padEnd(58)} (${c.note})` : text
}

const FOOTER = `every command takes --data DIR, --repos DIR, --config FILE and --auth-store sqlite|postgres://...
(default: the data dir of this install); --version; COMMAND --help for one command`

/** The whole usage (`vcs-worker --help`). */
export function usage(): string {
  return `usage:\n${COMMANDS.map(line).join('\n')}\n${FOOTER}`
}

/** The first word of every command. */
export const TOP_WORDS = [...new Set(COMMANDS.map((c) => c.words.split(' ')[0]!))]

/** The lines of one command word (`user` → every `user ...` line); undefined for an unknown word. */
export function helpOf(word: string): string | undefined {
  const lines = COMMANDS.filter((c) => c.words.split(' ')[0] === word)
  if (!lines.length) return undefined
  let text = `usage:\n${lines.map(line).join('\n')}`
  if (word === 'serve') text += `\n\nsettings (a flag, a VCS_WORKER_* variable or a config file key; docs/configuration.md says more):\n${settingsHelp()}`
  return text
}

/** The subcommands of a word that has them (`user` → add, passwd, ...). */
export function subcommandsOf(word: string): string[] {
  return COMMANDS.filter((c) => c.words.startsWith(`${word} `)).map((c) => c.words.split(' ')[1]!)
}

/** The usage line of `words` (the longest command that `words` starts with), for the hint under an error. */
export function usageLineOf(words: string[]): string | undefined {
  for (let n = Math.min(2, words.length); n > 0; n--) {
    const c = COMMANDS.find((x) => x.words === words.slice(0, n).join(' '))
    if (c) return `usage: vcs-worker ${c.words} ${c.args}`
  }
  return undefined
}

/** "did you mean" for an unknown command (`usr add` → `user add`). */
export function nearestCommand(words: string[]): string | undefined {
  const [first, second] = words
  if (!first) return undefined
  if (TOP_WORDS.includes(first)) {
    const subs = subcommandsOf(first)
    const near = second !== undefined ? nearest(second, subs) : undefined
    return near ? `${first} ${near}` : undefined
  }
  const top = nearest(first, TOP_WORDS)
  if (!top) return undefined
  const subs = subcommandsOf(top)
  const near = second !== undefined && subs.length ? nearest(second, subs) ?? (subs.includes(second) ? second : undefined) : undefined
  return near ? `${top} ${near}` : top
}

function settingsHelp(): string {
  return SETTING_KEYS.map((key) => {
    const s = settingSchema(key)
    const flag = `--${flagOf(key)}${kindOf(key) === 'bool' ? `, --no-${flagOf(key)}` : kindOf(key) === 'int' ? ' N' : kindOf(key) === 'list' ? ' A,B' : ' TEXT'}`
    const def = JSON.stringify(s.default)
    const first = s.description.split(/(?<=[.;:])\s/)[0]!.replace(/[.;:]$/, '')
    return `  ${flag.padEnd(34)} ${first} [${def}]`
  }).join('\n')
}
