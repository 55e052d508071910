/**
 * The administrative commands: users, tokens, grants, repositories, branch protection. Each
 * opens the same auth store and repos dir as `serve`, so it works while a server runs; the
 * server sees each change on its next request (the store's data_version).
 */
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { MAX_USER_NAME } from '../auth/credentials.js'
import type { Config } from '../config/load.js'
import type { AuthStore, Level } from '../auth/store.js'
import { LEVELS } from '../auth/store.js'
import { hashPassword } from '../auth/password.js'
import { hashToken, newToken, TOKEN_PREFIX } from '../auth/tokens.js'
import { gitRepoName, isBareGitRepo, parseRepoPath, resolveInside, type RepoKind } from '../repos/path.js'
import { createRepo, isBranchName } from '../repos/create.js'
import { createGitRunner } from '../git/spawn.js'
import { hgInit } from '../hg/spawn.js'
import { access } from 'node:fs/promises'
import { listGrants, listRepos, listTokens, listUsers, type ListContext } from './list.js'
import path from 'node:path'

/** A mistake in how a command was called: exit 2. */
export class UsageError extends Error {}

export interface AdminContext {
  config: Config
  store: AuthStore
  flags: { git?: boolean; hg?: boolean; public?: boolean; expires?: string; users?: string; json?: boolean; user?: string; repo?: string; address?: string }
  out: (line: string) => void
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

function readPassword(): string {
  let text: string
  try {
    text = readFileSync(0, 'utf8')
  } catch {
    throw new UsageError('give the password on standard input')
  }
  const password = text.replace(/\r?\n$/, '')
  if (password.length < 8) throw new UsageError('password must be at least 8 characters (read from standard input)')
  if (password.length > 1024 || password.includes('\n')) throw new UsageError('password must be one line of at most 1024 characters')
  // a secret of that shape is checked as a token and could never log in as a password
  if (password.startsWith(TOKEN_PREFIX)) throw new UsageError(`a password may not start with ${TOKEN_PREFIX} (that prefix marks access tokens)`)
  return password
}

/** `30d`, `12h`, `45m` or an ISO date → seconds since the epoch. */
export function parseExpiry(text: string, now = Date.now()): number {
  const rel = /^(\d+)([dhm])$/.exec(text)
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

function level(text: string | undefined): Level {
  if (!LEVELS.includes(text as Level)) throw new UsageError(`level must be one of ${LEVELS.join(', ')}`)
  return text as Level
}

function arity(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new UsageError(`usage: vcs-worker ${usage}`)
}

/** Runs one administrative command; `args` excludes the command word. */
export async function runAdmin(command: string, args: string[], ctx: AdminContext): Promise<void> {
  const { store, out, config, flags } = ctx
  const [sub, ...rest] = args
  const listing: ListContext = { config, store, out, json: Boolean(flags.json) }
  switch (`${command} ${sub ?? ''}`.trim()) {
    case 'user list':
      arity(rest, 0, 'user list [--json]')
      return listUsers(listing)
    case 'token list':
      arity(rest, 1, 'token list NAME [--json]')
      return listTokens(listing, checkUserName(rest[0]))
    case 'repo list':
      arity(rest, 0, 'repo list [--json]')
      return listRepos(listing)
    case 'grant list': {
      // `grant list` takes no operands; `grant NAME PATH LEVEL` takes three, so a user named list still gets grants
      if (rest.length === 0) {
        if (flags.user && flags.repo) throw new UsageError('grant list takes --user NAME or --repo PATH, not both')
        const repo = flags.repo ? (await findRepoByPath(config, flags.repo)).name : undefined
        return listGrants(listing, { user: flags.user ? checkUserName(flags.user) : undefined, repo })
      }
      break
    }
    case 'user add': {
      arity(rest, 1, 'user add NAME  (password on stdin)')
      const name = checkUserName(rest[0])
      await store.addUser(name, await hashPassword(readPassword()))
      return out(`added user ${name}`)
    }
    case 'user passwd': {
      arity(rest, 1, 'user passwd NAME  (password on stdin)')
      const name = checkUserName(rest[0])
      await store.setPassword(name, await hashPassword(readPassword()))
      return out(`changed the password of ${name}`)
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
      arity(rest, 1, 'user remove NAME')
      const name = checkUserName(rest[0])
      await store.removeUser(name)
      return out(`removed user ${name} with their tokens and grants`)
    }
    case 'token create': {
      arity(rest, 1, 'token create NAME [--expires 30d|DATE]')
      const name = checkUserName(rest[0])
      const expires = flags.expires ? parseExpiry(flags.expires) : null
      const token = newToken()
      const id = await store.addToken(name, hashToken(token), expires)
      out(`token ${id} for ${name}${expires ? `, expires ${new Date(expires * 1000).toISOString()}` : ''} (shown once, keep it secret):`)
      return out(token)
    }
    case 'token revoke': {
      arity(rest, 2, 'token revoke NAME ID')
      const name = checkUserName(rest[0])
      if (!/^\d+$/.test(rest[1]!)) throw new UsageError('token ID is a number (from token create)')
      await store.revokeToken(name, Number(rest[1]))
      return out(`revoked token ${rest[1]} of ${name}`)
    }
    case 'repo visibility': {
      arity(rest, 2, 'repo visibility PATH public|private')
      if (rest[1] !== 'public' && rest[1] !== 'private') throw new UsageError('visibility is public or private')
      const repo = await findRepoByPath(config, rest[0]!)
      await store.setRepo(repo.name, repo.kind, rest[1] === 'public')
      return out(`${repo.name} is ${rest[1]}`)
    }
    case 'repo create': {
      arity(rest, 1, 'repo create PATH --git|--hg [--public]')
      if (Boolean(flags.git) === Boolean(flags.hg)) throw new UsageError('repo create needs exactly one of --git or --hg')
      const kind: RepoKind = flags.git ? 'git' : 'hg'
      let name: string
      try {
        name = await createRepo(config.reposDir, rest[0]!, kind, { git: createGitRunner(config), hgInit: (dir) => hgInit(config, dir), defaultBranch: config.defaultBranch })
      } catch (err) {
        if ((err as { code?: string }).code === 'VCS_BAD_REQUEST') throw new UsageError(`bad repository path: ${(err as Error).message}`)
        throw err
      }
      await store.setRepo(name, kind, Boolean(flags.public))
      return out(`created ${kind} repository ${name}${flags.public ? ' (public)' : ' (private)'}`)
    }
    case 'repo default-branch': {
      arity(rest, 2, 'repo default-branch PATH BRANCH')
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
      arity(args, 3, 'grant NAME PATH read|write|admin')
      const name = checkUserName(args[0])
      const lvl = level(args[2])
      const repo = await findRepoByPath(config, args[1]!)
      await store.setGrant(name, repo.name, lvl)
      return out(`${name} has ${lvl} on ${repo.name}`)
    }
    case 'revoke': {
      arity(args, 2, 'revoke NAME PATH')
      const name = checkUserName(args[0])
      const repo = await findRepoByPath(config, args[1]!)
      await store.removeGrant(name, repo.name)
      return out(`${name} has no grant on ${repo.name}`)
    }
    case 'protect': {
      arity(args, 2, 'protect PATH REF-PATTERN [--users a,b]')
      const repo = await findRepoByPath(config, args[0]!)
      // hg pushes do not pass the git ref hooks that enforce it: refusing beats a rule that does nothing
      if (repo.kind !== 'git') throw new UsageError(`${repo.name} is an hg repository: branch protection is enforced on git pushes only`)
      const users = flags.users ? flags.users.split(',').map((u) => checkUserName(u.trim())) : []
      if (!/^[A-Za-z0-9._\-/*]+$/.test(args[1]!)) throw new UsageError('ref pattern: letters, digits, . _ - / and *')
      await store.setProtection(repo.name, args[1]!, users)
      return out(`${repo.name}: ${args[1]} is protected${users.length ? `, writable by ${users.join(', ')}` : ''}`)
    }
    case 'unprotect': {
      arity(args, 2, 'unprotect PATH REF-PATTERN')
      const repo = await findRepoByPath(config, args[0]!)
      await store.removeProtection(repo.name, args[1]!)
      return out(`${repo.name}: ${args[1]} is no longer protected`)
    }
    default:
      throw new UsageError(`unknown command: ${[command, sub].filter(Boolean).join(' ')}`)
  }
}
