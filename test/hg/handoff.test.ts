/**
 * Bundle downloads handed over to the hg serve child (src/hg/handoff.ts): the child answers on
 * the client's own connection. What the client receives, what the worker logs and releases, and
 * what happens when the child goes silent or freezes, the client goes away, or the worker closes.
 */
import t from 'tap'
import type * as Tap from 'tap'
import net from 'node:net'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { appendFile, readFile, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { startWorker, run, rawRequest, waitFor, clientEnv, type Worker } from '../helpers/worker.js'

const ZERO = '0'.repeat(40)

/** hg run on the server side of a test (no worker in between). */
function local(w: Worker) {
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env: clientEnv(w.dir, { HGRCPATH: '', HGUSER: 'Test <t@example.invalid>' }) })
}

async function tipOf(w: Worker, repo: string): Promise<string> {
  return (await local(w)(['-R', path.join(w.reposDir, repo), 'log', '-r', 'tip', '-T', '{node}'])).stdout
}

/** A public hg repo `name` with one incompressible file of `mib` MiB. */
async function bigRepo(w: Worker, name: string, mib: number): Promise<string> {
  const dir = path.join(w.reposDir, name)
  const hg = local(w)
  await hg(['init', dir])
  await writeFile(path.join(dir, 'blob.bin'), randomBytes(mib * 1024 * 1024))
  await hg(['add', 'blob.bin'], dir)
  await hg(['commit', '-m', 'big'], dir)
  await w.store.setRepo(name, 'hg', true)
  return dir
}

/** The getbundle request of a whole repo. */
function getbundle(w: Worker, repo: string, tip: string, headers: Record<string, string> = {}) {
  return rawRequest(w.port, 'GET', `/${repo}?cmd=getbundle`, { 'x-hgarg-1': `common=${ZERO}&heads=${tip}`, ...headers })
}

function accessLines(w: Worker, service: string): Record<string, unknown>[] {
  return w.logs().filter((l) => l.msg === 'request' && l.service === service)
}

async function hgClient(w: Worker) {
  const rc = path.join(w.dir, 'hgrc-anon')
  await writeFile(rc, '[ui]\nusername = Test <t@example.invalid>\ninteractive = false\n')
  return (args: string[]) => run('hg', args, { cwd: w.dir, env: clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc }) })
}

/** A preoutgoing hook on `repo` that marks its start in a file, sleeps `seconds`, then marks its end. */
async function slowHook(w: Worker, repo: string, seconds: number): Promise<{ started: string; ended: string; remove(): Promise<void> }> {
  const hgrc = path.join(w.reposDir, repo, '.hg', 'hgrc')
  const before = existsSync(hgrc) ? await readFile(hgrc, 'utf8') : ''
  const started = path.join(w.dir, `hook-started-${repo}`)
  const ended = path.join(w.dir, `hook-ended-${repo}`)
  await appendFile(hgrc, `[hooks]\npreoutgoing.slow = touch ${started}; sleep ${seconds}; touch ${ended}\n`)
  return { started, ended, remove: () => writeFile(hgrc, before) }
}

/** A worker with one child, hgTimeoutMs `timeoutMs`, and a preoutgoing hook on demo-hg sleeping `seconds`. */
async function slowChild(t: Tap.Test, timeoutMs: number, seconds: number) {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-timeout-ms': String(timeoutMs), 'kill-grace-ms': '300' })
  const child = w.app.hgPool!.children[0]!
  return { w, child, pid: child.pid!, hook: await slowHook(w, 'demo-hg', seconds), hg: await hgClient(w) }
}

t.test('a bundle download is answered by the child on the client connection: the same bytes as proxied, logged, its slot released', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const proxied = await startWorker(t, { 'hg-processes': '1', 'hg-handoff': false })
  const tip = await tipOf(w, 'demo-hg')
  const handed = await getbundle(w, 'demo-hg', tip)
  const through = await getbundle(proxied, 'demo-hg', tip)
  t.equal(handed.status, 200)
  t.equal(through.status, 200)
  t.ok(handed.body.length > 100 && handed.body.equals(through.body), `the same ${handed.body.length} bytes either way`)
  // the answer is hg's own: close-delimited on the handed connection, chunked by the worker when proxied
  t.equal(handed.headers.connection, 'close')
  t.equal(handed.headers['transfer-encoding'], undefined)
  t.equal(through.headers['transfer-encoding'], 'chunked')
  t.equal(handed.headers['content-type'], through.headers['content-type'])

  await waitFor(() => accessLines(w, 'getbundle').length === 1, 5000, 'the access line')
  const line = accessLines(w, 'getbundle')[0]!
  t.equal(line.status, 200)
  t.equal(line.bytes_out, handed.body.length, 'bytes_out counts the body hg sent')
  t.equal(line.aborted, undefined)
  t.equal(line.child_pid, w.app.hgPool!.children[0]!.pid)
  t.equal(w.app.admission.active, 0, 'the admission slot is released')
  t.equal(w.app.hgPool!.children[0]!.inflight, 0)
  t.equal(w.app.hgPool!.children[0]!.handoff!.pending, 0)

  // a real client: clone, verify; other commands of the session are proxied as before
  const hg = await hgClient(w)
  const r = await hg(['clone', `${w.url}/demo-hg`, 'cloned'])
  t.equal(r.code, 0, r.stderr)
  t.equal((await local(w)(['-R', path.join(w.dir, 'cloned'), 'verify', '-q'])).code, 0)
  t.equal((await local(w)(['-R', path.join(w.dir, 'cloned'), 'log', '-r', 'tip', '-T', '{node}'])).stdout, tip)
})

t.test('what is not a plain bundle download is proxied, and refusals come before any handover', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' }, { private: true })
  await w.addUser('ria', 'ria-password', { 'demo-hg': 'read' })
  const tip = await tipOf(w, 'demo-hg')
  const child = w.app.hgPool!.children[0]!
  const handedBefore = (): number => accessLines(w, 'getbundle').filter((l) => l.status === 200).length
  // anonymous on a private repo: the worker's 401, the child never sees the connection
  const anon = await getbundle(w, 'demo-hg', tip)
  t.equal(anon.status, 401)
  t.match(String(anon.headers['www-authenticate']), /^Basic realm=/)
  t.equal(handedBefore(), 0)
  const auth = { authorization: `Basic ${Buffer.from('ria:ria-password').toString('base64')}` }
  // a download with a body is refused (only a push has one); a POST download is proxied
  const withBody = await rawRequest(w.port, 'GET', '/demo-hg?cmd=getbundle', { ...auth, 'x-hgarg-1': `common=${ZERO}&heads=${tip}`, 'content-length': '3' }, 'abc')
  t.same([withBody.status, withBody.body.toString()], [400, 'hg command getbundle takes no request body\n'])
  const posted = await rawRequest(w.port, 'POST', '/demo-hg?cmd=getbundle', { ...auth, 'x-hgarg-1': `common=${ZERO}&heads=${tip}`, 'content-length': '0' })
  t.equal(posted.status, 200)
  t.equal(posted.headers['transfer-encoding'], 'chunked', 'proxied')
  // a bad argument: hg's own error, on the handed connection, and the worker is fine after it
  const bad = await rawRequest(w.port, 'GET', '/demo-hg?cmd=getbundle', { ...auth, 'x-hgarg-1': 'heads=zzzz' })
  t.equal(bad.status, 500, 'hg refuses the argument itself')
  await waitFor(() => accessLines(w, 'getbundle').some((l) => l.status === 500), 5000, 'the access line of the bad request')
  t.equal(accessLines(w, 'getbundle').find((l) => l.status === 500)!.handed_over, true, 'handed over')
  t.notOk(accessLines(w, 'getbundle').find((l) => l.status === 200)!.handed_over, 'the POST was not')
  const good = await getbundle(w, 'demo-hg', tip, auth)
  t.equal(good.status, 200)
  t.ok(good.body.length > 100)
  // the child reports done just after the client has its last byte
  await waitFor(() => child.handoff!.pending === 0 && w.app.admission.active === 0, 5000, 'every handover reported done, every slot released')
})

t.test('a child silent on a handed-over download: 504 with the reason, the child replaced, the next clone works', async (t) => {
  const { w, child, pid, hook, hg } = await slowChild(t, 1000, 5)
  const r = await hg(['clone', `${w.url}/demo-hg`, 'silent'])
  t.not(r.code, 0)
  t.match(r.stderr, 'abort: HTTP Error 504: the hg server process did not answer in time; try again')
  t.ok(existsSync(hook.started) && !existsSync(hook.ended), 'cut off while the child was still silent (its hook had not ended)')
  await waitFor(() => child.state === 'ready' && child.pid !== pid, 10_000, 'a fresh child')
  t.ok(w.logs().some((l) => l.msg === 'hg child state' && l.reason === 'silent past hgTimeoutMs' && l.child_pid === pid))
  await hook.remove()
  const again = await hg(['clone', `${w.url}/demo-hg`, 'after'])
  t.equal(again.code, 0, again.stderr)
  t.equal(w.app.admission.active, 0)
})

t.test('a child frozen while it holds a handed-over download is replaced; that client gets an error, the next works', async (t) => {
  const { w, child, pid, hook, hg } = await slowChild(t, 1500, 3)
  const cloning = hg(['clone', `${w.url}/demo-hg`, 'frozen'])
  await waitFor(() => existsSync(hook.started), 10_000, 'the download to start')
  process.kill(pid, 'SIGSTOP')
  t.teardown(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } })
  const r = await cloning
  t.not(r.code, 0, 'the frozen download fails')
  t.match(r.stderr, /abort|error/i, `and says so: ${r.stderr.trim().split('\n').pop()}`)
  await waitFor(() => child.state === 'ready' && child.pid !== pid, 10_000, 'a fresh child')
  t.ok(w.logs().some((l) => l.msg === 'hg child state' && l.reason === 'silent on its channel past hgTimeoutMs' && l.child_pid === pid))
  // (hg retries a request whose connection closed unanswered: that retry may find no child ready yet)
  const line = accessLines(w, 'getbundle').find((l) => l.child_pid === pid)!
  t.equal(line.aborted, true)
  t.equal(line.status, 502, 'logged as a failed upstream')
  await hook.remove()
  const again = await hg(['clone', `${w.url}/demo-hg`, 'after'])
  t.equal(again.code, 0, again.stderr)
  t.equal(w.app.admission.active, 0)
})

t.test('a child killed before it answered a handed-over download: hg retries on a new connection and the other child serves it', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '2' })
  const pool = w.app.hgPool!
  const hook = await slowHook(w, 'demo-hg', 2)
  const hg = await hgClient(w)
  const cloning = hg(['clone', '-U', `${w.url}/demo-hg`, 'retried'])
  await waitFor(() => existsSync(hook.started), 10_000, 'the download to start')
  const holder = pool.children.find((c) => (c.handoff?.pending ?? 0) > 0)!
  t.ok(holder, 'a child holds the download')
  const pid = holder.pid!
  process.kill(pid, 'SIGKILL')
  const r = await cloning
  t.equal(r.code, 0, r.stderr)
  const lines = accessLines(w, 'getbundle')
  t.equal(lines.length, 2, 'the download was asked for twice')
  t.same([lines[0]!.status, lines[0]!.aborted, lines[0]!.child_pid], [502, true, pid], 'the lost one logged as a failed upstream')
  t.equal(lines[1]!.status, 200)
  t.not(lines[1]!.child_pid, pid)
  t.equal((await local(w)(['-R', path.join(w.dir, 'retried'), 'verify', '-q'])).code, 0)
  await waitFor(() => holder.state === 'ready' && holder.pid !== pid, 5000, 'the child back')
  t.equal(w.app.admission.active, 0)
})

/** Sends a getbundle on a raw socket, reads `keep` bytes of the answer, then resets the connection. */
function readSomeThenLeave(w: Worker, repo: string, tip: string, keep: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(w.port, '127.0.0.1')
    let got = 0
    s.on('connect', () => s.write(`GET /${repo}?cmd=getbundle HTTP/1.1\r\nHost: x\r\nX-HgArg-1: common=${ZERO}&heads=${tip}\r\n\r\n`))
    s.on('data', (c: Buffer) => {
      got += c.length
      if (got >= keep) { s.resetAndDestroy(); resolve(got) }
    })
    s.on('error', reject)
  })
}

t.test('a client that leaves mid-download: logged as aborted, its slot released, the child serves on', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  await bigRepo(w, 'big-hg', 24)
  const tip = await tipOf(w, 'big-hg')
  const child = w.app.hgPool!.children[0]!
  const pid = child.pid!
  t.ok(await readSomeThenLeave(w, 'big-hg', tip, 256 * 1024) >= 256 * 1024)
  await waitFor(() => accessLines(w, 'getbundle').length === 1, 10_000, 'the access line')
  const line = accessLines(w, 'getbundle')[0]!
  t.equal(line.aborted, true)
  t.equal(line.status, 200)
  t.ok((line.bytes_out as number) < 24 * 1024 * 1024, `${String(line.bytes_out)} bytes sent before the client left`)
  t.equal(w.app.admission.active, 0)
  t.equal(child.pid, pid, 'the same child')
  t.equal(child.state, 'ready')
  const whole = await getbundle(w, 'big-hg', tip)
  t.equal(whole.status, 200)
  t.ok(whole.body.length > 24 * 1024 * 1024, 'the next download is whole')
})

t.test('closing the worker waits for a handed-over download, which completes', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const tip = await tipOf(w, 'demo-hg')
  const hook = await slowHook(w, 'demo-hg', 1)
  const downloading = getbundle(w, 'demo-hg', tip)
  await waitFor(() => existsSync(hook.started), 10_000, 'the download to start')
  const closed = w.app.close()
  const res = await downloading
  t.equal(res.status, 200)
  t.ok(res.body.length > 100, 'the whole bundle')
  await closed
  t.equal(w.app.hgPool!.children[0]!.state, 'stopped')
})

t.test('a worker whose children served downloads and were all replaced since still closes', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const tip = await tipOf(w, 'demo-hg')
  const child = w.app.hgPool!.children[0]!
  t.equal((await getbundle(w, 'demo-hg', tip)).status, 200)
  await waitFor(() => child.handoff!.pending === 0, 5000, 'the download reported done')
  const pid = child.pid!
  process.kill(pid, 'SIGKILL')
  await waitFor(() => child.state === 'ready' && child.pid !== pid, 10_000, 'a fresh child')
  const closed = await Promise.race([w.app.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open after 10 s'), 10_000))])
  t.equal(closed, 'closed')
})

t.test('a child killed before it took the connection: the client connection is closed at once, not left hanging', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const tip = await tipOf(w, 'demo-hg')
  const child = w.app.hgPool!.children[0]!
  const pid = child.pid!
  process.kill(pid, 'SIGSTOP') // it cannot read its channel: the socket stays in flight, unacknowledged
  t.teardown(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } })
  const asked = getbundle(w, 'demo-hg', tip).then((r) => `answered ${r.status}`, (err: Error) => `closed: ${err.message}`)
  await waitFor(() => child.handoff!.pending === 1, 5000, 'the handover sent')
  process.kill(pid, 'SIGKILL')
  // without the fix the client waits for its own idle timeout (120 s in CI): 30 s tells the two apart on any load
  const outcome = await Promise.race([asked, new Promise((r) => setTimeout(() => r('still open 30 s after the kill'), 30_000))])
  t.match(outcome, /^closed: /, `the connection closes when the child dies: ${String(outcome)}`)
  await waitFor(() => child.state === 'ready' && child.pid !== pid, 10_000, 'a fresh child')
  await waitFor(() => accessLines(w, 'getbundle').length === 1, 5000, 'the access line')
  t.equal(accessLines(w, 'getbundle')[0]!.status, 502)
  t.equal(child.handoff!.pending, 0)
  t.equal(w.app.admission.active, 0)
  t.equal((await getbundle(w, 'demo-hg', tip)).status, 200, 'the next download is served')
})
