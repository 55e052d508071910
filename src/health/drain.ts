/**
 * Graceful drain (SIGTERM): health and the agent report draining at once, so the balancer
 * stops sending new sessions after its next checks; new heavy work is still accepted for
 * `drainGraceMs` (longer than the balancer's check interval x fall, so nothing it still sends
 * is refused); then new heavy work is refused with 503, the listener closes, in-flight clones
 * and pushes finish, the hg children stop. `drainTimeoutMs` (from the signal) bounds it all.
 */
import type { FastifyInstance } from 'fastify'
import type { Admission } from '../admission.js'
import type { HealthChecker } from './checks.js'

export interface DrainTimes {
  graceMs: number
  timeoutMs: number
}

/** Drains and closes `app`; resolves true when everything finished in time, false when the bound cut it short. */
export async function drain(app: FastifyInstance, health: HealthChecker, admission: Admission, times: DrainTimes): Promise<boolean> {
  const started = Date.now()
  health.draining = true
  app.log.info({ grace_ms: times.graceMs, timeout_ms: times.timeoutMs }, 'draining: health reports 503; new work accepted during the grace period')
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), times.timeoutMs) })
  const sleep = new Promise<void>((resolve) => setTimeout(resolve, Math.min(times.graceMs, times.timeoutMs)))
  const finished = sleep.then(async () => {
    admission.refuseNew()
    app.log.info({ heavy_in_flight: admission.active }, 'drain grace over: refusing new work, waiting for in-flight requests')
    await app.close()
    return true as const
  })
  const clean = await Promise.race([finished, bound])
  clearTimeout(timer)
  app.log[clean ? 'info' : 'error']({ duration_ms: Date.now() - started, heavy_in_flight: admission.active }, clean ? 'drained' : 'drain timed out: forcing the exit')
  return clean
}
