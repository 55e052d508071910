/**
 * What the worker's pre-receive hook (hooks/pre-receive.ts) and its loopback endpoint
 * (ref-hooks.ts) say to each other, one definition for both: a POST of a HookRequest as JSON,
 * answered with a HookAnswer (200) or a HookError. The hook then writes the refused refs, one
 * per line, to the push's rejects file, where the `update` hook finds them. HOOK_PROTOCOL
 * changes with any of it; the endpoint refuses a hook that speaks another (a hook script of an
 * older install in a shared data dir).
 */
export const HOOK_PROTOCOL = 1

export interface HookUpdate {
  ref: string
  oldId: string
  newId: string
  kind: 'create' | 'update' | 'force' | 'delete'
}

export interface HookRequest {
  v: number
  /** the push's session token (VCS_WORKER_HOOK_TOKEN) */
  token: string
  updates: HookUpdate[]
  /** the push's quarantine, as git gave it to the hook (GIT_OBJECT_DIRECTORY) */
  objects?: string
}

export interface HookAnswer {
  rejections: { ref: string; reason: string }[]
}

export interface HookError {
  error: string
  /** a reason the pusher may read (the account store unreachable) */
  reason?: string
}
