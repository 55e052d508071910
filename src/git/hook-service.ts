/**
 * The one loopback service git's hooks call, and the hook program they are. The worker installs
 * the program (src/git/hook.c, built into dist/bin/vcs-worker-hook) into its hooks dir under
 * every hook's name; receive-pack finds it there through `core.hooksPath`, upload-pack through
 * `uploadpack.packObjectsHook`. Each git run the worker starts gets one session: a random token
 * in its environment that names the repository and what the run may ask (a push's ref checks, a
 * fetch's pack cache). The service answers nothing without a live session, from another
 * directory, or in another protocol (hook-protocol.ts); the handlers (ref-hooks.ts for pushes,
 * pack-cache.ts for fetches) see only calls that passed.
 */
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, symlinkSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { HOOK_NAMES, HOOK_PROTOCOL, type HookEndpoint } from './hook-protocol.js'

/** The hook program as `npm run build` and set-up build it. */
export const HOOK_PROGRAM = fileURLToPath(new URL('../../bin/vcs-worker-hook', import.meta.url))

/** What a session is for: which endpoints it may call. */
export type SessionKind = 'push' | 'fetch'
const KIND_OF: Record<HookEndpoint, SessionKind> = { 'pre-receive': 'push', 'post-receive': 'push', 'pack-objects': 'fetch' }

export type HookHandler<S> = (req: http.IncomingMessage, res: http.ServerResponse, session: S) => Promise<void>

export interface HookSession {
  token: string
  /** what the git run's environment needs to reach the service */
  env: Record<string, string>
  close(): void
}

interface Open { kind: SessionKind; repoDir: string; data: unknown }

export class HookService {
  private server: http.Server | undefined
  private url = ''
  private readonly sessions = new Map<string, Open>()
  private readonly handlers = new Map<HookEndpoint, HookHandler<unknown>>()

  /** @param hooksDir where the hook program is installed (shared by the workers of one data dir) */
  constructor(readonly hooksDir: string) {}

  /** The path git runs for the hook of this name. */
  hookPath(name: typeof HOOK_NAMES[number]): string {
    return path.join(this.hooksDir, name)
  }

  async start(): Promise<void> {
    this.install()
    this.server = http.createServer((req, res) => { void this.handle(req, res) })
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve))
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`
  }

  async stop(): Promise<void> {
    if (!this.server) return
    this.server.closeAllConnections()
    await new Promise((resolve) => this.server!.close(resolve))
  }

  /** The handler of one endpoint; it is given the data of the session that called. */
  route<S>(endpoint: HookEndpoint, handler: HookHandler<S>): void {
    this.handlers.set(endpoint, handler as HookHandler<unknown>)
  }

  /** A session for one git run in `repoDir` (its real path, as the hook's cwd will be). */
  open(kind: SessionKind, repoDir: string, data: unknown): HookSession {
    const token = randomBytes(24).toString('base64url')
    this.sessions.set(token, { kind, repoDir, data })
    return {
      token,
      env: { VCS_WORKER_HOOK_URL: this.url, VCS_WORKER_HOOK_TOKEN: token },
      close: () => { this.sessions.delete(token) },
    }
  }

  /**
   * Copies the program into the hooks dir and links every hook name to it, each atomically
   * (workers sharing a data dir may start together; a git run in flight keeps the file it opened).
   */
  private install(): void {
    if (!existsSync(HOOK_PROGRAM)) throw new Error(`the git hook program is not built (${HOOK_PROGRAM}): run \`npm run build\``)
    mkdirSync(this.hooksDir, { recursive: true })
    const program = path.join(this.hooksDir, 'vcs-worker-hook')
    const tmp = `${program}.${process.pid}`
    copyFileSync(HOOK_PROGRAM, tmp)
    renameSync(tmp, program)
    for (const name of HOOK_NAMES) {
      const link = path.join(this.hooksDir, `.${name}.${process.pid}`)
      rmSync(link, { force: true })
      symlinkSync('vcs-worker-hook', link)
      renameSync(link, path.join(this.hooksDir, name))
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const refuse = (status: number, text: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain', connection: 'close' }).end(`${text}\n`)
    }
    // the caller is judged on its head before a byte of its body is read
    const endpoint = (req.url ?? '').slice(1) as HookEndpoint
    const handler = req.method === 'POST' ? this.handlers.get(endpoint) : undefined
    if (!handler) return refuse(404, 'no such hook call')
    const spoken = req.headers['x-vcs-hook-protocol']
    if (spoken !== String(HOOK_PROTOCOL)) {
      return refuse(409, `the hook program speaks protocol ${String(spoken ?? 'none')}, this worker ${HOOK_PROTOCOL}: restart the workers sharing this data dir on one version`)
    }
    const session = this.sessions.get(String(req.headers['x-vcs-token'] ?? ''))
    if (!session || session.kind !== KIND_OF[endpoint] || path.resolve(String(req.headers['x-vcs-cwd'] ?? '')) !== session.repoDir) {
      return refuse(403, 'unknown hook call')
    }
    try {
      await handler(req, res, session.data)
    } catch {
      if (!res.headersSent) refuse(500, 'the worker could not answer the hook')
      else res.destroy()
    }
  }
}

/** A hook call's body, at most `max` bytes; undefined past that. */
export async function readHookBody(req: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > max) return undefined
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of req) {
    size += (c as Buffer).length
    if (size > max) return undefined
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks)
}
