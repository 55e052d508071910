/**
 * `/health/live`, `/health/git`, `/health/hg`, `/health/ready`: cached results only (see
 * checks.ts). One JSON entry per check; 503 names the failing checks.
 */
import type { FastifyInstance } from 'fastify'
import { ALL_CHECKS, GIT_CHECKS, HG_CHECKS, type CheckName, type HealthChecker } from './checks.js'

export function registerHealthRoutes(app: FastifyInstance, checker: HealthChecker): void {
  app.get('/health/live', async (req, reply) => {
    req.access.route = 'health_live'
    return reply.type('text/plain').send('ok\n')
  })
  const endpoint = (url: string, route: string, names: CheckName[]): void => {
    app.get(url, async (req, reply) => {
      req.access.route = route
      const { ok, checks } = checker.report(names)
      const failing = Object.entries(checks).filter(([, c]) => c.status === 'fail').map(([n]) => n)
      return reply.code(ok ? 200 : 503).header('cache-control', 'no-store').send({ status: ok ? 'ok' : 'fail', failing, checks })
    })
  }
  endpoint('/health/git', 'health_git', GIT_CHECKS)
  endpoint('/health/hg', 'health_hg', HG_CHECKS)
  endpoint('/health/ready', 'health_ready', ALL_CHECKS)
}
