/**
 * The administrative commands: users, tokens, grants, repositories, branch protection. Each
 * opens the same auth store and repos dir as `serve`, so it works while a server runs; the
 * server sees each change on its next request (the store's data_version).
 */
import { isIP } from 'node:net'
import { MAX_USER_NAME } from '../auth/credentials.js'
import type { Config } from '../config/load.js'
import type { AdminStore, Level } from '../auth/store.js'
import { LEVELS, StoreConflictError, StoreNotFoundError } from '../auth/store.js'
import { hashPassword, scryptParams } from '../auth/password.js'
import { hashToken, newToken, TOKEN_PREFIX } from '../auth/tokens.js'
import { gitRepoName, isBareGitRepo, parseRepoPath, resolveInside, type RepoKind } from '../repos/path.js'
import { createRepo, isBranchName } from '../repos/create.js'
import { createGitRunner } from '../git/spawn.js'
import { hgInit } from '../hg/spawn.js'
import { access } from 'node:fs/promises'
import { listGrants, listProtections, listRepos, listTokens, listUsers, type ListContext } from './list.js'
import { canonicalName, deleteRepo, renameRepo } from './lifecycle.js'
import { askLine, interactive, readNewPassword } from './prompt.js'
import { UsageError } from './errors.js'
import { usageLineOf } from './usage.js'
import path from 'node:path'

export { UsageError }

export interface AdminContext {
  config: Config
  store: AdminStore
  flags: { git?: boolean; hg?: boolean; public?: boolean; expires?: string; users?: string; json?: boolean; user?: string; repo?: string; address?: string; yes?: boolean }
  out: (line: string) => void
  /** notes beside the answer (standard error) */
  warn: (line: string) => void
}

// eslint-disable-next-line no-control-regex
const BAD_NAME = /[\x00-\x1f\x7f:/\\]/

/** User names: 1-64 characters, any script, no control characters, no `:` (RFC 7617 user-id). */
export function checkUserName(name: string | undefined): string {
  if (!name) throw new UsageError('missing user NAME')
  const n = name.normalize('NFC')
  if (n.length > MAX_USER_NAME || BAD_NAME.test(n) || n.trim() !== n) throw new UsageError('bad user name: 1-64 characters, no spaces at the ends, no control characters, no : / \\')
  return n
}

/** A new password: asked twice at a terminal, else standard input's one line; checked before it is hashed. */
function readPassword(): Promise<string> {
  return readNewPassword(checkPassword)
}

function checkPassword(password: string): string {
  if (password.length < 8) throw new UsageError('password must be at least 8 characters')
  if (password.length > 1024 || password.includes('\n')) throw new UsageError('password must be one line of at most 1024 characters')
  // a secret of that shape is checked as a token and could never log in as a password
  if (password.startsWith(TOKEN_PREFIX)) throw new UsageError(`a password may not start with ${TOKEN_PREFIX} (that prefix marks access tokens)`)
  return password
}

/** `30d`, `12h`, `45m` or an ISO date → seconds since the epoch. */
export function parseExpiry(text: string, now = Date.now()): number {
  const rel = /^(\d+)([dhm])$/.exec(text)
  if (rel && Number(rel[1]) === 0) throw new UsageError(`--expires ${text}: a token must live at least a minute (omit --expires for one that does not expire)`)
  if (rel) return Math.floor(now / 1000) + Number(rel[1]) * { d: 86400, h: 3600, m: 60 }[rel[2] as 'd' | 'h' | 'm']
  const abs = Date.parse(text)
  if (Number.isNaN(abs) || !/^\d{4}-\d{2}-\d{2}/.test(text)) throw new UsageError(`bad --expires ${JSON.stringify(text)}: use 30d, 12h, 45m or a date like 2027-01-31`)
  if (abs <= now) throw new UsageError('--expires is in the past')
  return Math.floor(abs / 1000)
}

/** Finds an existing repo from a CLI path: `team/project` or `team/project.git` for git, `demo-hg` for hg. */
export async function findRepoByPath(config: Config, text: string): Promise<{ name: string; kind: RepoKind }> {
  let segments: string[]
  try {
    segments = parseRepoPath(text.replace(/^\/+|\/+$/g, ''))
  } catch (err) {
    throw new UsageError(`bad repository path: ${(err as Error).message}`)
  }
  const root = path.resolve(config.reposDir)
  const gitName = gitRepoName(segments)
  const gitDir = await resolveInside(root, gitName).catch(() => undefined)
  if (gitDir && (await isBareGitRepo(gitDir))) return { name: gitName, kind: 'git' }
  const hgName = segments.join('/')
  const hgDir = await resolveInside(root, hgName).catch(() => undefined)
  if (hgDir && (await access(path.join(hgDir, '.hg')).then(() => true, () => false))) return { name: hgName, kind: 'hg' }
  throw new Error(`no repository ${text} in ${config.reposDir}`)
}

/**
 * The store's name for a repo given on the command line: the repo on disk, or, when it is gone
 * (removed by hand), the name under which the store still holds grants or protections, so
 * they can be listed and revoked.
 */
async function storedRepoName(config: Config, store: AdminStore, text: string): Promise<string> {
  try {
    return (await findRepoByPath(config, text)).name
  } catch (err) {
    if (err instanceof UsageError) throw err
    for (const kind of ['git', 'hg'] as const) {
      const name = canonicalName(text, kind)
      if ((await store.listGrants({ repo: name })).length || (await store.protections(name)).length) return name
    }
    throw err
  }
}

/** Users named in `--users` must exist: a typo would protect a branch for nobody. */
async function existingUsers(store: AdminStore, list: string): Promise<string[]> {
  const users = list.split(',').map((u) => checkUserName(u.trim()))
  const missing = []
  for (const u of users) if (!(await store.findUser(u))) missing.push(u)
  if (missing.length) throw new StoreNotFoundError(`no such user${missing.length > 1 ? 's' : ''}: ${missing.join(', ')}`)
  return users
}

function level(text: string | undefined): Level {
  if (!LEVELS.includes(text as Level)) throw new UsageError(`level must be one of ${LEVELS.join(', ')}`)
  return text as Level
}

/** Exactly `n` operands for the command `words`, else its usage line from the table (usage.ts) under the reason. */
function arity(args: string[], n: number, words: string): void {
  if (args.length === n) return
  const hint = usageLineOf(words.split(' '))!
  // the words after the command's own, bar options and optional parts: NAME, PATH, read|write|admin
  const operands = hint.split(/\s+/).slice(2 + words.split(' ').length).filter((w) => !/^(\[|--)|\]$/.test(w))
  const reason = args.length < n ? `missing ${operands[args.length] ?? 'an argument'}` : `unexpected ${args.slice(n).map((a) => JSON.stringify(a)).join(' ')}`
  throw new UsageError(`${words}: ${reason}`, hint)
}

/** Runs one administrative command; `args` excludes the command word. */
export async function runAdmin(command: string, args: string[], ctx: AdminContext): Promise<void> {
  const { store, out, config, flags } = ctx
  const [sub, ...rest] = args
  const listing: ListContext = { config, store, out, json: Boolean(flags.json) }
  switch (`${command} ${sub ?? ''}`.trim()) {
    case 'user list':
      arity(rest, 0, 'user list')
      return listUsers(listing)
    case 'token list':
      arity(rest, 1, 'token list')
      return listTokens(listing, checkUserName(rest[0]))
    case 'repo list':
      arity(rest, 0, 'repo list')
      return listRepos(listing)
    case 'grant list': {
      // `grant list` takes no operands; `grant NAME PATH LEVEL` takes three, so a user named list still gets grants
      if (rest.length === 0) {
        if (flags.user && flags.repo) throw new UsageError('grant list takes --user NAME or --repo PATH, not both')
        const repo = flags.repo ? await storedRepoName(config, store, flags.repo) : undefined
        return listGrants(listing, { user: flags.user ? checkUserName(flags.user) : undefined, repo })
      }
      break
    }
    case 'user add': {
      arity(rest, 1, 'user add')
      const name = checkUserName(rest[0])
      // told before the password is asked for
      if (await store.findUser(name)) throw new StoreConflictError(`user ${name} already exists`)
      await store.addUser(name, await hashPassword(await readPassword(), scryptParams(config.kdfCost)))
      return out(`added user ${name}`)
    }
    case 'user passwd': {
      arity(rest, 1, 'user passwd')
      const name = checkUserName(rest[0])
      if (!(await store.findUser(name))) throw new StoreNotFoundError(`no such user: ${name}`)
      await store.setPassword(name, await hashPassword(await readPassword(), scryptParams(config.kdfCost)))
      return out(`changed the password of ${name}`)
    }
    case 'user rename': {
      arity(rest, 2, 'user rename')
      const [from, to] = [checkUserName(rest[0]), checkUserName(rest[1])]
      await store.renameUser(from, to)
      return out(`renamed user ${from} to ${to} (tokens, grants and locks kept)`)
    }
    case 'protect list': {
      if (rest.length > 1) throw new UsageError(`protect list: unexpected ${rest.slice(1).join(' ')}`, 'usage: vcs-worker protect list [PATH] [--json]')
      return listProtections(listing, rest[0] === undefined ? undefined : await storedRepoName(config, store, rest[0]))
    }
    case 'repo delete': {
      arity(rest, 1, 'repo delete')
      const repo = await findRepoByPath(config, rest[0]!)
      if (!flags.yes) {
        if (!interactive()) throw new UsageError(`repo delete removes ${repo.name} and everything in it for good: add --yes`, 'usage: vcs-worker repo delete PATH --yes')
        const typed = await askLine(`This deletes ${repo.name} and its history for good. Type its name to go on: `, false)
        if (typed.trim() !== repo.name && canonicalName(typed.trim() || '-', repo.kind) !== repo.name) throw new UsageError('the name typed does not match: nothing was deleted')
      }
      return out(await deleteRepo(config, store, repo))
    }
    case 'repo rename': {
      arity(rest, 2, 'repo rename')
      const repo = await findRepoByPath(config, rest[0]!)
      return out(await renameRepo(config, store, repo, rest[1]!))
    }
    case 'user unlock': {
      // by name, by address, or both: failures before now no longer count, on every worker
      if (rest.length > 1 || (rest.length === 0 && !flags.address)) throw new UsageError('usage: vcs-worker user unlock NAME | --address ADDR')
      const done: string[] = []
      if (rest[0] !== undefined) {
        const name = checkUserName(rest[0])
        await store.unlockLogins(`user:${name}`)
        done.push(`password logins of ${name}`)
      }
      if (flags.address) {
        const address = flags.address.trim()
        if (!isIP(address)) throw new UsageError(`--address: ${JSON.stringify(address.slice(0, 64))} is not an IP address`)
        await store.unlockLogins(`address:${address}`)
        done.push(`logins from ${address}`)
      }
      return out(`unlocked ${done.join(' and ')}: earlier failures no longer count, on every worker`)
    }
    case 'user remove': {
      arity(rest, 1, 'user remove')
      const name = checkUserName(rest[0])
      await store.removeUser(name)
      return out(`removed user ${name} with their tokens and grants`)
    }
    case 'token create': {
      arity(rest, 1, 'token create')
      const name = checkUserName(rest[0])
      const expires = flags.expires ? parseExpiry(flags.expires) : null
      const token = newToken()
      const id = await store.addToken(name, hashToken(token), expires)
      out(`token ${id} for ${name}${expires ? `, expires ${new Date(expires * 1000).toISOString()}` : ''} (shown once, keep it secret):`)
      return out(token)
    }
    case 'token revoke': {
      arity(rest, 2, 'token revoke')
      const name = checkUserName(rest[0])
      if (!/^\d+$/.test(rest[1]!)) throw new UsageError('token ID is a number (from token create)')
      await store.revokeToken(name, Number(rest[1]))
      return out(`revoked token ${rest[1]} of ${name}`)
    }
    case 'repo visibility': {
      arity(rest, 2, 'repo visibility')
      if (rest[1] !== 'public' && rest[1] !== 'private') throw new UsageError('visibility is public or private')
      const repo = await findRepoByPath(config, rest[0]!)
      await store.setRepo(repo.name, repo.kind, rest[1] === 'public')
      return out(`${repo.name} is ${rest[1]}`)
    }
    case 'repo create': {
      arity(rest, 1, 'repo create')
      if (Boolean(flags.git) === Boolean(flags.hg)) throw new UsageError('repo create needs exactly one of --git or --hg')
      const kind: RepoKind = flags.git ? 'git' : 'hg'
      let name: string
      try {
        name = await createRepo(config.reposDir, rest[0]!, kind, { git: createGitRunner(config), hgInit: (dir) => hgInit(config, dir), defaultBranch: config.defaultBranch })
      } catch (err) {
        if ((err as { code?: string }).code === 'VCS_BAD_REQUEST') throw new UsageError(`bad repository path: ${(err as Error).message}`)
        throw err
      }
      const leftovers = await store.listGrants({ repo: name })
      const protections = await store.protections(name)
      await store.setRepo(name, kind, Boolean(flags.public))
      out(`created ${kind} repository ${name}${flags.public ? ' (public)' : ' (private)'}`)
      if (leftovers.length || protections.length) {
        const what = [...leftovers.map((g) => `${g.user} (${g.level})`), ...protections.map((p) => `protection ${p.pattern}`)]
        ctx.warn(`warning: the store already held records for ${name}, left by a repo of that name removed by hand; they apply to this one now: ${what.join(', ')} (vcs-worker grant list --repo ${name}; vcs-worker repo delete removes a repo with its records)`)
      }
      return
    }
    case 'repo default-branch': {
      arity(rest, 2, 'repo default-branch')
      const repo = await findRepoByPath(config, rest[0]!)
      if (repo.kind !== 'git') throw new UsageError(`${repo.name} is an hg repository: hg has no default-branch setting (clones check out the branch named default)`)
      const branch = rest[1]!.replace(/^refs\/heads\//, '')
      if (!isBranchName(branch)) throw new UsageError(`bad branch name ${JSON.stringify(rest[1])}: segments of A-Z a-z 0-9 . _ - not starting with . or -`)
      const git = createGitRunner(config)
      const dir = await resolveInside(path.resolve(config.reposDir), repo.name)
      await git.exec(['--git-dir', dir, 'symbolic-ref', 'HEAD', `refs/heads/${branch}`])
      const exists = await git.exec(['--git-dir', dir, 'rev-parse', '--verify', '--quiet', `refs/heads/${branch}`]).then(() => true, () => false)
      return out(`${repo.name}: HEAD is refs/heads/${branch}${exists ? '' : ' (no such branch yet: clones check it out once it is pushed)'}`)
    }
    default:
      break
  }
  switch (command) {
    case 'grant': {
      arity(args, 3, 'grant')
      const name = checkUserName(args[0])
      const lvl = level(args[2])
      const repo = await findRepoByPath(config, args[1]!)
      const before = (await store.listGrants({ user: name, repo: repo.name }))[0]?.level
      await store.setGrant(name, repo.name, lvl)
      const lowered = before !== undefined && LEVELS.indexOf(before) > LEVELS.indexOf(lvl)
      return out(`${name} has ${lvl} on ${repo.name}${lowered ? ` (lowered from ${before})` : before && before !== lvl ? ` (raised from ${before})` : ''}`)
    }
    case 'revoke': {
      arity(args, 2, 'revoke')
      const name = checkUserName(args[0])
      const repo = await storedRepoName(config, store, args[1]!)
      await store.removeGrant(name, repo)
      return out(`${name} has no grant on ${repo}`)
    }
    case 'protect': {
      arity(args, 2, 'protect')
      const repo = await findRepoByPath(config, args[0]!)
      // hg pushes do not pass the git ref hooks that enforce it: refusing beats a rule that does nothing
      if (repo.kind !== 'git') throw new UsageError(`${repo.name} is an hg repository: branch protection is enforced on git pushes only`)
      if (!/^[A-Za-z0-9._\-/*]+$/.test(args[1]!)) throw new UsageError('ref pattern: letters, digits, . _ - / and *')
      const users = flags.users ? await existingUsers(store, flags.users) : []
      await store.setProtection(repo.name, args[1]!, users)
      return out(`${repo.name}: ${args[1]} is protected${users.length ? `, writable by ${users.join(', ')}` : ''}`)
    }
    case 'unprotect': {
      arity(args, 2, 'unprotect')
      const repo = await storedRepoName(config, store, args[0]!)
      await store.removeProtection(repo, args[1]!)
      return out(`${repo}: ${args[1]} is no longer protected`)
    }
    default:
      throw new UsageError(`unknown command: ${[command, sub].filter(Boolean).join(' ')}`, 'see: vcs-worker --help')
  }
}
