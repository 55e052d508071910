/**
 * Graceful drain (SIGTERM):
 *  1. health and the agent report draining at once, so the balancer stops sending new
 *     sessions after its next checks;
 *  2. for `drainGraceMs` (longer than the balancer's check interval x fall) everything is still
 *     served: whatever the balancer sends before it noticed is not refused;
 *  3. then new sessions (git's ref advertisement, hg's `capabilities`) get 503, while the
 *     follow-up requests of sessions already started are served, until no heavy request has
 *     run for QUIET_MS (a push's pack POST follows its probe POST within milliseconds);
 *  4. then everything new is refused, the listener closes, in-flight answers finish, the hg
 *     children stop.
 * `drainTimeoutMs`, counted from the signal, bounds it all.
 */
import type { FastifyInstance } from 'fastify'
import type { Admission } from '../admission/admission.js'
import type { HealthChecker } from './checks.js'

const QUIET_MS = 1000
const POLL_MS = 50

export interface DrainTimes {
  graceMs: number
  timeoutMs: number
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Resolves once the admission has been idle for `ms` in a row. */
async function quiet(admission: Admission, ms: number, cancelled: () => boolean): Promise<void> {
  let idleSince = admission.idle ? Date.now() : 0
  while ((!idleSince || Date.now() - idleSince < ms) && !cancelled()) {
    await sleep(POLL_MS)
    if (!admission.idle) idleSince = 0
    else if (!idleSince) idleSince = Date.now()
  }
}

/** Drains and closes `app`; resolves true when everything finished in time, false when the bound cut it short. */
export async function drain(app: FastifyInstance, health: HealthChecker, admission: Admission, times: DrainTimes): Promise<boolean> {
  const started = Date.now()
  health.draining = true
  app.log.info({ grace_ms: times.graceMs, timeout_ms: times.timeoutMs }, 'draining: health reports 503; new work accepted during the grace period')
  let timer: NodeJS.Timeout | undefined
  let timedOut = false
  const bound = new Promise<false>((resolve) => { timer = setTimeout(() => { timedOut = true; resolve(false) }, times.timeoutMs) })
  const finished = (async () => {
    await sleep(times.graceMs)
    admission.refuseNewSessions()
    app.log.info({ heavy_in_flight: admission.active }, 'drain grace over: refusing new sessions; serving the sessions in flight')
    await quiet(admission, QUIET_MS, () => timedOut)
    admission.refuseAll()
    await app.close()
    return true as const
  })()
  const clean = await Promise.race([finished, bound])
  clearTimeout(timer)
  app.log[clean ? 'info' : 'error']({ duration_ms: Date.now() - started, heavy_in_flight: admission.active }, clean ? 'drained' : 'drain timed out: forcing the exit')
  return clean
}
