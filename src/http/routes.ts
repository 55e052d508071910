/**
 * The route table for repository URLs. find-my-way matches one segment per parameter, and a
 * repo path has any number of segments, so repository URLs go through one catch-all route and
 * are classified here, by their raw (undecoded) path: percent-encoding never reaches the
 * repo-path grammar, it fails it.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, MethodNotAllowedError } from '../errors.js'
import type { GitHandlers } from '../git/routes.js'

export type RouteId = 'git_info_refs' | 'git_upload_pack' | 'git_receive_pack' | 'git_dumb'

interface Match {
  id: RouteId
  repoPath: string
}

const GIT_SUFFIXES: [string, RouteId][] = [
  ['/info/refs', 'git_info_refs'],
  ['/git-upload-pack', 'git_upload_pack'],
  ['/git-receive-pack', 'git_receive_pack'],
]
/** files a dumb-HTTP client asks for (http-protocol.txt, "Dumb Clients") */
const DUMB = /\/(HEAD|objects\/(info\/(packs|alternates|http-alternates)|pack\/pack-[0-9a-f]+\.(pack|idx)|[0-9a-f]{2}\/[0-9a-f]{38,62}))$/

/** Classifies a raw request path; undefined when it is no repository URL we know. */
export function classify(rawPath: string): Match | undefined {
  for (const [suffix, id] of GIT_SUFFIXES) {
    if (rawPath.endsWith(suffix)) return { id, repoPath: rawPath.slice(1, -suffix.length) }
  }
  const dumb = DUMB.exec(rawPath)
  if (dumb) return { id: 'git_dumb', repoPath: rawPath.slice(1, dumb.index) }
  return undefined
}

const METHODS: Record<RouteId, string> = {
  git_info_refs: 'GET',
  git_upload_pack: 'POST',
  git_receive_pack: 'POST',
  git_dumb: 'GET',
}

type HgHandler = (req: FastifyRequest, reply: FastifyReply, rawPath: string) => Promise<FastifyReply>

/** Builds the catch-all handler from the protocol handlers; what is not git is tried as hg. */
export function repositoryDispatcher(git: GitHandlers, hg?: HgHandler) {
  return async function dispatch(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const rawPath = req.raw.url!.split('?', 1)[0]!
    const match = classify(rawPath)
    if (!match) {
      if (!hg) return reply.callNotFound() as unknown as FastifyReply
      if (req.method !== 'GET' && req.method !== 'POST' && req.method !== 'HEAD') throw new MethodNotAllowedError(['GET', 'POST'])
      return hg(req, reply, rawPath)
    }
    req.accessRecord.route = match.id
    const method = METHODS[match.id]
    if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) throw new MethodNotAllowedError([method])
    switch (match.id) {
      case 'git_info_refs': return git.infoRefs(req, reply, match.repoPath)
      case 'git_upload_pack': return git.uploadPack(req, reply, match.repoPath)
      case 'git_receive_pack': return git.receivePack(req, reply, match.repoPath)
      case 'git_dumb': throw new BadRequestError('dumb HTTP is not supported: use a git client that speaks smart HTTP (git 1.6.6 or newer)')
      default: {
        const never: never = match.id
        throw new Error(`unhandled route ${String(never)}`)
      }
    }
  }
}
