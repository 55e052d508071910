/**
 * The worker's pre-receive hook, run by git receive-pack (githooks(5)). Classifies each ref
 * update (create, update, force by ancestry, delete), asks the worker over loopback which
 * ones its ref hooks refuse, writes those refs where our `update` hook finds them (so each is
 * refused on its own and the rest follow git's rules), prints the reasons, then chains to the
 * repository's own pre-receive hook. Any failure refuses the whole push: fail closed.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync, accessSync, constants } from 'node:fs'
import { HOOK_PROTOCOL, type HookAnswer, type HookError, type HookRequest, type HookUpdate } from '../hook-protocol.js'

const ZERO = /^0+$/

function kindOf(oldId: string, newId: string): HookUpdate['kind'] {
  if (ZERO.test(oldId)) return 'create'
  if (ZERO.test(newId)) return 'delete'
  // git passes the quarantine environment to hooks, so the new objects are visible here.
  const r = spawnSync(process.env.VCS_WORKER_GIT || 'git', ['merge-base', '--is-ancestor', oldId, newId], { stdio: 'ignore' })
  if (r.status === 0) return 'update'
  if (r.status === 1) return 'force'
  throw new Error(`cannot tell whether ${newId} descends from ${oldId}`)
}

async function main(): Promise<number> {
  const input = readFileSync(0)
  const url = process.env.VCS_WORKER_HOOK_URL
  const token = process.env.VCS_WORKER_HOOK_TOKEN
  const rejectsFile = process.env.VCS_WORKER_HOOK_REJECTS
  if (!url || !token || !rejectsFile) {
    process.stderr.write('error: push checks are not available\n')
    return 1
  }
  const updates: HookUpdate[] = input.toString('utf8').split('\n').filter(Boolean).map((line) => {
    const [oldId, newId, ref] = line.split(' ') as [string, string, string]
    return { ref, oldId, newId, kind: kindOf(oldId, newId) }
  })
  const request: HookRequest = { v: HOOK_PROTOCOL, token, updates, objects: process.env.GIT_OBJECT_DIRECTORY }
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request), signal: AbortSignal.timeout(30_000) })
  if (!res.ok) {
    // the worker's one-line reason when it has one (the account store unreachable), else the status
    const reason = ((await res.json().catch(() => ({}))) as Partial<HookError>).reason
    throw new Error(reason ?? `worker answered ${res.status}`)
  }
  const { rejections } = (await res.json()) as HookAnswer
  writeFileSync(rejectsFile, rejections.map((r) => `${r.ref}\n`).join(''))
  for (const r of rejections) process.stderr.write(`${r.ref}: ${r.reason}\n`)
  const own = 'hooks/pre-receive'
  try { accessSync(own, constants.X_OK) } catch { return 0 }
  return spawnSync(own, [], { input, stdio: ['pipe', 'inherit', 'inherit'] }).status ?? 1
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`error: push checks failed: ${(err as Error).message}\n`)
  process.exitCode = 1
})
