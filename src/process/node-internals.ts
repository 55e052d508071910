/**
 * Every reach into Node.js internals, in one place. Three things the worker does are not in
 * Node's public API, and each is tested on every Node line `engines` names (test/process/
 * node-internals.test.ts, and scripts/test-node-lines.sh runs the suites that lean on them):
 *
 * 1. A socket's bare handle (`socket._handle`: a TCP wrap with a file descriptor). The pack
 *    and file relays are started with the client's connection as their stdout; passing the
 *    bare handle (not the net.Socket) over an IPC channel keeps Node's net.Socket bookkeeping,
 *    and the worker's own copy of the connection, out of it.
 * 2. `socket.server = null` before a socket is sent to an hg child: Node's cluster bookkeeping
 *    for a sent server socket (set when `socket.server` is) makes the HTTP server wait at close
 *    for the children that got sockets, and hangs it for good once they all exited.
 * 3. The IPC channel's handle messages, which two ends that are not Node re-implement: the
 *    relay's `--wait` mode (src/git/pack-relay.c) and the hg extension (src/hg/
 *    vcsworker_handoff.py). This is the contract they cite, as Node 20, 22 and 24 write it
 *    (lib/internal/child_process.js, serialization 'json'):
 *    - each message is one line of JSON ended by `\n`;
 *    - a message that carries a handle is `{"cmd":"NODE_HANDLE","type":"net.Native"|"net.Socket",
 *      "msg":<the message given to send()>,...}` with the descriptor in SCM_RIGHTS on the same
 *      sendmsg(2);
 *    - the receiver answers `{"cmd":"NODE_HANDLE_ACK"}` (or `{"cmd":"NODE_HANDLE_NACK"}` to
 *      refuse it); Node sends no further handle on that channel until it is acknowledged, and
 *      a sender with `keepOpen: false` closes its copy on the ACK.
 *    Whether a runtime still keeps this contract is checked at start-up, end to end, with a
 *    connection of the worker's own: hg/handoff-check.ts for the hg extension, and the spawn
 *    helper's self-test of a relay spare (process/helper-main.ts) for the relay. Either one
 *    failing turns its feature off with one warning line; nothing breaks silently.
 */
import type { Socket } from 'node:net'

export const NODE_HANDLE = 'NODE_HANDLE'
export const NODE_HANDLE_ACK = 'NODE_HANDLE_ACK'
export const NODE_HANDLE_NACK = 'NODE_HANDLE_NACK'

/** A socket's bare handle, as Node passes one sent without its net.Socket. */
export interface BareHandle {
  /** the descriptor, on Unix (a TCP or pipe wrap); -1 or missing once closed */
  fd?: number
  close(): void
}

/** The bare handle of an open socket, or undefined when it has none (closed, or not a descriptor-backed stream). */
export function bareHandle(socket: Socket): BareHandle | undefined {
  const handle = (socket as unknown as { _handle?: BareHandle | null })._handle
  return handle ?? undefined
}

/** Closes a bare handle that Node may have closed already (a handle sent and acknowledged). */
export function closeBareHandle(handle: BareHandle | undefined): void {
  try { handle?.close() } catch { /* closed already */ }
}

/** Detaches a server's socket from it before it is sent to another process (point 2 above). */
export function detachFromServer(socket: Socket): void {
  ;(socket as unknown as { server: unknown }).server = null
}

