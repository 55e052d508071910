/**
 * Builds the fastify app from its parts. Never listens: cli/main.ts (serve) and the tests do. Every route
 * and plugin of the worker is listed here, in one place.
 */
import { existsSync, realpathSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import path from 'node:path'
import { HealthChecker } from './health/checks.js'
import { registerHealthRoutes } from './health/routes.js'
import { ProbeThread } from './health/probe-thread.js'
import { drain } from './health/drain.js'
import { Admission } from './admission/admission.js'
import { WorkerMetrics } from './metrics/metrics.js'
import Fastify, { LogController, type FastifyInstance, type FastifyRequest } from 'fastify'
import { serverFactory } from './http/server.js'
import type { Logger } from 'pino'
import { scryptParams } from './auth/password.js'
import type { Config } from './config/load.js'
import { clientErrorHandler, frameworkErrors, installErrorHandlers } from './errors.js'
import { backendOf, installAccessLog, loggerOptions, requestIdGenerator } from './log.js'
import { createGitRunner, type GitRunner } from './git/spawn.js'
import { gitRoutes } from './git/routes.js'
import { PushHooks } from './git/ref-hooks.js'
import { HookService } from './git/hook-service.js'
import authPlugin from './auth/plugin.js'
import { openStore } from './auth/open.js'
import { StaleRefLocks } from './git/ref-locks.js'
import { PackObjectsCache } from './git/pack-cache.js'
import type { AuthStore } from './auth/store.js'
import { registerDumbRoute, registerRepoRoutes, urlClassifier, type RepoRoute } from './http/routes.js'
import { HgServePool } from './hg/serve-pool.js'
import { hgCloneBundleRoute, hgRoute } from './hg/routes.js'
import { CloneBundles } from './hg/clone-bundles.js'
import { JournalRecovery } from './hg/recover.js'
import { lfsRoutes } from './lfs/routes.js'
import { FsLfsStore } from './lfs/store.js'
import { lockHook, lockRoute } from './lfs/locks.js'
import { publicBase, trustedPeers } from './http/headers.js'
import { VERSION } from './install.js'
import { onSpawnHelperWarning } from './process/helper-client.js'

declare module 'fastify' {
  interface FastifyInstance {
    hgPool?: HgServePool
    health: HealthChecker
    admission: Admission
    metrics: WorkerMetrics
    /** the agent-check and health listeners' thread, when `agentPort` or `healthPort` is not -1 */
    probes?: ProbeThread
    /** Graceful drain then close (SIGTERM); resolves false when `drainTimeoutMs` cut it short. */
    drain(): Promise<boolean>
  }
}

export interface AppDeps {
  /** a pino logger to use instead of one built from the config (tests capture logs this way) */
  logger?: Logger
  git?: GitRunner
  /** an auth store to use instead of opening the configured one (closed by the caller) */
  store?: AuthStore
}

/** Builds the worker app for `config`. */
export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  // one judgement of which peers' forwarding headers count: fastify's (req.ip, req.host,
  // req.protocol) and the URLs the worker hands out (LFS hrefs, bundle URLs, GET /)
  const trustedPeer = trustedPeers(config.trustedProxies)
  const baseOf = (req: FastifyRequest): string | undefined => publicBase(req, config.publicUrl, trustedPeer)
  const app = Fastify({
    ...(deps.logger ? { loggerInstance: deps.logger } : { logger: loggerOptions(config.logLevel) }),
    // Fastify's two lines per request give way to our one access line (log.ts).
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'req_id' }),
    genReqId: requestIdGenerator(),
    serverFactory: serverFactory(config),
    return503OnClosing: true,
    // X-Forwarded-For is believed only from the configured proxies (HAProxy); else the socket.
    trustProxy: config.trustedProxies.length ? trustedPeer : false,
    connectionTimeout: config.idleTimeoutMs,
    clientErrorHandler,
    frameworkErrors,
    rewriteUrl: urlClassifier(config.hgProcesses > 0),
  }) as unknown as FastifyInstance
  try {
    await assemble(app, config, deps, baseOf)
  } catch (err) {
    // Whatever was started (hg children, the hook endpoint, timers) stops with the app.
    await app.close().catch(() => {})
    throw err
  }
  return app
}

/** Registers every part of the worker on `app`; the route table of the whole worker. */
async function assemble(app: FastifyInstance, config: Config, deps: AppDeps, baseOf: (req: FastifyRequest) => string | undefined): Promise<void> {
  installErrorHandlers(app)
  // Metrics read the admission queue and health state when scraped; requests reach them through
  // the access record, created here first so every request is counted.
  let metrics: WorkerMetrics | undefined
  const admission = new Admission(config, {
    admitted: (wait, cls) => metrics?.admitted(wait, cls),
    rejected: (reason, cls) => metrics?.refused(reason, cls),
  })
  app.decorate('admission', admission)
  installAccessLog(app, {
    started: (req) => metrics?.started(backendOf(req.accessRecord.route)) ?? (() => {}),
    finished: (record) => metrics?.observe(record),
  })

  // Request bodies of repository routes are streamed by their handlers, never parsed here.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_req, _payload, done) => done(null))

  onSpawnHelperWarning((message) => app.log.warn(message))
  const git = deps.git ?? createGitRunner(config)
  const reposRoot = realpathSync(config.reposDir)
  const store = deps.store ?? await openStore(config, {
    onEvent: (event, detail) => {
      if (event === 'lost') app.log.warn({ detail }, 'auth store: lost the connection that listens for changes; reconnecting')
      else if (event === 'listening') app.log.info('auth store: listening for changes')
    },
  })
  if (!deps.store) app.addHook('onClose', async () => store.close())
  await app.register(authPlugin, {
    store,
    realm: config.realm,
    cacheTtlMs: config.authCacheTtlMs,
    throttleLimit: config.loginFailureLimit,
    addressThrottleLimit: config.loginFailureAddressLimit,
    userThrottleLimit: config.loginFailureUserLimit,
    throttleWindowMs: config.loginFailureWindowMs,
    passwordQueueLimit: config.passwordQueueLimit,
    scrypt: scryptParams(config.kdfCost),
  })
  // the one service git's hooks call: pushes' ref checks, fetches' pack cache
  const hooks = new HookService(config.hooksDir)
  await hooks.start()
  app.addHook('onClose', () => hooks.stop())
  // before the ref hooks judge a push, locks a killed git left on its refs are cleared (git takes them after)
  const staleLocks = new StaleRefLocks(config.refLockStaleMs, app.log)
  const refHooks = new PushHooks(hooks, async (ctx) => {
    await staleLocks.clear(ctx.repo.dir, ctx.updates.map((u) => u.ref))
    return app.vcsAuth.checkRefUpdates(ctx)
  }, config.tmpDir, git, config.gitBin)

  // The canary: a repo of our own (outside the repos dir) whose ref advertisement proves git works.
  const canary = path.join(config.dataDir, 'canary.git')
  if (!existsSync(path.join(canary, 'HEAD'))) {
    // Workers of a pool share the data dir and may start together: each builds the canary under
    // its own name and renames it into place; whoever comes second keeps the first one's.
    const tmp = `${canary}.tmp-${process.pid}-${Date.now()}`
    await git.exec(['init', '--quiet', '--bare', '--', tmp])
    await rename(tmp, canary).catch(async (err: NodeJS.ErrnoException) => {
      await rm(tmp, { recursive: true, force: true })
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err
    })
  }

  let packCache: PackObjectsCache | undefined
  if (config.packCache) {
    packCache = new PackObjectsCache({
      dir: config.packCacheDir || path.join(config.dataDir, 'pack-cache'),
      hooks,
      gitBin: config.gitBin,
      env: { PATH: config.envPath, HOME: config.homeDir, GIT_CONFIG_NOSYSTEM: '1', LC_ALL: 'C' },
      maxAgeMs: config.packCacheMaxAgeMs,
      maxBytes: config.packCacheMaxBytes,
      writeOnOccurrence: config.packCacheWriteOn,
      diskFloorBytes: config.diskFreeFloorBytes,
      maxProductions: config.heavyLimit,
      maxInputBytes: config.maxNegotiationBytes,
      killGraceMs: config.killGraceMs,
      nice: config.childNice,
      viaHelper: config.spawnHelper,
      log: app.log,
    })
    packCache.start()
  }
  const repoRoutes: RepoRoute[] = gitRoutes({ config, git, admission, refHooks, log: app.log, packCache })
  repoRoutes.push(...lfsRoutes({ config, store: new FsLfsStore(), auth: app.vcsAuth, admission, log: app.log, baseOf }), lockRoute({ store, admission, maxPerRepo: config.lfsMaxLocksPerRepo }))
  app.vcsAuth.addRefHook(lockHook(store, git, config.lfsLockCheckTimeoutMs))
  if (config.hgProcesses > 0) {
    const pool = new HgServePool(config, app.log)
    await pool.start()
    app.decorate('hgPool', pool)
    // onClose runs after in-flight requests finished: only then stop the children.
    app.addHook('onClose', () => pool.stop())
    const hgDeps = { config, pool, admission, baseOf, recovery: new JournalRecovery(config, app.log), refused: () => metrics?.refused('no_hg_child', 'none') }
    if (config.hgCloneBundles) {
      const cloneBundles = new CloneBundles(config, app.log)
      app.addHook('onClose', () => cloneBundles.stop())
      repoRoutes.push(hgRoute({ ...hgDeps, cloneBundles }), hgCloneBundleRoute({ ...hgDeps, cloneBundles }))
    } else {
      repoRoutes.push(hgRoute(hgDeps))
    }
  }
  const health = new HealthChecker(config, git, app.hgPool, canary, admission, store, packCache)
  await health.start()
  app.decorate('health', health)
  app.addHook('onClose', async () => health.stop())
  registerHealthRoutes(app, health)
  metrics = new WorkerMetrics({ repoLabel: config.metricsRepoLabel }, { admission, health, hgPool: app.hgPool, packCache })
  app.decorate('metrics', metrics)
  app.get('/metrics', { config: { routeId: 'metrics' } }, async (_req, reply) => {
    return reply.type(metrics.registry.contentType).header('cache-control', 'no-store').send(await metrics.registry.metrics())
  })
  if (config.agentPort >= 0 || config.healthPort >= 0) {
    const probes = await ProbeThread.start({ host: config.host, agentPort: config.agentPort, healthPort: config.healthPort, health, log: app.log })
      .catch((err: unknown) => { throw new Error(`cannot listen for probes on ${config.host} (agentPort ${config.agentPort}, healthPort ${config.healthPort}): ${(err as Error).message}`) })
    app.decorate('probes', probes)
    app.addHook('onClose', () => probes.stop())
  }
  app.decorate('drain', () => drain(app, health, admission, { graceMs: config.drainGraceMs, timeoutMs: config.drainTimeoutMs }))

  // The route table: every repository route with its id and the access it needs (http/routes.ts).
  registerRepoRoutes(app, repoRoutes, { auth: app.vcsAuth, reposRoot, baseOf })
  registerDumbRoute(app)
  app.get('/', { config: { routeId: 'root' } }, async (req, reply) => reply.type('text/plain').send(rootLine(baseOf(req) ?? '', config.hgProcesses > 0)))
}

/** What `GET /` says: what this server is, its version, and how to clone from it. */
function rootLine(base: string, hg: boolean): string {
  return `vcs-worker ${VERSION}: a git${hg ? ' and Mercurial' : ''} server. Clone with: git clone ${base}/<repo>.git${hg ? ` or hg clone ${base}/<repo>` : ''}\n`
}
