/**
 * The spawn helper's protocol, one definition for both ends (helper-client.ts in the worker,
 * helper-main.ts in the helper):
 * - Node's IPC channel (JSON): the worker sends a SpawnRequest, with the client's socket as the
 *   message's handle when `stdoutSent`; the helper answers with HelperMessages: first
 *   `listening` (with its HELPER_PROTOCOL), then per spawn its pid, its exit or why it could not
 *   start, and a `warning` when it turns something off.
 * - connections from a spawned process to the worker's spawn socket, one per stream, each
 *   starting with its tag `<id>:<stream>\n` (0 stdin, 1 stdout, 2 stderr, 3 a relay's report);
 * - connections from the worker to the helper's stdout socket (pooled stdout), tagged `<id>\n`.
 * HELPER_PROTOCOL changes with any of these; the worker refuses a helper that speaks another.
 */
export const HELPER_PROTOCOL = 1

export interface SpawnRequest {
  id: number
  bin: string
  args: string[]
  env: Record<string, string>
  cwd?: string
  nice?: number
  /** stdout is the worker's connection to the helper's stdout socket tagged with this id */
  stdoutFromWorker?: boolean
  /** stdout is the socket sent with this message (a client's connection: a relay) */
  stdoutSent?: boolean
  /** fd 3 is one more connection to the worker (stream 3): a relay's report */
  report?: boolean
  /** a `bin --wait` started ahead may serve it (the socket sent over its channel, args on its stdin; stderr and the report piped through the helper) */
  prestart?: boolean
}

export type HelperMessage =
  | { listening: true; protocol: number }
  | { listening: false; error: string }
  | { warning: string }
  | { id: number; pid: number }
  | { id: number; code: number | null; signal: NodeJS.Signals | null }
  | { id: number; error: string }

/** The streams of a spawned process, as tagged on their connections. */
export type StreamNumber = 0 | 1 | 2 | 3

export const streamTag = (id: number, n: StreamNumber): string => `${id}:${n}\n`

/** A stream connection's tag line (without its newline), or undefined when it is not one. */
export function parseStreamTag(line: string): { id: number; n: StreamNumber } | undefined {
  const m = /^(\d{1,15}):([0-3])$/.exec(line)
  return m ? { id: Number(m[1]), n: Number(m[2]) as StreamNumber } : undefined
}

export const stdoutTag = (id: number): string => `${id}\n`

/** A stdout connection's tag line (without its newline): the spawn id, or undefined. */
export function parseStdoutTag(line: string): number | undefined {
  return /^\d{1,15}$/.test(line) ? Number(line) : undefined
}

/** The longest tag line either kind of connection starts with. */
export const MAX_TAG = 24
