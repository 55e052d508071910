/**
 * The relay's spares (`pack-relay --wait`, started ahead by the spawn helper): how a connection
 * is handed to one, and the start-up self-test that shows this runtime still hands it over as
 * the relay expects (the IPC handle messages it reads itself: node-internals.ts).
 */
import type { ChildProcess } from 'node:child_process'
import { spawn } from 'node:child_process'
import { closeSync, openSync, readSync, statSync } from 'node:fs'
import net from 'node:net'
import { bareHandle } from './node-internals.js'
import { RELAY_PROTOCOL } from './relay.js'

/** Sends `handle` over a spare's channel; resolves once written (a closed channel: the callback's error). */
export function sendHandle(child: ChildProcess, handle: unknown): Promise<void> {
  return new Promise((resolve, reject) => {
    child.send('fd', handle as net.Socket, { keepOpen: true }, (err) => (err ? reject(err) : resolve()))
  })
}

/** Resolves once the spare says it took the connection; rejects when it exits, or says nothing for TOOK_MS. */
export function tookIt(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer)
      child.off('message', onMessage)
      child.off('exit', onExit)
      if (err) reject(err)
      else resolve()
    }
    const onMessage = (msg: { took?: boolean; v?: number }): void => {
      if (msg?.took !== true) return
      done(msg.v === RELAY_PROTOCOL ? undefined : new Error(`the spare speaks protocol ${String(msg.v)}, this worker ${RELAY_PROTOCOL}`))
    }
    const onExit = (): void => done(new Error('the spare exited'))
    const timer = setTimeout(() => done(new Error('the spare did not take the connection')), TOOK_MS)
    child.on('message', onMessage)
    child.once('exit', onExit)
  })
}
const TOOK_MS = 2000

/** how long the self-test may take: a spawn and a 64-byte answer on loopback */
const SELF_TEST_MS = 10_000

/**
 * One spare started as for a download, handed a loopback connection of this process's own
 * over its IPC channel (node-internals.ts: the handle messages it reads itself), asked for the
 * first bytes of its own binary; resolves once the client end got the head and those bytes.
 */
export async function spareSelfTest(bin: string): Promise<void> {
  const server = net.createServer()
  let child: ChildProcess | undefined
  let client: net.Socket | undefined
  let timer: NodeJS.Timeout | undefined
  try {
    const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${SELF_TEST_MS} ms`)), SELF_TEST_MS) })
    const run = async (): Promise<void> => {
      await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
      const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve))
      client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
      client.on('error', () => {})
      const ours = await accepted
      const st = statSync(bin)
      const length = Math.min(64, st.size)
      const expected = Buffer.alloc(length)
      const fd = openSync(bin, 'r')
      try { readSync(fd, expected, 0, length, 0) } finally { closeSync(fd) }
      const head = `HTTP/1.1 200 OK\r\nContent-Length: ${length}\r\nConnection: close\r\n\r\n`
      const answer = new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = []
        client!.on('data', (d: Buffer) => parts.push(d)).once('close', () => resolve(Buffer.concat(parts)))
      })
      child = spawn(bin, ['--wait'], { env: {}, cwd: '/', stdio: ['pipe', 'ignore', 'ignore', 'ignore', 'ipc'], serialization: 'json' })
      child.stdin!.on('error', () => {})
      const took = tookIt(child)
      took.catch(() => {})
      const handle = bareHandle(ours)
      if (!handle) throw new Error('the test connection has no handle')
      await sendHandle(child, handle)
      await took
      ours.destroy() // the spare has its own copy now
      child.stdin!.end(['5000', head, '--file', bin, String(st.ino), '0', String(length)].map((a) => `${a}\0`).join(''))
      const got = await answer
      const want = Buffer.concat([Buffer.from(head, 'latin1'), expected])
      if (!got.equals(want)) throw new Error(`the answer was ${got.length} bytes, not the ${want.length} sent`)
    }
    await Promise.race([run(), timeout])
  } finally {
    clearTimeout(timer)
    client?.destroy()
    server.close()
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}
