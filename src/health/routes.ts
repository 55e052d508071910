/**
 * `/health/live`, `/health/git`, `/health/hg`, `/health/ready` on the worker's port: cached
 * results only (see checks.ts). One JSON entry per check; 503 names the failing checks. The
 * probe thread (probe-thread.ts) answers the same on `healthPort`, away from this event loop.
 */
import type { FastifyInstance } from 'fastify'
import type { RouteId } from '../http/routes.js'
import { ENDPOINT_CHECKS, endpointAnswer, type HealthChecker } from './checks.js'

export function registerHealthRoutes(app: FastifyInstance, checker: HealthChecker): void {
  app.get('/health/live', { config: { routeId: 'health_live' } }, async (_req, reply) => {
    return reply.type('text/plain').send('ok\n')
  })
  for (const [url, names] of Object.entries(ENDPOINT_CHECKS)) {
    app.get(url, { config: { routeId: `health_${url.slice('/health/'.length)}` as RouteId } }, async (_req, reply) => {
      const { code, body } = endpointAnswer(checker.snapshot(), names, Date.now())
      return reply.code(code).header('cache-control', 'no-store').send(body)
    })
  }
}
