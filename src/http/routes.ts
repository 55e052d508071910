/**
 * The route table's machinery. A repo path has any number of segments, which find-my-way cannot
 * match in front of a fixed suffix, so a classifier in front of the router (fastify's
 * `rewriteUrl`) reads the raw (undecoded) path, keeps the repo part aside, and rewrites the URL
 * to the fixed route of its endpoint: `/{repo}.git/info/refs` becomes `/.vcs/git_info_refs`.
 * Percent-encoding never reaches the repo-path grammar, it fails it; no repo segment starts
 * with `.`, so no repo URL can name a fixed route. Each repository route is declared once
 * (app.ts) with its id, the kind of repo it serves and the access it needs; registering it
 * installs the pre-handler that authenticates, finds the repo and authorizes the action, so a
 * repository route without authorization cannot be declared.
 */
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify'
import { BadRequestError, MethodNotAllowedError, RepoNotFoundError, WrongKindError } from '../errors.js'
import { resolveGitRepo, resolveHgRepo, type RepoKind, type RepoRef } from '../repos/path.js'
import type { Action, Identity, VcsAuth } from '../auth/plugin.js'
import type { HgRequest } from '../hg/request.js'
import { DUMB_GIT_SUFFIX, GIT_SUFFIXES, HG_BUNDLE_SUFFIX, LFS_SUFFIXES, REPO_ROUTE_IDS, WORKER_OWN_PATHS, type RepoRouteId, type RouteId, type UrlParams } from './route-table.js'

export type { RouteId }

declare module 'fastify' {
  interface FastifyContextConfig {
    /** the route's id: its access-log `route` and its metrics label */
    routeId?: RouteId
    /** how much of an unread request body is read and dropped after a refusal (hg push) */
    discardLimit?: number
  }
  interface FastifyRequest {
    /** the repository a repository route serves, found and authorized by its pre-handler */
    repo: RepoRef
    /** who asked, as the pre-handler authorized them */
    principal: Identity
    /** what the classifier read out of the URL (route-table.ts): the repo part, an LFS oid, a bundle name */
    urlParams: UrlParams
    /** an hg request as judged before the repo was looked up (hg/request.ts): the hg route's access sets it */
    hgRequest: HgRequest
  }
}

const FIXED_PREFIX = '/.vcs/'
/** where a URL naming a fixed route itself goes: no route, 404 */
const NO_ROUTE = '/.vcs-no-route'

/** Fixed URLs of the repository endpoints (and the dumb-HTTP refusal), as the classifier rewrites them. */
export const REPO_URLS = Object.fromEntries([...REPO_ROUTE_IDS, 'git_dumb'].map((id) => [id, `${FIXED_PREFIX}${id}`])) as Record<RepoRouteId | 'git_dumb', string>

/** the table's paths as the classifier matches them (route-table.ts), the repo part captured */
const LFS = LFS_SUFFIXES.map(([suffix, id]) => [new RegExp(`^/(.+?)${suffix}$`), id] as const)
const DUMB = new RegExp(`${DUMB_GIT_SUFFIX}$`)
const HG_BUNDLE = new RegExp(`^(/.+?)${HG_BUNDLE_SUFFIX}$`)
/** the reserved URLs and `/`, which tells what the server is */
const RESERVED = new RegExp(`^(${[...WORKER_OWN_PATHS.prefixes, ...WORKER_OWN_PATHS.exact.map((p) => `${p}$`), '/$'].join('|')})`)

/**
 * What the classifier read out of each request's URL, until the route's pre-handler moves it to
 * the request (`req.urlParams`): `rewriteUrl` runs before fastify has made its request object.
 */
const classified = new WeakMap<IncomingMessage, UrlParams>()
const params = (m: RegExpExecArray): UrlParams => {
  const p: UrlParams = { repoPath: m[1]! }
  for (const [k, v] of Object.entries(m.groups ?? {})) if (v !== undefined) p[k as 'oid'] = v
  return p
}

/**
 * fastify's `rewriteUrl`: the fixed route a raw URL takes, remembering its repo part. Reserved
 * URLs and what is no repository URL keep their URL (and find their route or the 404); with
 * `hg` off, what is not git is no repository URL.
 */
export function urlClassifier(hg: boolean): (req: IncomingMessage) => string {
  return (req) => {
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const rawPath = q === -1 ? url : url.slice(0, q)
    const query = q === -1 ? '' : url.slice(q)
    if (!decodes(rawPath)) return url // the router answers 400 malformed URL
    if (rawPath.startsWith(FIXED_PREFIX)) return NO_ROUTE // the fixed routes are reached only through here
    for (const [suffix, id] of GIT_SUFFIXES) {
      if (rawPath.endsWith(suffix)) {
        classified.set(req, { repoPath: rawPath.slice(1, -suffix.length) })
        return REPO_URLS[id] + query
      }
    }
    for (const [pattern, id] of LFS) {
      const m = pattern.exec(rawPath)
      if (m) {
        classified.set(req, params(m))
        if (id === 'lfs_locks') return REPO_URLS.lfs_locks + query
        return REPO_URLS[id === 'lfs_download' && req.method === 'PUT' ? 'lfs_upload' : id]
      }
    }
    const dumb = DUMB.exec(rawPath)
    if (dumb) return REPO_URLS.git_dumb
    if (!hg || RESERVED.test(rawPath)) return url
    const bundle = HG_BUNDLE.exec(rawPath)
    if (bundle) {
      classified.set(req, params(bundle))
      return REPO_URLS.hg_clonebundle
    }
    classified.set(req, { repoPath: rawPath })
    return REPO_URLS.hg_proxy + query
  }
}

/** A repository route, declared once in the route table. */
export interface RepoRoute {
  id: RepoRouteId
  /** the URL names the repo exactly: a path under it (hgweb's pages) is not this route's */
  exact?: true
  methods: ('GET' | 'POST' | 'PUT')[]
  kind: RepoKind
  /** the action the request needs, told from the request before the repo is looked up (may refuse it: 400) */
  access: Action | ((req: FastifyRequest) => Action)
  discardLimit?: number
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply>
}

const ALL_METHODS: HTTPMethods[] = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']

/** Registers the repository routes: each one's pre-handler authorizes before its handler runs; other methods get 405. */
interface RouteDeps {
  auth: VcsAuth
  reposRoot: string
  /** the public base URL of a request (publicBase), for the clone line of a wrong-kind answer */
  baseOf?: (req: FastifyRequest) => string | undefined
}

export function registerRepoRoutes(app: FastifyInstance, routes: RepoRoute[], deps: RouteDeps): void {
  app.decorateRequest('repo', null as never)
  app.decorateRequest('principal', null as never)
  app.decorateRequest('urlParams', null as never)
  app.decorateRequest('hgRequest', null as never)
  for (const route of routes) registerRepoRoute(app, route, deps)
}

/**
 * A git client pointed at an hg repo (or an hg client at a git one) that may read it is told
 * what to run instead; anyone else gets the not-found the lookup gave (401 or 404).
 */
async function wrongKind(req: FastifyRequest, kind: RepoKind, repoPath: string, deps: RouteDeps): Promise<void> {
  const other = kind === 'git'
    ? await resolveHgRepo(deps.reposRoot, repoPath.replace(/\.git$/, '')).catch(() => undefined)
    : await resolveGitRepo(deps.reposRoot, gitPart(repoPath)).catch(() => undefined)
  if (!other) return
  try {
    await deps.auth.authorize(req, other, 'read')
  } catch {
    return // may not read it: its existence is not revealed
  }
  const url = `${deps.baseOf?.(req) ?? ''}/${other.name}`
  const message = other.kind === 'hg' ? `this is a Mercurial repository: use hg clone ${url}` : `this is a git repository: use git clone ${url}`
  req.accessRecord.repo = other.name
  throw new WrongKindError(message)
}

/** The repo part of an hg URL path read as a git one: up to a segment ending in .git, else all of it. */
function gitPart(repoPath: string): string {
  const segments = repoPath.split('/').filter(Boolean)
  const end = segments.findIndex((s) => s.endsWith('.git'))
  return segments.slice(0, end < 0 ? segments.length : end + 1).join('/')
}

function registerRepoRoute(app: FastifyInstance, route: RepoRoute, deps: RouteDeps): void {
  const url = REPO_URLS[route.id]
  const config = { routeId: route.id, discardLimit: route.discardLimit }
  const resolve = route.kind === 'git' ? resolveGitRepo : resolveHgRepo
  app.route({
    method: route.methods,
    url,
    config,
    preHandler: async (req) => {
      const action = typeof route.access === 'function' ? route.access(req) : route.access
      const { repo, principal } = await deps.auth.authorizeLookup(req, async () => {
        const urlParams = classified.get(req.raw)
        if (urlParams === undefined) throw new RepoNotFoundError() // not classified: cannot happen through the classifier
        req.urlParams = urlParams
        const { repoPath } = urlParams
        let found: RepoRef
        try {
          found = await resolve(deps.reposRoot, repoPath)
        } catch (err) {
          if (err instanceof RepoNotFoundError) await wrongKind(req, route.kind, repoPath, deps)
          throw err
        }
        if (route.exact && repoPath.replace(/^\//, '') !== found.name) throw new RepoNotFoundError()
        req.accessRecord.repo = found.name
        return found
      }, action)
      req.repo = repo
      req.principal = principal
    },
    handler: route.handler,
  })
  const allowed = route.methods.includes('GET') ? [...route.methods, 'HEAD'] : route.methods
  const others = ALL_METHODS.filter((m) => !allowed.includes(m as 'GET'))
  app.route({ method: others, url, config, handler: async () => { throw new MethodNotAllowedError(route.methods) } })
}

/** git's dumb HTTP: refused with the reason, before anything is looked up. */
export function registerDumbRoute(app: FastifyInstance): void {
  app.route({
    method: ALL_METHODS,
    url: REPO_URLS.git_dumb,
    config: { routeId: 'git_dumb' },
    handler: async () => { throw new BadRequestError(DUMB_HTTP) },
  })
}

export const DUMB_HTTP = 'dumb HTTP is not supported: use a git client that speaks smart HTTP (git 1.6.6 or newer)'

function decodes(rawPath: string): boolean {
  try {
    decodeURI(rawPath)
    return true
  } catch {
    return false
  }
}
