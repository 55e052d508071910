/**
 * Two hosts, one repos dir: a worker killed mid-push on one host does not block
 * the next push from the other; a ref lock left by a killed git is cleared only when provably stale.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdir, readdir, utimes, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fixtureDir, gitClient, spawnWorker, startWorker, TEST_SCRYPT, waitFor } from '../helpers/worker.js'
import { startPostgres } from '../helpers/postgres.js'
import { hashPassword } from '../../src/auth/password.js'

const server = await startPostgres(t)

t.test('kill -9 of a worker mid-push on host a: the same branch pushed through host b, fsck clean; stale and live ref locks', async (t) => {
  const url = server.url(await server.database())
  const b = await startWorker(t, { 'auth-store': url }, { private: true })
  await b.store.addUser('pat', await hashPassword('pat-password', TEST_SCRYPT))
  await b.store.setGrant('pat', 'demo.git', 'write')
  const { dataDir: hostA } = await fixtureDir(t)
  const a = await spawnWorker(t, ['--repos', b.reposDir, '--data', hostA, '--auth-store', url, '--hg-processes', '0'])
  const auth = (base: string) => base.replace('http://', 'http://pat:pat-password@')
  const git = gitClient(b.dir)
  const repo = path.join(b.reposDir, 'demo.git')

  // a 30 MB push through host a, and host a killed while its bytes arrive
  await git(['clone', '-q', `${auth(b.url)}/demo.git`, 'work'])
  const work = path.join(b.dir, 'work')
  await writeFile(path.join(work, 'big.bin'), randomBytes(30 * 1024 * 1024))
  await git(['add', 'big.bin'], work)
  await git(['commit', '-qm', 'big, cut off'], work)
  const cut = git(['push', `${auth(a.url)}/demo.git`, 'HEAD:refs/heads/main'], work, { timeoutMs: 60_000 })
  await waitFor(async () => (await readdir(path.join(repo, 'objects'))).some((n) => n.startsWith('tmp_objdir-incoming-')), 30_000, 'the push arriving on host a')
  a.proc.kill('SIGKILL')
  const r0 = await cut
  t.not(r0.code, 0, 'the client of host a sees its push fail')

  // the same branch, through host b
  await git(['reset', '-q', '--hard', 'HEAD~1'], work)
  await writeFile(path.join(work, 'small.txt'), 'small\n')
  await git(['add', 'small.txt'], work)
  await git(['commit', '-qm', 'through b'], work)
  let r = await git(['push', `${auth(b.url)}/demo.git`, 'HEAD:refs/heads/main'], work)
  t.equal(r.code, 0, `pushed through host b: ${r.stderr}`)
  const fsck = await git(['fsck', '--strict', '--no-dangling'], repo)
  t.equal(fsck.code, 0, `git fsck --strict clean: ${fsck.stdout}${fsck.stderr}`)

  // a lock a killed git left an hour ago: cleared before git locks the ref, the push succeeds
  const lock = path.join(repo, 'refs', 'heads', 'main.lock')
  await mkdir(path.dirname(lock), { recursive: true })
  await writeFile(lock, '0000000000000000000000000000000000000000\n')
  const hourAgo = new Date(Date.now() - 3600_000)
  await utimes(lock, hourAgo, hourAgo)
  await writeFile(path.join(work, 'after-lock.txt'), 'x\n')
  await git(['add', '.'], work)
  await git(['commit', '-qm', 'past a stale lock'], work)
  r = await git(['push', `${auth(b.url)}/demo.git`, 'HEAD:refs/heads/main'], work)
  t.equal(r.code, 0, `a stale lock does not block the push: ${r.stderr}`)
  t.notOk(existsSync(lock), 'the stale lock is gone')
  t.ok(b.logs().some((l) => l.msg === 'removed a stale ref lock left by a killed git' && l.lock === 'refs/heads/main.lock'), 'and its removal logged')

  // a lock taken just now may be a transaction in progress (on any host): left alone
  await writeFile(lock, '0000000000000000000000000000000000000000\n')
  await writeFile(path.join(work, 'live-lock.txt'), 'y\n')
  await git(['add', '.'], work)
  await git(['commit', '-qm', 'blocked by a live lock'], work)
  r = await git(['push', `${auth(b.url)}/demo.git`, 'HEAD:refs/heads/main'], work)
  t.not(r.code, 0, 'a fresh lock blocks the push, as git decides')
  t.match(r.stderr, /main\.lock|cannot lock ref|failed to lock/, `git says why: ${r.stderr}`)
  t.ok(existsSync(lock), 'the fresh lock is not touched')
})
