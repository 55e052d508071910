/**
 * Per-ref authorization for pushes. receive-pack runs with `core.hooksPath` pointing at hook
 * scripts the worker writes: `pre-receive` asks this loopback endpoint which updates the ref
 * hooks refuse; `update` then declines exactly those refs, and ReportRewriter turns git's
 * `hook declined` into our reason. The other receive-side hooks chain to the repository's own.
 * Each push gets a random token naming its principal and repo; the endpoint answers nothing
 * without one.
 */
import http from 'node:http'
import { VcsError } from '../errors.js'
import { randomBytes } from 'node:crypto'
import { mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { realpath, rm } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { RefContext, RefRejection, RefUpdate } from '../auth/plugin.js'
import { HOOK_PROTOCOL, type HookAnswer, type HookError, type HookRequest } from './hook-protocol.js'

/** Hooks receive-pack may run that are not ours: each chains to the repository's own. */
const PASS_THROUGH = ['post-update', 'push-to-checkout']

/**
 * post-receive: HEAD follows the first branch pushed to a repo whose HEAD names no branch that
 * exists (GitLab and Gitea do the same): dulwich, libgit2 and isomorphic-git cannot clone a repo
 * whose HEAD dangles. Then the repository's own post-receive, with the same input.
 */
const POST_RECEIVE = `#!/bin/sh
git="\${VCS_WORKER_GIT:-git}" # the worker's gitBin
input=$(cat)
head=$("$git" symbolic-ref -q HEAD) || head=
if [ -n "$head" ] && ! "$git" rev-parse -q --verify "$head" >/dev/null; then
  first=$(printf '%s\\n' "$input" | while read -r old new ref; do
    case "$ref" in refs/heads/*) if "$git" rev-parse -q --verify "$ref" >/dev/null; then echo "$ref"; break; fi ;; esac
  done)
  if [ -n "$first" ]; then "$git" symbolic-ref HEAD "$first"; fi
fi
if [ -x hooks/post-receive ]; then printf '%s\\n' "$input" | exec hooks/post-receive "$@"; fi
exit 0
`
const MAX_BODY = 4 * 1024 * 1024

export interface PushSession {
  token: string
  rejectsFile: string
  /** our reason for a ref we declined */
  reasonFor(ref: string): string | undefined
  close(): Promise<void>
}

type Check = (ctx: RefContext) => Promise<RefRejection[]>

/** Writes the hook scripts into `dir` (atomically, so concurrent workers may share it). */
export function installHookScripts(dir: string): void {
  mkdirSync(dir, { recursive: true })
  const preReceive = path.join(path.dirname(fileURLToPath(import.meta.url)), 'hooks', 'pre-receive.js')
  const scripts: Record<string, string> = {
    'pre-receive': `#!/bin/sh\nexec '${process.execPath}' '${preReceive}'\n`,
    update: '#!/bin/sh\n'
      + 'if [ -f "$VCS_WORKER_HOOK_REJECTS" ] && grep -qxF -- "$1" "$VCS_WORKER_HOOK_REJECTS"; then exit 1; fi\n'
      + 'if [ -x hooks/update ]; then exec hooks/update "$@"; fi\nexit 0\n',
    'post-receive': POST_RECEIVE,
  }
  for (const name of PASS_THROUGH) scripts[name] = `#!/bin/sh\nif [ -x hooks/${name} ]; then exec hooks/${name} "$@"; fi\nexit 0\n`
  for (const [name, body] of Object.entries(scripts)) {
    const tmp = path.join(dir, `.${name}.${process.pid}`)
    writeFileSync(tmp, body, { mode: 0o755 })
    renameSync(tmp, path.join(dir, name))
  }
}

/** The loopback endpoint the pre-receive hook calls, and the per-push sessions. */
export class RefHookServer {
  private server: http.Server | undefined
  private url = ''
  private readonly sessions = new Map<string, { ctx: Omit<RefContext, 'updates'>; reasons: Map<string, string> }>()

  /** @param gitBin the git the hooks run (the worker's gitBin), as VCS_WORKER_GIT */
  constructor(private readonly check: Check, private readonly tmpDir: string, private readonly gitBin = 'git') {}

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => { void this.handle(req, res) })
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve))
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}/pre-receive`
  }

  async stop(): Promise<void> {
    if (!this.server) return
    this.server.closeAllConnections()
    await new Promise((resolve) => this.server!.close(resolve))
  }

  /** Environment for one receive-pack run. */
  open(ctx: Omit<RefContext, 'updates'>): PushSession & { env: Record<string, string> } {
    const token = randomBytes(24).toString('base64url')
    const reasons = new Map<string, string>()
    this.sessions.set(token, { ctx, reasons })
    const rejectsFile = path.join(this.tmpDir, `rejects-${token}`)
    return {
      token,
      rejectsFile,
      env: { VCS_WORKER_HOOK_URL: this.url, VCS_WORKER_HOOK_TOKEN: token, VCS_WORKER_HOOK_REJECTS: rejectsFile, VCS_WORKER_GIT: this.gitBin },
      reasonFor: (ref) => reasons.get(ref),
      close: async () => {
        this.sessions.delete(token)
        await rm(rejectsFile, { force: true })
      },
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = (status: number, body: HookAnswer | HookError): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
    }
    try {
      const chunks: Buffer[] = []
      let size = 0
      for await (const c of req) {
        size += (c as Buffer).length
        if (size > MAX_BODY) return reply(413, { error: 'too large' })
        chunks.push(c as Buffer)
      }
      const { v, token, updates, objects } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { [K in keyof HookRequest]?: unknown }
      if (v !== HOOK_PROTOCOL) return reply(400, { error: 'protocol', reason: `the push hook speaks protocol ${String(v)}, this worker ${HOOK_PROTOCOL}: restart the workers sharing this data dir on one version` })
      const session = typeof token === 'string' ? this.sessions.get(token) : undefined
      if (!session || !Array.isArray(updates)) return reply(403, { error: 'unknown push' })
      const checked = updates.filter(isRefUpdate)
      if (checked.length !== updates.length) return reply(400, { error: 'bad updates' })
      const quarantine = await quarantineOf(session.ctx.repo.dir, objects)
      if (quarantine === null) return reply(400, { error: 'bad quarantine' })
      const rejections = await this.check({ ...session.ctx, updates: checked, quarantine })
      for (const r of rejections) session.reasons.set(r.ref, r.reason)
      reply(200, { rejections } satisfies HookAnswer)
    } catch (err) {
      // a refusal the pusher may read (the account store unreachable: 503) is passed on
      if (err instanceof VcsError) return reply(err.statusCode, { error: 'check failed', reason: err.message })
      reply(500, { error: 'check failed' })
    }
  }
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

/** an object id as git prints one (SHA-1 or SHA-256): never an option to the git commands the ref hooks run */
const OBJECT_ID = /^[0-9a-f]{40}([0-9a-f]{24})?$/

function isRefUpdate(u: unknown): u is RefUpdate {
  const x = u as RefUpdate
  return typeof x?.ref === 'string' && typeof x.oldId === 'string' && typeof x.newId === 'string'
    && OBJECT_ID.test(x.oldId) && OBJECT_ID.test(x.newId) && ['create', 'update', 'force', 'delete'].includes(x.kind)
}
