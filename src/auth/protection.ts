/**
 * Branch protection, built on the ref hook: on a protected ref, force-pushes and deletions
 * are refused, and when the protection names users, only they may update it. Patterns are
 * globs over full ref names (`refs/heads/main`, `refs/heads/release/*`); a pattern without
 * `refs/` means a branch (`main` = `refs/heads/main`). `*` stays inside one path segment,
 * `**` crosses them.
 */
import type { Protection, RequestStore } from './store.js'
import type { RefHook, RefRejection } from './plugin.js'

export function refPattern(pattern: string): RegExp {
  const full = pattern.startsWith('refs/') ? pattern : `refs/heads/${pattern}`
  const re = full.split(/(\*\*|\*)/).map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))).join('')
  return new RegExp(`^${re}$`)
}

function matching(protections: Protection[], ref: string): Protection | undefined {
  return protections.find((p) => refPattern(p.pattern).test(ref))
}

export function protectionHook(store: RequestStore): RefHook {
  return async ({ principal, repo, updates }) => {
    const protections = await store.protections(repo.name)
    if (!protections.length) return []
    const rejections: RefRejection[] = []
    for (const u of updates) {
      const p = matching(protections, u.ref)
      if (!p) continue
      if (u.kind === 'force') rejections.push({ ref: u.ref, reason: 'protected branch: force-push not allowed' })
      else if (u.kind === 'delete') rejections.push({ ref: u.ref, reason: 'protected branch: deletion not allowed' })
      else if (p.users.length && (principal.kind !== 'user' || !p.users.includes(principal.name))) {
        rejections.push({ ref: u.ref, reason: 'protected branch: you may not push to it' })
      }
    }
    return rejections
  }
}
