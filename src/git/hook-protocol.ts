/**
 * What the worker's git hook program (src/git/hook.c) and its loopback hook service
 * (hook-service.ts) say to each other, one definition for both. HOOK_PROTOCOL changes with any
 * of it, and hook.c's must equal it; the service answers a hook of another protocol (a hook
 * program of an older install in a shared data dir) with 409 and a reason the pusher reads.
 *
 * Every call: `POST /NAME` (NAME one of HOOK_ENDPOINTS) on VCS_WORKER_HOOK_URL, with headers
 *   X-VCS-Hook-Protocol  HOOK_PROTOCOL
 *   X-VCS-Token          VCS_WORKER_HOOK_TOKEN: the session of one git run, opened by the worker
 *   X-VCS-Cwd            the hook's working directory (the repository), checked against the session
 * and a body:
 *   pre-receive   one line per ref update, `OLD NEW KIND REF` (KIND create|update|force|delete),
 *                 with X-VCS-Objects: the push's quarantine (GIT_OBJECT_DIRECTORY) when it has one.
 *                 200: the worker wrote the refused refs to the session's rejects file (one per
 *                 line, where the `update` hook finds them); the body is the text the hook prints
 *                 (`REF: REASON` lines). Anything else refuses the push; the body's first line
 *                 is the reason the pusher reads.
 *   post-receive  git's own input, `OLD NEW REF` lines; 200 with text to print, or anything else
 *                 (ignored: the refs moved already).
 *   pack-objects  pack-objects' stdin, with X-VCS-Args: git's arguments joined by spaces. 200 with
 *                 X-VCS-File (a finished entry), 200 chunked (a production followed as it is
 *                 written, its trailer X-VCS-Progress-Rest), or anything else: the hook runs
 *                 pack-objects itself.
 */
export const HOOK_PROTOCOL = 2

/** The names the hook program is installed under in the hooks dir, each a hook git runs. */
export const HOOK_NAMES = ['pre-receive', 'update', 'post-receive', 'post-update', 'push-to-checkout', 'pack-objects'] as const

/** The hooks that call the service, each at `/NAME`. */
export const HOOK_ENDPOINTS = ['pre-receive', 'post-receive', 'pack-objects'] as const
export type HookEndpoint = typeof HOOK_ENDPOINTS[number]

export const UPDATE_KINDS = ['create', 'update', 'force', 'delete'] as const
