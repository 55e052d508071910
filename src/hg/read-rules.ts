/**
 * What a repo's own `.hg/hgrc` says that makes hg answer callers differently: hg itself judges
 * `[web] allow_read` and `deny_read` against REMOTE_USER (hgweb/common.py `checkauthz`), and a
 * repo's hooks and extensions see REMOTE_USER too. The worker's answer cache and its clone
 * bundles must not hand one caller's answer to another where such rules exist:
 * - `restrictsRead`: hg may refuse a reader the worker lets in (`allow_read`, `deny_read`, or a
 *   `%include` whose file the worker does not follow). Such a repo gets no clone bundles from
 *   the worker: hg alone decides who reads it.
 * - `perUser`: hg's answers may depend on who asks (the above, or any `[hooks]` or
 *   `[extensions]` of the repo's own). Kept answers are then kept per principal.
 * Read with the file's identity (inode, size, mtime), so an edited hgrc is seen at once.
 */
import { readFile, stat } from 'node:fs/promises'
import path from 'node:path'

export interface ReadRules {
  restrictsRead: boolean
  perUser: boolean
}

const NONE: ReadRules = { restrictsRead: false, perUser: false }
/** repos whose rules are remembered at most (one entry per repo) */
const KEPT = 4000
const known = new Map<string, { id: string; rules: ReadRules }>()

/** Parses an hgrc's text (Mercurial's config.py grammar: sections, `key = value`, `%include`, `%unset`). */
export function parseReadRules(text: string): ReadRules {
  let section = ''
  let restrictsRead = false
  let perUser = false
  for (const line of text.split(/\r?\n/)) {
    if (/^\s/.test(line) || /^[#;]/.test(line) || line.trim() === '') continue // continuations, comments, blanks
    if (/^%include\b/.test(line)) {
      restrictsRead = perUser = true // not followed: assume the worst
      continue
    }
    const header = /^\[([^\]]+)\]/.exec(line)
    if (header) {
      section = header[1]!.trim()
      continue
    }
    const key = (/^%unset\s+(\S+)/.exec(line)?.[1] ?? line.split('=')[0]!).trim()
    if (section === 'web' && (key === 'allow_read' || key === 'deny_read')) restrictsRead = perUser = true
    if (section === 'hooks' || section === 'extensions') perUser = true
  }
  return { restrictsRead, perUser }
}

/** The rules of the repo at `repoDir` (its `.hg/hgrc`; none when it has no hgrc). */
export async function readRules(repoDir: string): Promise<ReadRules> {
  const file = path.join(repoDir, '.hg', 'hgrc')
  const st = await stat(file, { bigint: true }).catch(() => undefined)
  if (!st) return NONE
  const id = `${st.ino}:${st.size}:${st.mtimeNs}`
  const hit = known.get(repoDir)
  if (hit?.id === id) return hit.rules
  const rules = parseReadRules(await readFile(file, 'utf8').catch(() => '%include unreadable'))
  known.delete(repoDir)
  known.set(repoDir, { id, rules })
  for (const oldest of known.keys()) {
    if (known.size <= KEPT) break
    known.delete(oldest)
  }
  return rules
}

/** True when hg may refuse a reader of this repo that the worker admits. */
export async function readRestricted(repoDir: string): Promise<boolean> {
  return (await readRules(repoDir)).restrictsRead
}
