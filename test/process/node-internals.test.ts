import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile, chmod } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { bareHandle, closeBareHandle, detachFromServer } from '../../src/process/node-internals.js'
import { spareSelfTest } from '../../src/process/relay-spare.js'
import { PACK_RELAY } from '../../src/process/relay.js'

/** A connected pair on loopback: the server's end and the client's. */
async function pair(t: { teardown(fn: () => unknown): void }): Promise<{ server: net.Server; ours: net.Socket; client: net.Socket }> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const accepted = once(server, 'connection') as Promise<[net.Socket]>
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  const [ours] = await accepted
  t.teardown(() => { client.destroy(); ours.destroy(); server.close() })
  return { server, ours, client }
}

t.test(`on Node ${process.version}, an open TCP socket has a bare handle with a descriptor`, async (t) => {
  const { ours } = await pair(t)
  const handle = bareHandle(ours)
  t.ok(handle, 'a handle')
  t.type(handle?.fd, 'number')
  t.ok((handle?.fd ?? -1) >= 0, `fd ${handle?.fd}`)
  ours.destroy()
  await once(ours, 'close')
  t.equal(bareHandle(ours), undefined, 'none once the socket closed')
  closeBareHandle(handle) // closed already: no throw
})

t.test('a socket detached from its server still has its handle, and the server closes', async (t) => {
  const { server, ours } = await pair(t)
  detachFromServer(ours)
  t.equal((ours as unknown as { server: unknown }).server, null)
  t.ok(bareHandle(ours))
  ours.destroy()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  t.pass('the server closed')
})

t.test(`the relay's spare passes its self-test on Node ${process.version}`, async (t) => {
  await t.resolves(spareSelfTest(PACK_RELAY))
})

t.test('a spare that never takes the connection, or speaks another protocol, fails the self-test with a reason', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'vcs-spare-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const exits = path.join(dir, 'exits')
  await writeFile(exits, '#!/bin/sh\nexit 3\n')
  await chmod(exits, 0o755)
  await t.rejects(spareSelfTest(exits), { message: /the spare exited|channel closed|EPIPE/ })
  const silent = path.join(dir, 'silent')
  // reads its channel and answers nothing: the handle is never acknowledged nor taken
  await writeFile(silent, '#!/bin/sh\nexec cat <&"$NODE_CHANNEL_FD" >/dev/null\n')
  await chmod(silent, 0o755)
  await t.rejects(spareSelfTest(silent), { message: /did not take the connection/ })
  const other = path.join(dir, 'other')
  // takes it, in another protocol's words (a relay of another build)
  await writeFile(other, '#!/bin/sh\nprintf \'{"took":true,"v":2}\\n\' >&"$NODE_CHANNEL_FD"\nexec cat <&"$NODE_CHANNEL_FD" >/dev/null\n')
  await chmod(other, 0o755)
  await t.rejects(spareSelfTest(other), { message: 'the spare speaks protocol 2, this worker 1' })
})
