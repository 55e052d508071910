/**
 * `vcs-worker lfs fsck PATH`: re-hashes every Git LFS object of a repo and names the bad ones
 * (bytes that are not their oid: rot, a hand edit, a truncated copy). It never deletes: what to
 * do with a bad object (restore it from a backup, or from a client that still has it with
 * `git lfs push --object-id`) is the operator's call. Exit 1 when any is bad, as git fsck does.
 */
import { resolveGitRepo } from '../repos/path.js'
import { FsLfsStore } from '../lfs/store.js'
import type { Config } from '../config/load.js'

export class LfsUsageError extends Error {}

export async function lfsCommand(args: string[], config: Config, out: (line: string) => void): Promise<number> {
  const [sub, repoPath, ...rest] = args
  if (sub !== 'fsck' || repoPath === undefined || rest.length) throw new LfsUsageError('usage: vcs-worker lfs fsck PATH')
  const repo = await resolveGitRepo(config.reposDir, repoPath)
  let checked = 0
  let bad = 0
  for await (const r of new FsLfsStore().check(repo.dir)) {
    checked++
    if (!r.ok) {
      bad++
      out(`bad ${r.oid} (${r.size} bytes): its content does not hash to its name`)
    }
  }
  out(`${repo.name}: ${checked} LFS object${checked === 1 ? '' : 's'} checked, ${bad} bad${bad ? ' (nothing was deleted)' : ''}`)
  return bad ? 1 : 0
}
