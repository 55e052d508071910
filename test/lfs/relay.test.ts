import t from 'tap'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { readFile, readlink, stat } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import { finished } from 'node:stream/promises'
import path from 'node:path'
import { processesMatching, rawRequest, startWorker, waitFor, type Worker } from '../helpers/worker.js'
import { routeRequests, storeObject } from '../helpers/lfs.js'
import { PACK_RELAY, RELAY_PROTOCOL } from '../../src/process/relay.js'

const downloads = (w: Worker) => routeRequests(w, 0, 'lfs_download')

/** The parent of process `pid` (0 when it is gone). */
async function parentOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  return Number(stat.slice(stat.lastIndexOf(')') + 4).split(' ')[0] ?? 0)
}

/**
 * This test process's relay processes (started by its worker's spawn helper: their grandparent is
 * this process; other test files running at once have relays of their own), with what their
 * stdout is: a socket while serving, /dev/null while a spare waits.
 */
async function relays(): Promise<{ pid: number; cmd: string; serving: boolean }[]> {
  const found = []
  for (const p of await processesMatching(PACK_RELAY)) {
    const parent = await parentOf(p.pid)
    if (parent === process.pid || (await parentOf(parent)) === process.pid) found.push(p)
  }
  return Promise.all(found.map(async (p) => ({ ...p, serving: (await readlink(`/proc/${p.pid}/fd/1`).catch(() => '')).startsWith('socket:') })))
}
const spares = async () => (await relays()).filter((r) => r.cmd.includes('--wait') && !r.serving).map((r) => r.pid)
const serving = async () => (await relays()).filter((r) => r.serving)


t.test('an LFS object of 1 MiB or more goes out through the relay: whole, ranged, counted, the connection closed after it', async (t) => {
  const w = await startWorker(t)
  const data = randomBytes(3 * 1024 * 1024 + 17)
  const url = await storeObject(w, data)

  const whole = await rawRequest(w.port, 'GET', url)
  t.equal(whole.status, 200)
  t.ok(whole.body.equals(data), 'every byte')
  t.equal(whole.headers['content-length'], String(data.length), 'with its length')
  t.equal(whole.headers.connection, 'close')
  t.equal(whole.headers['content-type'], 'application/octet-stream')
  t.equal(whole.headers['accept-ranges'], 'bytes')
  const etag = whole.headers.etag
  t.ok(etag, 'an ETag for conditional requests')

  const part = await rawRequest(w.port, 'GET', url, { range: 'bytes=2000000-' })
  t.equal(part.status, 206, 'a Range: Partial Content')
  t.equal(part.headers['content-range'], `bytes 2000000-${data.length - 1}/${data.length}`)
  t.ok(part.body.equals(data.subarray(2_000_000)), 'exactly the range\'s bytes')
  const middle = await rawRequest(w.port, 'GET', url, { range: 'bytes=10-1048600' })
  t.equal(middle.status, 206)
  t.ok(middle.body.equals(data.subarray(10, 1_048_601)), 'a range in the middle, end inclusive')

  t.equal((await rawRequest(w.port, 'GET', url, { 'if-none-match': String(etag) })).status, 304, 'not modified: no body, no relay')
  t.equal((await rawRequest(w.port, 'GET', url, { range: `bytes=${data.length + 5}-` })).status, 416, 'a range past the end')

  await waitFor(() => downloads(w).length === 5, 5000, 'the access lines')
  const relayed = downloads(w).filter((l) => l.handed_over === true)
  t.same(relayed.map((l) => l.bytes_out).sort((a, b) => Number(a) - Number(b)), [1_048_591, data.length - 2_000_000, data.length], 'the three answers with a body relayed, each counted')
  t.notOk(relayed.some((l) => l.aborted), 'none logged as aborted')

  // below 1 MiB the worker sends the file itself, on a connection that stays open
  const small = randomBytes(64 * 1024)
  const res = await rawRequest(w.port, 'GET', await storeObject(w, small), { connection: 'keep-alive' })
  t.ok(res.body.equals(small))
  t.not(res.headers.connection, 'close', 'keep-alive')
  await waitFor(() => downloads(w).length === 6, 5000, 'the access line')
  t.equal(downloads(w)[5]!.handed_over, undefined, 'not relayed')
})

t.test('packRelay off, or no spawn helper: the same bytes', async (t) => {
  for (const flags of [{ 'pack-relay': false }, { 'spawn-helper': false }] as Record<string, boolean>[]) {
    const w = await startWorker(t, flags)
    const data = randomBytes(2 * 1024 * 1024)
    const url = await storeObject(w, data)
    const res = await rawRequest(w.port, 'GET', url)
    t.ok(res.body.equals(data), `${Object.keys(flags)[0]} off: every byte`)
    await waitFor(() => downloads(w).length === 1, 5000, 'the access line')
    t.equal(downloads(w)[0]!.handed_over, flags['pack-relay'] === false ? undefined : true)
    t.equal(downloads(w)[0]!.bytes_out, data.length)
  }
})

t.test('a client that stops reading a large object: the relay gives up after idleTimeoutMs and is gone', async (t) => {
  const w = await startWorker(t, { 'idle-timeout-ms': '1000' })
  const data = randomBytes(64 * 1024 * 1024)
  const url = await storeObject(w, data)
  let response: http.IncomingMessage | undefined
  const req = http.request({ host: '127.0.0.1', port: w.port, method: 'GET', path: url, agent: false }, (res) => {
    response = res
    res.once('data', () => res.pause())
  })
  req.on('error', () => {})
  req.end()
  await waitFor(() => response !== undefined && response.isPaused(), 5000, 'the first bytes')
  t.equal((await serving()).length, 1, 'the relay runs, blocked on the client')
  await waitFor(async () => (await serving()).length === 0, 8000, 'the relay to be gone')
  let received = 0
  const cut = new Promise<void>((resolve) => { response!.once('close', resolve); response!.once('error', () => resolve()) })
  response!.on('data', (c: Buffer) => { received += c.length })
  response!.resume()
  await cut
  t.ok(received < data.length, `the client sees a short body (${received} of ${data.length} bytes after its first read): its Content-Length says so`)
  await waitFor(() => downloads(w).length === 1, 5000, 'the access line')
  t.equal(downloads(w)[0]!.aborted, true, 'logged as not gone out whole')
  t.ok(w.logs().some((l) => String(l.msg).includes('no progress for 1000 ms')), 'the log says why')
})

t.test('the relay sends nothing from a file that is not the one the worker judged', async (t) => {
  const dir = t.testdir({ f: 'x'.repeat(100) })
  const file = path.join(dir, 'f')
  const { ino } = await stat(file)
  const relay = (args: string[]) => new Promise<{ code: number | null; out: string; report: string }>((resolve) => {
    const p = spawn(PACK_RELAY, ['1000', 'HTTP/1.1 200 OK\r\n\r\n', '--file', file, ...args], { stdio: ['ignore', 'pipe', 'ignore', 'pipe'] })
    let out = ''
    let report = ''
    p.stdout!.on('data', (c: Buffer) => { out += c.toString() })
    ;(p.stdio[3] as NodeJS.ReadableStream).on('data', (c: Buffer) => { report += c.toString() })
    p.on('close', (code) => resolve({ code, out, report }))
  })
  const other = await relay([String(ino + 1), '0', '100'])
  t.same([other.code, other.out], [1, ''], 'another inode: nothing written, exit 1')
  t.match(other.report, /head=0 .*exec=116 /, 'reported as ESTALE')
  const shorter = await relay([String(ino), '50', '51'])
  t.same([shorter.code, shorter.out], [1, ''], 'a file shorter than the range: nothing written')
  const fine = await relay([String(ino), '90', '10'])
  t.same([fine.code, fine.out], [0, 'HTTP/1.1 200 OK\r\n\r\nxxxxxxxxxx'], 'the head, then the range\'s bytes')
  t.match(fine.report, /^v=1 sent=10 head=1 /)
})

t.test('downloads after the first are served by relays started ahead: whole, counted, each replaced; a spare killed while it waits changes nothing', async (t) => {
  const w = await startWorker(t)
  const data = randomBytes(2 * 1024 * 1024 + 5)
  const url = await storeObject(w, data)
  const first = await rawRequest(w.port, 'GET', url)
  t.ok(first.body.equals(data), 'the first download: every byte')
  await waitFor(async () => (await spares()).length === 2, 5000, 'two spares to wait')
  for (let i = 0; i < 3; i++) {
    const before = await spares()
    const res = await rawRequest(w.port, 'GET', url)
    t.ok(res.body.equals(data), `download ${i + 2}: every byte`)
    await waitFor(async () => (await spares()).length === 2, 5000, 'a spare to replace the one used')
    const after = await spares()
    t.equal(before.filter((pid) => !after.includes(pid)).length, 1, `download ${i + 2}: one of the waiting relays served it and is gone`)
  }

  // one paused client (an object larger than the socket buffers hold): the relay serving it is
  // one that was started ahead (`--wait`)
  const big = randomBytes(32 * 1024 * 1024)
  const bigUrl = await storeObject(w, big)
  let response: http.IncomingMessage | undefined
  const body: Buffer[] = []
  const req = http.request({ host: '127.0.0.1', port: w.port, method: 'GET', path: bigUrl, agent: false }, (res) => {
    response = res
    res.on('data', (c: Buffer) => body.push(c))
    res.once('data', () => res.pause())
  })
  req.end()
  await waitFor(() => response !== undefined && response.isPaused(), 5000, 'the first bytes')
  const busy = await serving()
  t.equal(busy.length, 1)
  t.match(busy[0]!.cmd, /--wait/, 'the serving relay was waiting before the request came')
  await new Promise((resolve) => { response!.once('end', resolve); response!.resume() })
  t.ok(Buffer.concat(body).equals(big), 'read on: every byte')

  const [victim] = await spares()
  process.kill(victim!, 'SIGKILL')
  const res = await rawRequest(w.port, 'GET', url)
  t.ok(res.body.equals(data), 'a spare killed while waiting: the next download is whole all the same')
  await waitFor(async () => (await spares()).length === 2, 5000, 'the spares back to two')


  // spares that never take the connection (stopped): after 2 s the helper gives up on the one
  // it picked, and a relay spawned as before serves the download
  const stopped = await spares()
  for (const pid of stopped) process.kill(pid, 'SIGSTOP')
  const late = await rawRequest(w.port, 'GET', url)
  t.ok(late.body.equals(data), 'a spare that does not answer: the download is whole all the same')
  // ended by the helper: gone, or a zombie (no command line) until the helper reaps it
  await waitFor(async () => { const now = await spares(); return stopped.some((pid) => !now.includes(pid)) }, 5000, 'the helper to end the one it picked')
  t.pass('the one it picked was ended by the helper')
  for (const pid of stopped) {
    try { process.kill(pid, 'SIGKILL') } catch { /* that one, gone already */ }
  }

  await waitFor(() => downloads(w).length === 7, 5000, 'the access lines')
  const lines = downloads(w).map((l) => [l.status, l.handed_over, l.bytes_out])
  t.same(lines, [...Array(4).fill([200, true, data.length]), [200, true, big.length], ...Array(2).fill([200, true, data.length])], 'each relayed, each counted whole')
})

t.test('pack-relay --wait: the connection from its IPC channel, the arguments from stdin; nothing written when either is missing or names a command', async (t) => {
  const dir = t.testdir({ f: 'y'.repeat(1000) })
  const file = path.join(dir, 'f')
  const { ino } = await stat(file)
  const head = 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n'
  /** a spare as the helper starts it; `give` hands it a connection and/or its arguments; what the client got */
  const run = async (give: { socket?: boolean; args?: string[]; ipc?: boolean }) => {
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    const [accepted] = await Promise.all([new Promise<net.Socket>((resolve) => server.once('connection', resolve)), new Promise((resolve) => client.once('connect', resolve))])
    server.close()
    const chunks: Buffer[] = []
    client.on('data', (c: Buffer) => chunks.push(c))
    const ended = new Promise((resolve) => client.once('close', resolve))
    const p = spawn(PACK_RELAY, ['--wait'], { env: {}, cwd: '/', stdio: ['pipe', 'ignore', 'pipe', 'pipe', ...(give.ipc === false ? [] : ['ipc' as const])], serialization: 'json' })
    p.stdin!.on('error', () => {}) // a relay that exits at once (no channel) closes it first
    const said: unknown[] = []
    p.on('message', (m: unknown) => said.push(m))
    let report = ''
    ;(p.stdio[3] as NodeJS.ReadableStream).on('data', (c: Buffer) => { report += c.toString() })
    p.stdio[2]!.resume()
    if (give.socket) await new Promise<void>((resolve, reject) => p.send('fd', (accepted as unknown as { _handle: net.Socket })._handle, { keepOpen: true }, (err) => (err ? reject(err) : resolve())))
    if (!give.socket && give.ipc !== false) p.disconnect() // no connection will come (with one, the relay closes the channel)
    p.stdin!.end(give.args ? give.args.map((a) => `${a}\0`).join('') : '')
    const code = await new Promise<number | null>((resolve) => p.once('exit', resolve))
    await finished(p.stdio[3] as NodeJS.ReadableStream)
    accepted.destroy() // our copy: the client sees the end once the relay's is closed too
    await ended
    return { code, got: Buffer.concat(chunks).toString(), report, said }
  }
  const args = ['1000', head, '--file', file, String(ino), '900', '100']
  const fine = await run({ socket: true, args })
  t.same([fine.code, fine.got], [0, head + 'y'.repeat(100)], 'the head, then the range\'s bytes, on the connection it was sent')
  t.match(fine.report, /^v=1 sent=100 head=1 .*closed=1/, 'the report on fd 3')
  t.same(fine.said, [{ took: true, v: RELAY_PROTOCOL }], 'it said on the channel that it took the connection')
  const noSocket = await run({ args })
  t.same([noSocket.code, noSocket.got, noSocket.report, noSocket.said], [1, '', '', []], 'the channel closed before a connection came: exit 1, nothing written, nothing reported')
  const noArgs = await run({ socket: true, args: args.slice(0, 4) })
  t.same([noArgs.code, noArgs.got], [1, ''], 'stdin closed before the arguments: exit 1, nothing written')
  const long = await run({ socket: true, args: ['1000', `${head}X-Pad: ${'p'.repeat(70_000)}\r\n`, ...args.slice(2)] })
  t.same([long.code, long.got], [1, ''], 'arguments past 64 KiB: exit 1, nothing written')
  const noChannel = await run({ ipc: false, args })
  t.same([noChannel.code, noChannel.got], [1, ''], 'no IPC channel: exit 1')
  const marker = path.join(dir, 'ran')
  const command = await run({ socket: true, args: ['1000', head, '--', '/usr/bin/touch', marker, 'x', 'y'] })
  t.same([command.code, command.got], [2, ''], 'arguments naming a command: refused, nothing written')
  await t.rejects(stat(marker), 'and nothing run')
})
