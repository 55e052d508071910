/**
 * What a URL is, written once for the worker and for the balancer in front of it: the paths of
 * each repository endpoint, the worker's own URLs, and which backend pool each route belongs
 * to. The worker's classifier (routes.ts) matches requests against these, and the HAProxy
 * frontend's ACLs are rendered from them (tools/pool/haproxy-config.ts), so the two cannot
 * disagree about where a request goes (test/e2e/route-agreement.test.ts feeds one corpus of
 * URLs through both, with a real HAProxy).
 */
import { HG_COMMAND_NAMES } from '../hg/commands.js'

export type RouteId =
  | 'git_info_refs' | 'git_upload_pack' | 'git_receive_pack' | 'git_dumb' | 'hg_proxy' | 'hg_clonebundle'
  | 'lfs_batch' | 'lfs_download' | 'lfs_upload' | 'lfs_verify' | 'lfs_locks'
  | 'health_live' | 'health_ready' | 'health_git' | 'health_hg' | 'metrics' | 'root' | 'other'

/** git smart HTTP's endpoints (git's http-protocol.txt): the path ends with one of these */
export const GIT_SUFFIXES = [
  ['/info/refs', 'git_info_refs'],
  ['/git-upload-pack', 'git_upload_pack'],
  ['/git-receive-pack', 'git_receive_pack'],
] as const satisfies readonly (readonly [string, RouteId])[]

/**
 * Git LFS (git-lfs's docs/api), under a git repo: `/{repo}[.git]` then one of these (regular
 * expression sources that HAProxy's PCRE and JavaScript read alike). A PUT to an object is
 * lfs_upload; the lock endpoints are told apart by their handler.
 */
export const LFS_SUFFIXES = [
  ['/info/lfs/objects/batch', 'lfs_batch'],
  ['/info/lfs/objects/[0-9a-f]{64}', 'lfs_download'],
  ['/info/lfs/verify', 'lfs_verify'],
  ['/info/lfs/locks(/verify|/[^/]+/unlock)?', 'lfs_locks'],
] as const satisfies readonly (readonly [string, RouteId])[]

/** files a dumb-HTTP git client asks for (http-protocol.txt, "Dumb Clients"): refused with the reason */
export const DUMB_GIT_SUFFIX = '/(HEAD|objects/(info/(packs|alternates|http-alternates)|pack/pack-[0-9a-f]+[.](pack|idx)|[0-9a-f]{2}/[0-9a-f]{38,62}))'

/** an hg repo's clone bundle, `/{repo}/.hg/clonebundles/{file}`: no repo segment and no file hg tracks is named `.hg` */
export const HG_BUNDLE_SUFFIX = '/[.]hg/clonebundles/[^/]+'

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
