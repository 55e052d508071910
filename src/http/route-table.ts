/**
 * What a URL is, written once for the worker and for the balancer in front of it: the paths of
 * each repository endpoint, the worker's own URLs, and which backend pool each route belongs
 * to. The worker's classifier (routes.ts) matches requests against these, and the HAProxy
 * frontend's ACLs are rendered from them (tools/pool/haproxy-config.ts), so the two cannot
 * disagree about where a request goes (test/e2e/route-agreement.test.ts feeds one corpus of
 * URLs through both, with a real HAProxy).
 */
import { HG_COMMAND_NAMES } from '../hg/commands.js'

/**
 * The repository routes: each is declared with its handler, access and limits as a RepoRoute
 * (http/routes.ts) in its module (git/routes.ts, lfs/routes.ts, hg/routes.ts), and matched by
 * the paths below. A new one is an id here, its path below, and its RepoRoute.
 */
export const REPO_ROUTE_IDS = [
  'git_info_refs', 'git_upload_pack', 'git_receive_pack', 'hg_proxy', 'hg_clonebundle',
  'lfs_batch', 'lfs_download', 'lfs_upload', 'lfs_verify', 'lfs_locks',
] as const
export type RepoRouteId = typeof REPO_ROUTE_IDS[number]

export type RouteId = RepoRouteId | 'git_dumb' | 'health_live' | 'health_ready' | 'health_git' | 'health_hg' | 'metrics' | 'root' | 'other'

/** git smart HTTP's endpoints (git's http-protocol.txt): the path ends with one of these */
export const GIT_SUFFIXES = [
  ['/info/refs', 'git_info_refs'],
  ['/git-upload-pack', 'git_upload_pack'],
  ['/git-receive-pack', 'git_receive_pack'],
] as const satisfies readonly (readonly [string, RouteId])[]

/**
 * Git LFS (git-lfs's docs/api), under a git repo: `/{repo}[.git]` then one of these (regular
 * expression sources that HAProxy's PCRE and JavaScript read alike; their named groups become
 * the request's UrlParams). A PUT to an object is lfs_upload.
 */
export const LFS_SUFFIXES = [
  ['/info/lfs/objects/batch', 'lfs_batch'],
  ['/info/lfs/objects/(?<oid>[0-9a-f]{64})', 'lfs_download'],
  ['/info/lfs/verify', 'lfs_verify'],
  ['/info/lfs/locks(/(?<verify>verify)|/(?<lockId>[^/]+)/unlock)?', 'lfs_locks'],
] as const satisfies readonly (readonly [string, RouteId])[]

/** files a dumb-HTTP git client asks for (http-protocol.txt, "Dumb Clients"): refused with the reason */
export const DUMB_GIT_SUFFIX = '/(HEAD|objects/(info/(packs|alternates|http-alternates)|pack/pack-[0-9a-f]+[.](pack|idx)|[0-9a-f]{2}/[0-9a-f]{38,62}))'

/** an hg repo's clone bundle, `/{repo}/.hg/clonebundles/{file}`: no repo segment and no file hg tracks is named `.hg` */
export const HG_BUNDLE_SUFFIX = '/[.]hg/clonebundles/(?<bundle>[^/]+)'

/** What the classifier read out of a repository URL, handed to the route's handler as `req.urlParams`. */
export interface UrlParams {
  /** the repo part of the path (git: without the leading `/`; hg: the whole path) */
  repoPath: string
  /** an LFS object's oid (lfs_download, lfs_upload) */
  oid?: string
  /** `/locks/verify` (lfs_locks) */
  verify?: string
  /** the lock of `/locks/{id}/unlock`, as sent (lfs_locks) */
  lockId?: string
  /** a clone bundle's file name, as sent (still percent-encoded) */
  bundle?: string
}

/**
 * The worker's own URLs (docs/design.md, reserved): its health checks and metrics. Never a
 * repository, and never sent to the VCS backends by the balancer, whatever else a request
 * carries.
 */
export const WORKER_OWN_PATHS = { prefixes: ['/health/'], exact: ['/metrics'] } as const

/** The wire commands of hg's HTTP protocol: a request with one of these as `?cmd=` is hg's, else an hgweb page. */
export const HG_COMMANDS: readonly string[] = HG_COMMAND_NAMES

/** The balancer's pools (servers-git, servers-hg, servers-web). */
export type Pool = 'git' | 'hg' | 'web'

/**
 * The pool a request of `route` belongs to: git's and LFS's to the git servers, hg's wire
 * commands and clone bundles to the hg servers; the worker's own URLs, hgweb pages and
 * anything else to the web application. `hgCmd`: the request's `?cmd=` (first occurrence).
 */
export function poolOf(route: RouteId, hgCmd: string | undefined): Pool {
  if (route.startsWith('git_') || route.startsWith('lfs_')) return 'git'
  if (route === 'hg_clonebundle') return 'hg'
  if (route === 'hg_proxy') return hgCmd !== undefined && HG_COMMANDS.includes(hgCmd) ? 'hg' : 'web'
  return 'web'
}
