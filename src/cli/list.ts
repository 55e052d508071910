/**
 * The listing commands: `user list`, `token list NAME`, `grant list [--user NAME | --repo PATH]`,
 * `repo list`. Each prints a table for people or, with `--json`, one JSON document for
 * scripts. A token's secret or hash is never shown: it exists only where it was handed out.
 */
import { readdir } from 'node:fs/promises'
import path from 'node:path'
import type { Config } from '../config/load.js'
import type { AdminStore } from '../auth/store.js'

export interface ListContext {
  config: Config
  store: AdminStore
  json: boolean
  out: (line: string) => void
}

const when = (s: number | null): string => (s === null ? '-' : new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'))

/** Prints rows as aligned columns, or the objects as JSON. */
function print(ctx: ListContext, rows: Record<string, unknown>[], columns: [string, (r: Record<string, unknown>) => string][]): void {
  if (ctx.json) return ctx.out(JSON.stringify(rows, null, 2))
  const cells = [columns.map(([h]) => h), ...rows.map((r) => columns.map(([, f]) => f(r)))]
  const widths = columns.map((_, i) => Math.max(...cells.map((c) => c[i]!.length)))
  for (const line of cells) ctx.out(line.map((c, i) => (i === line.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))
}

export async function listUsers(ctx: ListContext): Promise<void> {
  const users = await ctx.store.listUsers()
  print(ctx, users as unknown as Record<string, unknown>[], [
    ['NAME', (u) => String(u.name)], ['CREATED', (u) => when(u.createdAt as number)], ['TOKENS', (u) => String(u.tokens)], ['GRANTS', (u) => String(u.grants)],
  ])
}

export async function listTokens(ctx: ListContext, user: string): Promise<void> {
  const tokens = await ctx.store.listTokens(user)
  const now = Date.now() / 1000
  const state = (t: Record<string, unknown>): string =>
    t.revokedAt !== null ? 'revoked' : t.expiresAt !== null && (t.expiresAt as number) <= now ? 'expired' : 'active'
  print(ctx, tokens.map((t) => ({ ...t, state: state(t as unknown as Record<string, unknown>) })), [
    ['ID', (t) => String(t.id)], ['CREATED', (t) => when(t.createdAt as number)], ['EXPIRES', (t) => when(t.expiresAt as number | null)],
    ['LAST USED', (t) => when(t.lastUsedAt as number | null)], ['STATE', (t) => String(t.state)],
  ])
}

export async function listGrants(ctx: ListContext, filter: { user?: string; repo?: string }): Promise<void> {
  const grants = await ctx.store.listGrants(filter)
  print(ctx, grants as unknown as Record<string, unknown>[], [['REPO', (g) => String(g.repo)], ['USER', (g) => String(g.user)], ['LEVEL', (g) => String(g.level)]])
}

/** Protected ref patterns: of one repo, or of every git repo on disk. */
export async function listProtections(ctx: ListContext, repo?: string): Promise<void> {
  const repos = repo !== undefined ? [repo] : (await findRepos(path.resolve(ctx.config.reposDir))).filter((r) => r.kind === 'git').map((r) => r.name)
  const rows: Record<string, unknown>[] = []
  for (const name of repos) for (const p of await ctx.store.protections(name)) rows.push({ repo: name, pattern: p.pattern, users: p.users })
  print(ctx, rows, [['REPO', (r) => String(r.repo)], ['PATTERN', (r) => String(r.pattern)], ['WRITABLE BY', (r) => ((r.users as string[]).length ? (r.users as string[]).join(',') : 'anyone with write (no force-push, no delete)')]])
}

/** Repos on disk (git: `*.git` with HEAD; hg: a dir with `.hg`), with their visibility from the store. */
export async function listRepos(ctx: ListContext): Promise<void> {
  const known = new Map((await ctx.store.listRepos()).map((r) => [r.name, r]))
  const found = await findRepos(path.resolve(ctx.config.reposDir))
  const repos = found.map((r) => ({ ...r, public: known.get(r.name)?.public ?? false }))
  print(ctx, repos, [['REPO', (r) => String(r.name)], ['KIND', (r) => String(r.kind)], ['VISIBILITY', (r) => (r.public ? 'public' : 'private')]])
}

/** Walks the repos dir (no symlinks followed, hidden names skipped, at most 8 levels deep). */
async function findRepos(root: string): Promise<{ name: string; kind: 'git' | 'hg' }[]> {
  const out: { name: string; kind: 'git' | 'hg' }[] = []
  async function walk(dir: string, rel: string, depth: number): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
    const names = new Set(entries.map((e) => e.name))
    if (rel && names.has('.hg')) return void out.push({ name: rel, kind: 'hg' })
    if (rel.endsWith('.git') && names.has('HEAD') && names.has('objects')) return void out.push({ name: rel, kind: 'git' })
    if (depth >= 8) return
    for (const e of entries) {
      if (e.isDirectory() && !e.name.startsWith('.')) await walk(path.join(dir, e.name), rel ? `${rel}/${e.name}` : e.name, depth + 1)
    }
  }
  await walk(root, '', 0)
  return out.sort((a, b) => a.name.localeCompare(b.name))
}
