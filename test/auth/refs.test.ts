import t from 'tap'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import { Readable } from 'node:stream'
import { startWorker, gitClient } from '../helpers/worker.js'

t.test('branch protection: force-push and delete refused per ref, with our reason', async (t) => {
  const w = await startWorker(t)
  await w.addUser('ann', 'ann-password', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-password', { 'demo.git': 'write' })
  await w.store.setProtection('demo.git', 'main', [])
  await w.store.setProtection('demo.git', 'release/*', ['ann'])
  await w.store.setProtection('demo.git', 'feature', [])
  const git = gitClient(w.dir)
  const work = path.join(w.dir, 'ann')
  t.equal((await git(['clone', '-q', `${w.urlAs('ann', 'ann-password')}/demo.git`, work])).code, 0)
  const server = (args: string[]) => git(['--git-dir', path.join(w.reposDir, 'demo.git'), ...args])
  const before = (await server(['show-ref'])).stdout

  // a force-push to main next to a harmless new branch, not atomic: main refused, topic lands
  await git(['reset', '-q', '--hard', 'HEAD~1'], work)
  await git(['commit', '-q', '--allow-empty', '-m', 'rewrite'], work)
  let r = await git(['push', '--force', 'origin', 'main', 'HEAD:refs/heads/topic'], work)
  t.not(r.code, 0)
  t.match(r.stderr, '! [remote rejected] main -> main (protected branch: force-push not allowed)')
  t.match(r.stderr, '* [new branch]      HEAD -> topic')
  t.match(r.stderr, 'remote: refs/heads/main: protected branch: force-push not allowed')
  t.equal((await server(['rev-parse', 'main'])).stdout, before.match(/^(\w+) refs\/heads\/main$/m)![1] + '\n', 'main unchanged')
  t.equal((await server(['rev-parse', 'topic'])).code, 0, 'topic created')

  // atomic: one refusal fails the whole push
  r = await git(['push', '--atomic', '--force', 'origin', 'main', 'HEAD:refs/heads/topic2'], work)
  t.not(r.code, 0)
  t.match(r.stderr, 'protected branch: force-push not allowed')
  t.not((await server(['rev-parse', '--verify', '-q', 'refs/heads/topic2'])).code, 0, 'atomic: topic2 not created')

  r = await git(['push', 'origin', '--delete', 'feature'], work)
  t.not(r.code, 0)
  t.match(r.stderr, '! [remote rejected] feature (protected branch: deletion not allowed)')
  t.equal((await server(['rev-parse', '--verify', '-q', 'refs/heads/feature'])).code, 0, 'feature still there')

  // a fast-forward of main is fine
  await git(['fetch', '-q', 'origin'], work)
  await git(['reset', '-q', '--hard', 'origin/main'], work)
  await git(['commit', '-q', '--allow-empty', '-m', 'ff'], work)
  r = await git(['push', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)

  // release/* is writable by ann only
  const bobWork = path.join(w.dir, 'bob')
  await git(['clone', '-q', `${w.urlAs('bob', 'bob-password')}/demo.git`, bobWork])
  await git(['checkout', '-q', 'release/1.x'], bobWork)
  await git(['commit', '-q', '--allow-empty', '-m', 'bob on release'], bobWork)
  r = await git(['push', 'origin', 'release/1.x'], bobWork)
  t.not(r.code, 0)
  t.match(r.stderr, '! [remote rejected] release/1.x -> release/1.x (protected branch: you may not push to it)')
  await git(['checkout', '-q', 'release/1.x'], work)
  await git(['commit', '-q', '--allow-empty', '-m', 'ann on release'], work)
  r = await git(['push', 'origin', 'release/1.x'], work)
  t.equal(r.code, 0, `ann may: ${r.stderr}`)
  t.equal((await server(['fsck', '--strict'])).code, 0)
})

t.test("the repository's hooks run, and learn who pushed", async (t) => {
  const w = await startWorker(t)
  await w.addUser('gus', 'gus-password', { 'demo.git': 'write' })
  const hooks = path.join(w.reposDir, 'demo.git', 'hooks')
  await mkdir(hooks, { recursive: true })
  const record = path.join(w.dir, 'who.txt')
  for (const name of ['pre-receive', 'update', 'post-receive']) {
    await writeFile(path.join(hooks, name), `#!/bin/sh\necho "${name} REMOTE_USER=$REMOTE_USER VCS_WORKER_USER=$VCS_WORKER_USER" >> '${record}'\n`)
    await chmod(path.join(hooks, name), 0o755)
  }
  const git = gitClient(w.dir)
  const work = path.join(w.dir, 'gus')
  await git(['clone', '-q', `${w.urlAs('gus', 'gus-password')}/demo.git`, work])
  await git(['commit', '-q', '--allow-empty', '-m', 'x'], work)
  const r = await git(['push', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal(await readFile(record, 'utf8'), [
    'pre-receive REMOTE_USER=gus VCS_WORKER_USER=gus',
    'update REMOTE_USER=gus VCS_WORKER_USER=gus',
    'post-receive REMOTE_USER=gus VCS_WORKER_USER=gus',
    '',
  ].join('\n'))
  // a repository's own update hook can still refuse: git's generic message then
  await writeFile(path.join(hooks, 'update'), '#!/bin/sh\necho "no pushes on Fridays" >&2\nexit 1\n')
  await git(['commit', '-q', '--allow-empty', '-m', 'y'], work)
  const refused = await git(['push', 'origin', 'main'], work)
  t.not(refused.code, 0)
  t.match(refused.stderr, 'remote: no pushes on Fridays')
  t.match(refused.stderr, '! [remote rejected] main -> main (hook declined)')
})

t.test('a 100 MB push without credentials: git is asked for them, then the push succeeds', async (t) => {
  const w = await startWorker(t)
  await w.addUser('hal', 'hal-password', { 'demo.git': 'write' })
  const git = gitClient(w.dir)
  const work = path.join(w.dir, 'work')
  await git(['clone', '-q', `${w.url}/demo.git`, work])
  await writeFile(path.join(work, 'big.bin'), randomBytes(100 * 1024 * 1024))
  await git(['add', 'big.bin'], work)
  await git(['commit', '-q', '-m', 'big'], work)
  let r = await git(['push', 'origin', 'main'], work)
  t.not(r.code, 0)
  t.match(r.stderr, /could not read Username|Authentication failed/, 'no terminal: git reports the 401')
  t.notMatch(r.stderr, /broken pipe|unexpected disconnect|RPC failed/i, 'not a broken connection')
  // a credential helper answers the prompt; the same push then goes through
  const askpass = path.join(w.dir, 'askpass.sh')
  const asked = path.join(w.dir, 'asked.txt')
  await writeFile(askpass, `#!/bin/sh\necho "$1" >> '${asked}'\ncase "$1" in Username*) echo hal ;; *) echo hal-password ;; esac\n`)
  await chmod(askpass, 0o755)
  const withAsk = gitClient(w.dir, { GIT_ASKPASS: askpass })
  r = await withAsk(['push', 'origin', 'main'], work, { timeoutMs: 300_000 })
  t.equal(r.code, 0, r.stderr)
  t.match(await readFile(asked, 'utf8'), /^Username for 'http:\/\/127\.0\.0\.1:\d+': \nPassword for 'http:\/\/hal@127\.0\.0\.1:\d+': \n$/)
})

t.test('a POST refused before its body is read: the answer arrives, the connection stays in sync', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const post = (body: Buffer | (() => Readable), headers: Record<string, string> = {}) => new Promise<{ status: number; text: string; reused: boolean; connection?: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: w.port, method: 'POST', path: '/demo.git/git-receive-pack', agent, headers: { 'content-type': 'application/x-git-receive-pack-request', ...headers } }, (res) => {
      let text = ''
      res.on('data', (c) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode!, text, reused: req.reusedSocket, connection: res.headers.connection }))
    })
    req.on('error', reject)
    if (Buffer.isBuffer(body)) req.end(body)
    else body().pipe(req)
  })
  // 5 MB with a Content-Length: read and discarded, and the same connection then serves the
  // next request (raw socket: Node's own client never reuses a socket whose body was cut short)
  const exchange = await new Promise<string>((resolve, reject) => {
    const s = net.connect(w.port, '127.0.0.1')
    let got = ''
    s.on('data', (c) => { got += c.toString('latin1') })
    s.on('error', reject)
    s.on('close', () => resolve(got))
    s.write('POST /demo.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Length: 5242880\r\n\r\n')
    s.write(Buffer.alloc(5 * 1024 * 1024, 1), () => {
      s.write('GET /demo.git/info/refs?service=git-receive-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    })
  })
  const answers = exchange.match(/^HTTP\/1\.1 \d+/gm)
  if (answers?.length !== 2) t.comment(exchange.slice(0, 600))
  t.same(answers, ['HTTP/1.1 401', 'HTTP/1.1 401'], 'both requests answered on one connection, in order')
  t.match(exchange, 'authentication required to push\n')
  // 12 MB chunked (length unknown): answered, then the connection is closed
  const chunked = await post(() => Readable.from((function* () { for (let i = 0; i < 12; i++) yield Buffer.alloc(1024 * 1024, 2) })()))
  t.equal(chunked.status, 401)
  t.equal(chunked.connection, 'close')
})
