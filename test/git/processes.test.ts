import t from 'tap'
import path from 'node:path'
import http from 'node:http'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { spawnChild } from '../../src/process/child.js'
import { startWorker, spawnWorker, fixtureDir, gitClient, processesMatching, waitFor, run, CLI, rawRequest, gitWrapper, PASS_THROUGH_GIT, addBigRepo } from '../helpers/worker.js'

const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, '0')}${s}`

/** Starts a v0 fetch of `oid`, reads the first bytes, then stops reading; resolves with the request. */
function stalledClone(port: number, oid: string): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/big.git/git-upload-pack', agent: false, headers: { 'content-type': 'application/x-git-upload-pack-request' } }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`clone answered ${res.statusCode}`))
      res.once('data', () => { res.pause(); resolve({ req, res }) })
    })
    req.on('error', (err) => { if (!req.destroyed) reject(err) })
    req.end(`${pkt(`want ${oid} side-band-64k ofs-delta\n`)}0000${pkt('done\n')}`)
  })
}

t.test('a client that goes away mid-clone: git is killed and reaped at once', async (t) => {
  const w = await startWorker(t)
  const main = await addBigRepo(w.dir, w.reposDir)
  await w.store.setRepo('big.git', 'git', true)
  const { req } = await stalledClone(w.port, main)
  const running = await processesMatching(path.join(w.reposDir, 'big.git'))
  t.ok(running.length >= 1, `git is running (${running.map((p) => p.cmd.split(' ')[0]).join(', ')})`)
  req.destroy()
  await waitFor(async () => (await processesMatching(w.reposDir)).length === 0, 5000, 'git to be gone')
  t.same(await processesMatching(w.reposDir), [], 'no git process and no zombie')
  await waitFor(() => w.logs().some((l) => l.msg === 'request' && l.route === 'git_upload_pack'), 5000, 'the access line')
  const line = w.logs().find((l) => l.msg === 'request' && l.route === 'git_upload_pack')!
  t.equal(line.aborted, true, 'logged as aborted')
  t.not(line.exit_code, 0, 'with the exit of the killed git')
})

t.test('kill -9 of the worker mid-clone leaves no git process behind', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const main = await addBigRepo(dir, reposDir)
  const vis = await run(process.execPath, [CLI, 'repo', 'visibility', 'big', 'public', '--repos', reposDir, '--data', dataDir])
  t.equal(vis.code, 0, vis.stderr)
  const worker = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir])
  const port = Number(new URL(worker.url).port)
  const { req } = await stalledClone(port, main)
  t.ok((await processesMatching(reposDir)).length >= 1, 'git is serving the clone')
  worker.proc.kill('SIGKILL')
  await waitFor(async () => (await processesMatching(reposDir)).length === 0, 10_000, 'orphaned git to exit')
  t.same(await processesMatching(reposDir), [])
  req.destroy()
})

t.test('git missing at start-up: exit 1 with a clean message', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const start = await run(process.execPath, [CLI, 'serve', '--port', '0', '--repos', reposDir, '--data', dataDir, '--git-bin', path.join(dir, 'no-such-git')])
  t.equal(start.code, 1, 'exit 1: a runtime failure')
  t.match(start.stderr, /^vcs-worker: git is not usable \(gitBin=.*no-such-git\)/)
})

t.test('git that disappears or breaks while serving: clean per-request errors, no crash', async (t) => {
  const wrapper = await gitWrapper(t)
  const w = await startWorker(t, { 'git-bin': wrapper })
  t.equal((await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack')).status, 200)
  await rm(wrapper)
  for (const headers of [{}, { 'git-protocol': 'version=2' }] as Record<string, string>[]) {
    const res = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', headers)
    t.equal(res.status, 503, `missing git -> 503 (${JSON.stringify(headers)})`)
    t.equal(res.body.toString(), 'git is not available on this worker\n')
  }
  const post = await rawRequest(w.port, 'POST', '/demo.git/git-upload-pack', { 'content-type': 'application/x-git-upload-pack-request' }, `${pkt('want 5ac674cbf899a6fbcdfc314785e2e58c31ca95a2\n')}0000${pkt('done\n')}`)
  t.equal(post.status, 503)
  await writeFile(wrapper, '#!/bin/sh\necho "fatal: this git is broken" >&2\nexit 128\n')
  await chmod(wrapper, 0o755)
  const broken = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack')
  t.equal(broken.status, 500)
  t.equal(broken.body.toString(), 'git upload-pack failed: this git is broken\n')
  t.ok(w.logs().some((l) => l.level === 50 && String(l.stderr).includes('this git is broken')), "git's stderr is in the log")
  await writeFile(wrapper, PASS_THROUGH_GIT)
  t.equal((await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack')).status, 200, 'the worker lived through it')
})

t.test('a clone streams: the worker does not hold the pack', async (t) => {
  const w = await startWorker(t)
  await addBigRepo(w.dir, w.reposDir)
  await w.store.setRepo('big.git', 'git', true)
  const git = gitClient(w.dir)
  t.equal((await git(['ls-remote', `${w.url}/big.git`])).code, 0, 'warm-up')
  const before = process.memoryUsage().rss
  let peak = before
  const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 10)
  const r = await git(['clone', '-q', '--bare', `${w.url}/big.git`, 'big-clone.git'])
  clearInterval(timer)
  t.equal(r.code, 0, r.stderr)
  const line = w.logs().filter((l) => l.msg === 'request' && l.route === 'git_upload_pack').pop()!
  t.ok((line.bytes_out as number) > 40 * 1024 * 1024, `${line.bytes_out} bytes streamed`)
  t.ok(peak - before < 30 * 1024 * 1024, `worker RSS grew by ${Math.round((peak - before) / 1048576)} MB for a 40 MB pack`)
})

/** A git that serves upload-pack for `packets` pkt-lines (plus `extra` bytes), then dies. */
async function dyingGit(dir: string, name: string, packets: number, extra: number): Promise<string> {
  const file = path.join(dir, `${name}.cjs`)
  await writeFile(file, `#!/usr/bin/env node
const { spawn } = require('child_process')
const args = process.argv.slice(2)
if (!args.includes('upload-pack') || args.includes('--advertise-refs')) {
  spawn('git', args, { stdio: 'inherit' }).on('exit', (c) => process.exit(c ?? 1))
} else {
  const git = spawn('git', args, { stdio: ['inherit', 'pipe', 'inherit'] })
  let buf = Buffer.alloc(0), sent = 0, done = false
  git.stdout.on('data', (c) => {
    if (done) return
    buf = Buffer.concat([buf, c])
    while (buf.length >= 4 && sent < ${packets}) {
      const len = parseInt(buf.subarray(0, 4).toString(), 16), size = len < 4 ? 4 : len
      if (buf.length < size) break
      process.stdout.write(buf.subarray(0, size)); buf = buf.subarray(size); sent++
    }
    if (sent >= ${packets} && buf.length >= ${extra}) {
      done = true
      process.stdout.write(buf.subarray(0, ${extra}), () => { git.kill('SIGKILL'); process.stderr.write('fatal: simulated crash\\n'); process.exit(1) })
    }
  })
}
`)
  await chmod(file, 0o755)
  return file
}

for (const [v, relay] of [['0', true], ['2', true], ['0', false], ['2', false]] as const) {
  for (const [where, extra] of [['between packets', 0], ['inside a packet', 2]] as const) {
    t.test(`git dying mid-clone ${where}, protocol v${v}, ${relay ? 'through the pack relay' : 'through the worker'}`, async (t) => {
      const bin = await mkdtemp(path.join(os.tmpdir(), 'vcsw-git-'))
      t.teardown(() => rm(bin, { recursive: true, force: true }))
      const w = await startWorker(t, { 'git-bin': await dyingGit(bin, 'git-dies', 3, extra), 'pack-relay': relay })
      await addBigRepo(w.dir, w.reposDir)
      await w.store.setRepo('big.git', 'git', true)
      const r = await gitClient(w.dir)(['-c', `protocol.version=${v}`, 'clone', `${w.url}/big.git`, 'c'])
      t.not(r.code, 0, 'the clone fails')
      if (extra === 0) t.match(r.stderr, /remote( error)?: git upload-pack failed: simulated crash/, 'the client prints our reason')
      else t.notMatch(r.stderr, /simulated crash/, 'cut: no partial packet is passed off as complete')
      t.ok(w.logs().some((l) => l.level === 50 && String(l.stderr).includes('simulated crash')), "the log has git's stderr")
    })
  }
}

t.test('through the spawn helper, output nobody reads any more (a response cut short) does not leave the child blocked', async (t) => {
  // 8 MB to a stdout whose reader was destroyed at once: the child must see its reader gone
  // (EPIPE) and exit, and the spawn must settle, instead of waiting forever on a paused socket.
  const child = spawnChild('sh', ['-c', 'head -c 8000000 /dev/zero'], { env: { PATH: process.env.PATH! }, killGraceMs: 1000, viaHelper: true })
  child.proc.stdout.destroy()
  const status = await Promise.race([child.exited, new Promise((r) => setTimeout(() => r('still running'), 10_000))])
  t.not(status, 'still running', 'the child exited and its streams closed')
})
