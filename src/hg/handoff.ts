/**
 * Bundle downloads without the worker in the byte path. A clone's `getbundle` answer is the
 * whole repository; proxied, every byte crosses the worker's one thread twice (read from the
 * child, written to the client), which caps a worker at what that thread can copy. Instead,
 * once the worker has authenticated and authorized the request and admitted its work, it hands
 * the client's socket to the `hg serve` child over Node's IPC channel (`subprocess.send` with a
 * socket: SCM_RIGHTS underneath), with the request head rewritten as the proxy would send it
 * (credentials dropped, the child's secret and the user added, `Connection: close`). Our hg
 * extension (vcsworker_ext.py) serves that one request on it and closes it, then reports what
 * it sent. Everything before the answer (auth, refusals, admission, the recovery check) is the
 * worker's, as for proxied requests.
 *
 * Silence is watched twice: the extension cuts off a request hg has been silent on for the
 * configured time (a 504 with our reason when nothing was sent yet), and the worker replaces a
 * child that stops talking on the channel altogether (a frozen process) while it holds
 * connections.
 */
import type { ChildProcess } from 'node:child_process'
import type { Socket } from 'node:net'
import { bareHandle, closeBareHandle, detachFromServer } from '../process/node-internals.js'

export interface HandoffRequest {
  /** the request line and headers as the child reads them, ending with the empty line */
  head: Buffer
  /** the client's address, for hg's REMOTE_ADDR */
  addr: string
  /** what a request hg stays silent on for the line's `silentMs` is answered with, if nothing was sent yet (504) */
  timeoutBody: string
  /** a client that takes nothing for this long is let go */
  idleMs: number
}

export interface HandoffResult {
  /** the status hg answered with; 0 when it answered nothing */
  status: number
  /** body bytes written to the client */
  bytes: number
  /** the answer went out whole */
  complete: boolean
  /** cut off for silence */
  cut: boolean
}

const LOST: HandoffResult = { status: 0, bytes: 0, complete: false, cut: false }

/**
 * The handoff's messages on the child's IPC channel (newline-delimited JSON), one definition for
 * both ends: this file and vcsworker_handoff.py, which checks HANDOFF_PROTOCOL and answers a
 * request of another version as lost (its socket closed, nothing served). A ServeMessage comes
 * with the client's socket as its handle (node-internals.ts); the child answers each with a
 * DoneMessage, and sends `{"cmd":"vcsworker-alive"}` while it holds connections.
 */
export const HANDOFF_PROTOCOL = 1

export interface ServeMessage {
  cmd: 'vcsworker-serve'
  v: number
  id: number
  /** the request head, base64 */
  head: string
  addr: string
  timeoutMs: number
  timeoutBody: string
  idleMs: number
  beatMs: number
}

interface DoneMessage { cmd: 'vcsworker-done'; id: number; status: number; bytes: number; complete: boolean; cut: boolean }

function isDone(m: unknown): m is DoneMessage {
  return typeof m === 'object' && m !== null && (m as { cmd?: unknown }).cmd === 'vcsworker-done' && typeof (m as { id?: unknown }).id === 'number'
}

/** The request head a child reads for a handed-over GET: what the proxy would have sent. */
export function handoffHead(target: string, host: string | undefined, headers: Record<string, string>): Buffer {
  const safeHost = host !== undefined && /^[A-Za-z0-9.:[\]-]{1,255}$/.test(host) ? host : 'localhost'
  let head = `GET ${target} HTTP/1.1\r\nHost: ${safeHost}\r\n`
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`
  return Buffer.from(`${head}Connection: close\r\n\r\n`, 'latin1')
}

/** One child's IPC channel: the connections handed to it, and how long since it spoke. */
export class HandoffLine {
  private nextId = 1
  private readonly jobs = new Map<number, (r: HandoffResult) => void>()
  private idlers: (() => void)[] = []
  private heard = Date.now()
  private silenceTimer: NodeJS.Timeout | undefined

  /**
   * @param silentMs hg silent this long on a request: the extension cuts it off; and with
   *   connections handed over, a child that says nothing on the channel this long (it beats four
   *   times per silentMs, at most every second) is given up: `onSilent`
   */
  /** @param protocol the version the messages carry: HANDOFF_PROTOCOL, another only to see the child refuse it */
  constructor(private readonly proc: ChildProcess, private readonly silentMs: number, private readonly onSilent: () => void, private readonly protocol = HANDOFF_PROTOCOL) {
    proc.on('message', (m: unknown) => {
      this.heard = Date.now()
      if (isDone(m)) this.settle(m.id, { status: m.status, bytes: m.bytes, complete: m.complete === true, cut: m.cut === true })
    })
    // The child exited (or closed the channel): what it held is lost. Node defers 'disconnect'
    // while a sent socket awaits its acknowledgement, so the exit counts too.
    const lost = (): void => { for (const id of [...this.jobs.keys()]) this.settle(id, LOST) }
    proc.once('disconnect', lost)
    proc.once('exit', lost)
  }

  get usable(): boolean { return this.proc.connected }

  /** connections handed over and not yet reported done */
  get pending(): number { return this.jobs.size }

  /** Hands `socket` over; resolves once the child reports the request done (or is gone). */
  hand(socket: Socket, req: HandoffRequest): Promise<HandoffResult> {
    const id = this.nextId++
    return new Promise((resolve) => {
      if (this.jobs.size === 0) this.heard = Date.now()
      // Node holds a sent socket's handle until the child acknowledges it, and keeps holding it
      // when the child dies first: the client would wait out its own timeout. A lost handover
      // closes it (a no-op once Node closed it); one still queued is closed with its socket.
      const handle = bareHandle(socket)
      this.jobs.set(id, (r) => {
        if (r === LOST) closeBareHandle(handle)
        socket.destroy()
        resolve(r)
      })
      this.armSilence()
      const msg: ServeMessage = {
        cmd: 'vcsworker-serve',
        v: this.protocol,
        id,
        head: req.head.toString('base64'),
        addr: req.addr,
        timeoutMs: this.silentMs,
        timeoutBody: req.timeoutBody,
        idleMs: req.idleMs,
        beatMs: this.beatMs(),
      }
      // Sent detached from the HTTP server (node-internals.ts); destroying the handle-less
      // socket afterwards settles the server's count of connections.
      detachFromServer(socket)
      this.proc.send(msg, socket, { keepOpen: false }, (err) => {
        socket.destroy()
        if (err) this.settle(id, LOST)
      })
    })
  }

  /** Resolves once every handed-over connection is reported done (or the child is gone). */
  idle(): Promise<void> {
    if (this.jobs.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.idlers.push(resolve))
  }

  private beatMs(): number {
    return Math.max(25, Math.min(1000, Math.floor(this.silentMs / 4)))
  }

  private settle(id: number, result: HandoffResult): void {
    const resolve = this.jobs.get(id)
    if (!resolve) return
    this.jobs.delete(id)
    resolve(result)
    if (this.jobs.size === 0) for (const idle of this.idlers.splice(0)) idle()
  }

  private armSilence(): void {
    if (this.silenceTimer || this.jobs.size === 0) return
    const wait = Math.max(25, this.heard + this.silentMs - Date.now())
    this.silenceTimer = setTimeout(() => {
      this.silenceTimer = undefined
      if (this.jobs.size === 0) return
      if (Date.now() - this.heard >= this.silentMs) this.onSilent() // its exit settles the jobs
      else this.armSilence()
    }, wait)
    this.silenceTimer.unref()
  }
}
