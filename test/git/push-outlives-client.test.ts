import t from 'tap'
import net from 'node:net'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { clientEnv, gitClient, processesMatching, run, startWorker, waitFor, type Worker } from '../helpers/worker.js'

const ZERO = '0'.repeat(40)
const pkt = (s: string | Buffer) => Buffer.concat([Buffer.from((Buffer.byteLength(s) + 4).toString(16).padStart(4, '0')), Buffer.from(s)])

/** A receive-pack request body creating `ref` at a new commit (commands, flush, pack), built with git itself. */
async function pushBody(w: Worker, ref: string): Promise<{ body: Buffer; commit: string }> {
  const git = gitClient(w.dir)
  const src = path.join(w.dir, 'src')
  await git(['init', '-q', '-b', 'trunk', src])
  await writeFile(path.join(src, 'README.md'), 'pushed by a client that did not wait\n')
  await git(['add', 'README.md'], src)
  await git(['commit', '-q', '-m', 'first'], src)
  const commit = (await git(['rev-parse', 'HEAD'], src)).stdout.trim()
  const pack = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    const p = spawn('git', ['pack-objects', '--stdout', '--revs', '-q'], { cwd: src, env: clientEnv(w.dir) })
    p.stdout.on('data', (c: Buffer) => chunks.push(c))
    p.on('error', reject)
    p.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`pack-objects exited ${code}`))))
    p.stdin.end(`${commit}\n`)
  })
  const body = Buffer.concat([pkt(`${ZERO} ${commit} ${ref}\0report-status side-band-64k agent=test\n`), Buffer.from('0000'), pack])
  return { body, commit }
}

/** POSTs a receive-pack request announcing `body`, sends `sent` of it as pat, and closes the connection at once. */
async function rawPushAndGo(w: Worker, body: Buffer, sent: Buffer): Promise<net.Socket> {
  const socket = net.connect(w.port, '127.0.0.1')
  await new Promise<void>((resolve) => socket.once('connect', resolve))
  socket.on('error', () => {})
  socket.on('data', () => {})
  socket.write([
    'POST /empty.git/git-receive-pack HTTP/1.1', `Host: 127.0.0.1:${w.port}`,
    `Authorization: Basic ${Buffer.from('pat:pat-password').toString('base64')}`,
    'Content-Type: application/x-git-receive-pack-request', `Content-Length: ${body.length}`, '', '',
  ].join('\r\n'))
  socket.end(sent, () => socket.destroy())
  return socket
}

t.test('a push whose client closes its socket right after sending the pack: refs, post-receive (HEAD follows the first branch) and the repo\'s own hook all happen', async (t) => {
  const w = await startWorker(t)
  await w.addUser('pat', 'pat-password', { 'empty.git': 'write' })
  const repo = path.join(w.reposDir, 'empty.git')
  const gate = path.join(w.dir, 'gate')
  const marker = path.join(w.dir, 'post-receive-ran')
  // the repo's own post-receive talks to the client (git sends its output as "remote:" lines)
  // until the test's gate opens: the worker finds the client gone at one of those writes, and
  // the hook finishes only after that
  await mkdir(path.join(repo, 'hooks'), { recursive: true })
  await writeFile(path.join(repo, 'hooks', 'post-receive'), `#!/bin/sh\nwhile [ ! -e '${gate}' ]; do echo still here >&2; sleep 0.05; done\ncat > '${marker}'\n`)
  await chmod(path.join(repo, 'hooks', 'post-receive'), 0o755)
  const { body, commit } = await pushBody(w, 'refs/heads/trunk')

  const socket = await rawPushAndGo(w, body, body) // and gone: no response read
  await new Promise<void>((resolve) => socket.once('close', () => resolve()))

  await waitFor(() => w.logs().some((l) => String(l.msg).includes('the client left after sending the whole request')), 10_000, 'the worker to see the client gone')
  await writeFile(gate, '')
  await waitFor(async () => (await readFile(marker, 'utf8').catch(() => '')) !== '', 20_000, 'the repository\'s own post-receive to run')
  t.equal(await readFile(marker, 'utf8'), `${ZERO} ${commit} refs/heads/trunk\n`, 'post-receive ran with the push\'s ref update')
  const server = (args: string[]) => run('git', ['--git-dir', repo, ...args], { env: clientEnv(w.dir) })
  t.equal((await server(['rev-parse', 'refs/heads/trunk'])).stdout.trim(), commit, 'the ref moved')
  t.equal((await server(['symbolic-ref', 'HEAD'])).stdout.trim(), 'refs/heads/trunk', 'HEAD followed the first branch pushed (the worker\'s post-receive)')
  t.equal((await server(['fsck', '--strict'])).code, 0, 'the repo is whole')
  await waitFor(() => w.logs().some((l) => l.msg === 'request' && l.route === 'git_receive_pack'), 5000, 'the access line')
  const line = w.logs().find((l) => l.msg === 'request' && l.route === 'git_receive_pack')!
  t.equal(line.aborted, true, 'logged as a client that left')
  t.equal(line.exit_code, 0, `and git exited 0: ${JSON.stringify(line)}`)
})

t.test('a client that leaves before its pack is whole: git is stopped and no ref moves', async (t) => {
  const w = await startWorker(t)
  await w.addUser('pat', 'pat-password', { 'empty.git': 'write' })
  const repo = path.join(w.reposDir, 'empty.git')
  const { body } = await pushBody(w, 'refs/heads/trunk')
  await rawPushAndGo(w, body, body.subarray(0, body.length - 30)) // the pack's tail never comes
  await waitFor(() => w.logs().some((l) => l.msg === 'request' && l.route === 'git_receive_pack' && l.status !== undefined), 10_000, 'the access line')
  const refs = await run('git', ['--git-dir', repo, 'for-each-ref'], { env: clientEnv(w.dir) })
  t.equal(refs.stdout, '', 'no ref moved')
  await waitFor(async () => (await processesMatching(repo)).length === 0, 10_000, 'git to be gone')
})
