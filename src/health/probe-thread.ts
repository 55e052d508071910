/**
 * The worker's side of the probe thread (probe-thread.ts): starts it, keeps it fed with the
 * health snapshot, stops it at close.
 */
import { Worker } from 'node:worker_threads'
import type { FastifyBaseLogger } from 'fastify'
import type { HealthChecker } from './checks.js'
import type { FromThread, ProbeThreadInit, ToThread } from './probe-thread-main.js'

/** Load (slots and queue taken) changes with every request: the thread sees it this fresh. */
const SNAPSHOT_EVERY_MS = 100

export class ProbeThread {
  private constructor(private readonly worker: Worker, private readonly exited: Promise<unknown>, private readonly timer: NodeJS.Timeout, private readonly health: HealthChecker, readonly agentPort: number | undefined, readonly healthPort: number | undefined) {}

  /** Starts the listeners asked for (-1 = none); rejects with the reason one cannot listen. */
  static async start(opts: { host: string; agentPort: number; healthPort: number; health: HealthChecker; log: FastifyBaseLogger }): Promise<ProbeThread> {
    const init: ProbeThreadInit = { host: opts.host, agentPort: opts.agentPort, healthPort: opts.healthPort, snapshot: opts.health.snapshot() }
    const worker = new Worker(new URL('./probe-thread-main.js', import.meta.url), { workerData: init })
    const listening = await new Promise<{ agentPort?: number; healthPort?: number }>((resolve, reject) => {
      worker.once('message', (m: FromThread) => ('error' in m ? reject(new Error(m.error)) : 'listening' in m ? resolve(m.listening) : undefined))
      worker.once('error', reject)
      worker.once('exit', (code) => reject(new Error(`probe thread exited (${code})`)))
    }).catch(async (err: unknown) => {
      await worker.terminate()
      throw err
    })
    // The thread's first snapshot is as old as its start-up: replace it, and wait until it is in
    // place, before the ports are announced.
    await new Promise((resolve) => {
      worker.once('message', resolve)
      worker.once('exit', resolve) // and the 'error' handler below says why
      worker.postMessage({ snapshot: opts.health.snapshot(), ack: true } satisfies ToThread)
    })
    worker.removeAllListeners()
    // Running, a thread that fails takes the agent and health ports with it: the balancer marks
    // the worker down, which is right for a worker that cannot answer its probes.
    worker.on('error', (err) => opts.log.error({ err }, 'probe thread failed: agent and health ports closed'))
    const exited = new Promise((r) => worker.once('exit', r))
    const post = (): void => worker.postMessage({ snapshot: opts.health.snapshot() } satisfies ToThread)
    opts.health.onChange = post
    const timer = setInterval(post, SNAPSHOT_EVERY_MS)
    timer.unref()
    return new ProbeThread(worker, exited, timer, opts.health, listening.agentPort, listening.healthPort)
  }

  /** Closes the listeners and ends the thread (terminated if it takes over a second). */
  async stop(): Promise<void> {
    clearInterval(this.timer)
    this.health.onChange = undefined
    this.worker.postMessage({ close: true } satisfies ToThread) // a thread that failed already: nobody reads it
    const t = setTimeout(() => void this.worker.terminate(), 1000)
    await this.exited
    clearTimeout(t)
  }
}
