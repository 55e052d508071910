/**
 * Per-ref authorization for pushes, and what the worker does after one. receive-pack runs with
 * `core.hooksPath` naming the hooks dir, where the worker's hook program stands under each
 * hook's name (hook-service.ts, src/git/hook.c): `pre-receive` asks this module which updates
 * the ref hooks refuse; `update` then declines exactly those refs, and ReportRewriter turns
 * git's `hook declined` into our reason. `post-receive` tells it what moved. Each of the
 * repository's own hooks runs after ours. Each push gets a hook session naming its principal
 * and repo; nothing is answered without one.
 */
import type http from 'node:http'
import { VcsError } from '../errors.js'
import { rename, rm, writeFile } from 'node:fs/promises'
import { realpath } from 'node:fs/promises'
import path from 'node:path'
import type { RefContext, RefRejection, RefUpdate } from '../auth/plugin.js'
import { UPDATE_KINDS } from './hook-protocol.js'
import { readHookBody, type HookService } from './hook-service.js'
import type { GitRunner } from './spawn.js'

const MAX_BODY = 4 * 1024 * 1024

export interface PushSession {
  token: string
  rejectsFile: string
  /** what receive-pack's environment needs for the hooks */
  env: Record<string, string>
  /** our reason for a ref we declined */
  reasonFor(ref: string): string | undefined
  close(): Promise<void>
}

type Check = (ctx: RefContext) => Promise<RefRejection[]>

interface Push {
  ctx: Omit<RefContext, 'updates'>
  reasons: Map<string, string>
  rejectsFile: string
}

/** The push side of the hook service: pre-receive's checks and post-receive's follow-up. */
export class PushHooks {
  /**
   * @param git runs post-receive's follow-up (the worker's gitBin)
   * @param gitBin the git the hook program runs for ancestry (VCS_WORKER_GIT)
   */
  constructor(private readonly service: HookService, private readonly check: Check, private readonly tmpDir: string,
    private readonly git: Pick<GitRunner, 'exec'>, private readonly gitBin = 'git') {
    service.route<Push>('pre-receive', (req, res, push) => this.preReceive(req, res, push))
    service.route<Push>('post-receive', (req, res, push) => this.postReceive(req, res, push))
  }

  /** A session for one receive-pack run. */
  open(ctx: Omit<RefContext, 'updates'>): PushSession {
    const reasons = new Map<string, string>()
    const push: Push = { ctx, reasons, rejectsFile: '' }
    const session = this.service.open('push', ctx.repo.dir, push)
    push.rejectsFile = path.join(this.tmpDir, `rejects-${session.token}`)
    return {
      token: session.token,
      rejectsFile: push.rejectsFile,
      env: { ...session.env, VCS_WORKER_HOOK_REJECTS: push.rejectsFile, VCS_WORKER_GIT: this.gitBin },
      reasonFor: (ref) => reasons.get(ref),
      close: async () => {
        session.close()
        await rm(push.rejectsFile, { force: true })
      },
    }
  }

  private async preReceive(req: http.IncomingMessage, res: http.ServerResponse, push: Push): Promise<void> {
    const answer = (status: number, text: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) }).end(text)
    }
    const body = await readHookBody(req, MAX_BODY)
    if (!body) return answer(413, 'too many ref updates in one push\n')
    const updates = parseUpdates(body.toString('utf8'))
    if (!updates) return answer(400, 'unexpected ref updates\n')
    const quarantine = await quarantineOf(push.ctx.repo.dir, req.headers['x-vcs-objects'])
    if (quarantine === null) return answer(400, 'unexpected object directory\n')
    let rejections: RefRejection[]
    try {
      rejections = await this.check({ ...push.ctx, updates, quarantine })
    } catch (err) {
      // a refusal the pusher may read (the account store unreachable: 503) is passed on
      if (err instanceof VcsError) return answer(err.statusCode, `${oneLine(err.message)}\n`)
      return answer(500, 'the worker could not check the push\n')
    }
    for (const r of rejections) push.reasons.set(r.ref, r.reason)
    // written whole before the answer: `update` reads it for every ref
    const tmp = `${push.rejectsFile}.tmp`
    await writeFile(tmp, rejections.map((r) => `${r.ref}\n`).join(''))
    await rename(tmp, push.rejectsFile)
    answer(200, rejections.map((r) => `${r.ref}: ${oneLine(r.reason)}\n`).join(''))
  }

  /**
   * HEAD follows the first branch pushed to a repo whose HEAD names no branch that exists
   * (GitLab and Gitea do the same): dulwich, libgit2 and isomorphic-git cannot clone a repo
   * whose HEAD dangles.
   */
  private async postReceive(req: http.IncomingMessage, res: http.ServerResponse, push: Push): Promise<void> {
    const body = await readHookBody(req, MAX_BODY)
    const cwd = push.ctx.repo.dir
    const exists = (ref: string): Promise<boolean> => this.git.exec(['rev-parse', '-q', '--verify', '--end-of-options', ref], { cwd }).then(() => true, () => false)
    const head = (await this.git.exec(['symbolic-ref', '-q', 'HEAD'], { cwd }).catch(() => '')).trim()
    if (body && head && !(await exists(head))) {
      for (const line of body.toString('utf8').split('\n')) {
        const ref = line.split(' ')[2]
        if (ref?.startsWith('refs/heads/') && REF_NAME.test(ref) && await exists(ref)) {
          await this.git.exec(['symbolic-ref', 'HEAD', ref], { cwd })
          break
        }
      }
    }
    res.writeHead(200, { 'content-length': 0 }).end()
  }
}

const oneLine = (s: string): string => s.replace(/[\r\n]+/g, ' ')

/** a ref name as a hook reads one: no spaces or control characters, not an option */
// eslint-disable-next-line no-control-regex
const REF_NAME = /^refs\/[^\x00-\x20\x7f]+$/
/** an object id as git prints one (SHA-1 or SHA-256): never an option to the git commands the ref hooks run */
const OBJECT_ID = /^[0-9a-f]{40}([0-9a-f]{24})?$/

/** `OLD NEW KIND REF` lines, each judged; undefined if any is not one */
function parseUpdates(text: string): RefUpdate[] | undefined {
  const updates: RefUpdate[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const [oldId, newId, kind, ref, ...rest] = line.split(' ')
    if (rest.length || !oldId || !newId || !ref || !OBJECT_ID.test(oldId) || !OBJECT_ID.test(newId) || !REF_NAME.test(ref)) return undefined
    if (!(UPDATE_KINDS as readonly string[]).includes(kind ?? '')) return undefined
    updates.push({ ref, oldId, newId, kind: kind as RefUpdate['kind'] })
  }
  return updates
}

/**
 * The push's quarantine as the hook reported it (its GIT_OBJECT_DIRECTORY), rebuilt from the repo's
 * own objects directory once it is seen to be a quarantine inside it; undefined when the push
 * brought no objects (only deletions), null when it names anything else.
 */
async function quarantineOf(repoDir: string, objects: unknown): Promise<RefContext['quarantine'] | null> {
  if (objects === undefined || objects === null) return undefined
  if (typeof objects !== 'string' || !QUARANTINE.test(path.basename(objects))) return null
  const own = await realpath(path.join(repoDir, 'objects')).catch(() => undefined)
  const parent = await realpath(path.dirname(objects)).catch(() => undefined)
  if (!own || own !== parent) return null
  return { objects: path.join(own, path.basename(objects)), alternate: own }
}
const QUARANTINE = /^tmp_objdir-incoming-[A-Za-z0-9]+$/
