import t from 'tap'
import type { Test } from 'tap'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, open, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { startWorker, spawnWorker, fixtureDir, gitClient, gitWrapper, processesMatching, run, waitFor, CLI, CLI_ENV } from '../helpers/worker.js'

async function setup(t: Test, flags: Record<string, string | boolean> = {}, anonymous = false) {
  const w = await startWorker(t, flags)
  await w.addUser('pusher', 'push-secret', { 'demo.git': 'write' })
  const git = gitClient(w.dir)
  const work = path.join(w.dir, 'work')
  const c = await git(['clone', anonymous ? `${w.url}/demo.git` : `${w.urlAs('pusher', 'push-secret')}/demo.git`, work])
  t.equal(c.code, 0, c.stderr)
  const server = (args: string[]) => git(['--git-dir', path.join(w.reposDir, 'demo.git'), ...args])
  return { w, git, work, server }
}

t.test('push: new branch, update, delete, tags, notes, refs/for, options', async (t) => {
  const { git, work, server, w } = await setup(t)
  await writeFile(path.join(work, 'new.txt'), 'new\n')
  t.equal((await git(['add', 'new.txt'], work)).code, 0)
  t.equal((await git(['commit', '-m', 'new'], work)).code, 0)
  const head = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()

  let r = await git(['push', 'origin', 'HEAD:refs/heads/topic'], work)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, '* [new branch]      HEAD -> topic')
  t.equal((await server(['rev-parse', 'refs/heads/topic'])).stdout.trim(), head, 'new branch on the server')

  r = await git(['push', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal((await server(['rev-parse', 'main'])).stdout.trim(), head, 'main updated')

  r = await git(['push', 'origin', '--delete', 'feature'], work)
  t.equal(r.code, 0, r.stderr)
  t.not((await server(['rev-parse', '--verify', '-q', 'refs/heads/feature'])).code, 0, 'feature deleted')

  await git(['tag', 'v2.0'], work)
  await git(['tag', '-a', 'v2.1', '-m', 'annotated'], work)
  r = await git(['push', 'origin', 'v2.0', 'v2.1'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal((await server(['cat-file', '-t', 'v2.1'])).stdout.trim(), 'tag', 'annotated tag pushed as a tag object')

  await git(['notes', 'add', '-m', 'a note', 'HEAD'], work)
  r = await git(['push', 'origin', 'refs/notes/commits'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal((await server(['notes', 'show', head])).stdout.trim(), 'a note')

  r = await git(['push', 'origin', 'HEAD:refs/for/main'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal((await server(['rev-parse', 'refs/for/main'])).stdout.trim(), head)

  // push options reach the repository's hooks
  const hook = path.join(w.reposDir, 'demo.git', 'hooks', 'pre-receive')
  const record = path.join(w.dir, 'options.txt')
  await mkdir(path.dirname(hook), { recursive: true })
  await writeFile(hook, `#!/bin/sh\nenv | grep '^GIT_PUSH_OPTION' | sort > '${record}'\n`)
  await chmod(hook, 0o755)
  await git(['commit', '--allow-empty', '-m', 'opts'], work)
  r = await git(['push', '-o', 'ci.skip', '-o', 'reviewer=ada', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal(await readFile(record, 'utf8'), 'GIT_PUSH_OPTION_0=ci.skip\nGIT_PUSH_OPTION_1=reviewer=ada\nGIT_PUSH_OPTION_COUNT=2\n')

  t.equal((await server(['fsck', '--strict'])).code, 0, 'server repo is sound')
  const access = w.logs().filter((l) => l.msg === 'request' && l.route === 'git_receive_pack')
  t.ok(access.length >= 7)
  t.ok(access.every((l) => l.status === 200 && l.exit_code === 0 && (l.bytes_in as number) > 0))
})

t.test('non-fast-forward: refused as git refuses it, accepted with --force', async (t) => {
  const { git, work, server } = await setup(t)
  const before = (await server(['rev-parse', 'main'])).stdout.trim()
  await git(['reset', '--hard', 'HEAD~1'], work)
  await git(['commit', '--allow-empty', '-m', 'diverge'], work)
  let r = await git(['push', 'origin', 'main'], work)
  t.not(r.code, 0)
  t.match(r.stderr, '! [rejected]        main -> main (non-fast-forward)')
  t.equal((await server(['rev-parse', 'main'])).stdout.trim(), before, 'unchanged')
  r = await git(['push', '--force', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, '+ ')
  t.not((await server(['rev-parse', 'main'])).stdout.trim(), before)
})

t.test('anonymous push is refused with 401 and changes nothing', async (t) => {
  const { git, work, server, w } = await setup(t, {}, true)
  const before = (await server(['show-ref'])).stdout
  await git(['commit', '--allow-empty', '-m', 'anon'], work)
  const r = await git(['push', 'origin', 'main'], work)
  t.not(r.code, 0)
  t.match(r.stderr, /terminal prompts disabled|Authentication failed/)
  t.equal((await server(['show-ref'])).stdout, before)
  const res = await fetch(`${w.url}/demo.git/info/refs?service=git-receive-pack`)
  t.equal(res.status, 401)
  t.match(res.headers.get('www-authenticate') ?? '', /^Basic realm="vcs-worker"/)
  t.equal(await res.text(), 'authentication required to push\n')
})

t.test('a 200 MB push streams through without the worker holding it', async (t) => {
  const { git, work, server, w } = await setup(t)
  // incompressible content: the pack is as large as the file
  const big = path.join(work, 'big.bin')
  const chunk = 8 * 1024 * 1024
  for (let i = 0; i < 25; i++) await writeFile(big, randomBytes(chunk), { flag: i ? 'a' : 'w' })
  await git(['add', 'big.bin'], work)
  await git(['commit', '-m', 'big'], work)
  // authenticate once first: scrypt's 128 MiB working set is not the push's doing
  t.equal((await git(['push', '--dry-run', 'origin', 'main'], work)).code, 0)
  const rssBefore = process.memoryUsage().rss
  let peak = rssBefore
  const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 20)
  const r = await git(['push', 'origin', 'main'], work, { timeoutMs: 300_000 })
  clearInterval(timer)
  t.equal(r.code, 0, r.stderr)
  if (r.code !== 0) t.comment(w.logText().split('\n').filter((l) => l.includes('receive')).join('\n'))
  t.equal((await server(['rev-parse', 'main'])).stdout.trim(), (await git(['rev-parse', 'HEAD'], work)).stdout.trim())
  t.ok(peak - rssBefore < 100 * 1024 * 1024, `worker RSS grew by ${Math.round((peak - rssBefore) / 1048576)} MB while 200 MB went through`)
})

t.test('a push over the size limit is refused while the client is still sending, with the reason inside git\'s protocol, and changes nothing', async (t) => {
  const { git, work, server, w } = await setup(t, { 'max-push-bytes': String(2 * 1024 * 1024) })
  const before = (await server(['show-ref'])).stdout
  await writeFile(path.join(work, 'big.bin'), randomBytes(20 * 1024 * 1024))
  await git(['add', 'big.bin'], work)
  await git(['commit', '-m', 'too big'], work)
  const r = await git(['push', 'origin', 'main'], work)
  t.not(r.code, 0)
  // (git then adds its own "Everything up-to-date" of a push whose connection was cut: its words, not ours)
  t.match(r.stderr, /remote: push refused: request body is larger than this server accepts \(2097152 bytes\)/, 'git prints our reason (a chunked body cut at the limit)')
  t.notMatch(r.stderr, /HTTP 413/)
  t.equal((await server(['show-ref'])).stdout, before, 'no ref moved')
  // a body small enough for git to declare its length (under http.postBuffer) is refused before a byte is read
  await git(['reset', '-q', '--hard', 'HEAD~1'], work)
  await writeFile(path.join(work, 'mid.bin'), randomBytes(3 * 1024 * 1024))
  await git(['add', 'mid.bin'], work)
  await git(['commit', '-q', '-m', 'mid'], work)
  const small = await git(['-c', 'http.postBuffer=4194304', 'push', 'origin', 'HEAD:main'], work)
  t.not(small.code, 0)
  t.match(small.stderr, /remote: push refused: request body is larger than this server accepts/, small.stderr)
  t.match(small.stderr, /failed to push some refs/)
  t.equal((await server(['show-ref'])).stdout, before, 'no ref moved')
  await waitFor(async () => (await processesMatching(w.reposDir)).length === 0, 10_000, 'git receive-pack to be gone')
  // the worker is fine afterwards
  const again = await git(['ls-remote', `${w.url}/demo.git`])
  t.equal(again.code, 0)
})

/** A commit on `parent` whose tree holds `.GIT/config` (what git's fsck calls hasDotgit), made without a checkout. */
async function dotGitCommit(git: ReturnType<typeof gitClient>, work: string, parent: string): Promise<string> {
  const blob = (await git(['hash-object', '-w', '--stdin'], work, { input: '[core]\n\thooksPath = /tmp\n' })).stdout.trim()
  const inner = (await git(['mktree'], work, { input: `100644 blob ${blob}\tconfig\n` })).stdout.trim()
  const tree = (await git(['mktree'], work, { input: `040000 tree ${inner}\t.GIT\n` })).stdout.trim()
  return (await git(['commit-tree', tree, '-p', parent, '-m', 'sneaky'], work)).stdout.trim()
}

t.test('pushed objects are fsck-checked: a tree with .GIT is refused with git\'s reason; fsckObjects off accepts it', async (t) => {
  const { git, work, server } = await setup(t)
  const before = (await server(['show-ref'])).stdout
  const bad = await dotGitCommit(git, work, 'HEAD')
  const r = await git(['push', 'origin', `${bad}:refs/heads/sneaky`], work)
  t.not(r.code, 0)
  t.match(r.stderr, /hasDotgit: contains '\.git'/, 'git prints fsck\'s reason')
  t.match(r.stderr, /remote rejected|unpack failed/)
  t.equal((await server(['show-ref'])).stdout, before, 'no ref moved')
  t.equal((await server(['cat-file', '-e', bad])).code, 1, 'the object did not land')

  const off = await setup(t, { 'fsck-objects': false })
  const accepted = await off.git(['push', 'origin', `${await dotGitCommit(off.git, off.work, 'HEAD')}:refs/heads/sneaky`], off.work)
  t.equal(accepted.code, 0, `with fsckObjects false it lands: ${accepted.stderr}`)
})

t.test('kill -9 of the worker mid-push: the push ends at once, its quarantine is left, and the next push sweeps it once it is provably stale', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const admin = (args: string[], input?: string) => run(process.execPath, [CLI, ...args, '--repos', reposDir, '--data', dataDir], { env: CLI_ENV, input })
  t.equal((await admin(['user', 'add', 'kip'], 'kip-password\n')).code, 0)
  t.equal((await admin(['grant', 'kip', 'demo', 'write'])).code, 0)
  const demo = path.join(reposDir, 'demo.git')
  const objects = path.join(demo, 'objects')
  const quarantines = async () => (await readdir(objects)).filter((n) => n.startsWith('tmp_objdir-incoming-')).sort()
  // the repo's own pre-receive holds each push inside its quarantine
  const started = path.join(dir, 'hook-started')
  const hook = path.join(demo, 'hooks', 'pre-receive')
  await mkdir(path.dirname(hook), { recursive: true })
  const gate = path.join(dir, 'hook-gate')
  await writeFile(gate, '')
  await writeFile(hook, `#!/bin/sh\ntouch ${started}\nwhile [ -e ${gate} ]; do sleep 0.05; done\nexit 1\n`)
  await chmod(hook, 0o755)
  const git = gitClient(dir)
  const work = path.join(dir, 'work')
  const pushThrough = async (url: string) => {
    await rm(started, { force: true })
    const pushing = git(['push', url.replace('http://', 'http://kip:kip-password@') + '/demo.git', 'main'], work)
    await waitFor(() => existsSync(started), 30_000, 'the push to reach its pre-receive hook')
    t.equal((await quarantines()).length, 1, 'the push is in its quarantine')
    t.ok((await processesMatching(reposDir)).some((p) => p.cmd.includes('receive-pack')), 'receive-pack waits on the hook')
    return { pushing } // wrapped: an async function returning the promise itself would wait for it
  }
  t.equal((await git(['clone', '-q', path.join(reposDir, 'demo.git'), 'work'])).code, 0)
  await writeFile(path.join(work, 'big.bin'), randomBytes(2 * 1024 * 1024))
  await git(['add', 'big.bin'], work)
  await git(['commit', '-q', '-m', 'pushed twice'], work)

  // the worker killed: its spawn helper ends receive-pack and the hook (which would wait for ever),
  // and the push's quarantine stays behind
  const first = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir])
  const { pushing } = await pushThrough(first.url)
  const leaked = await quarantines()
  first.proc.kill('SIGKILL')
  await waitFor(async () => (await processesMatching(reposDir)).length === 0, 10_000, 'receive-pack and the hook to be gone')
  const killed = await pushing
  t.not(killed.code, 0, 'the client saw its push fail')
  t.same(await quarantines(), leaked, 'the quarantine is left behind')
  await rm(hook)
  const second = await spawnWorker(t, ['--repos', reposDir, '--data', dataDir, '--quarantine-stale-ms', '3600000'])

  // beside it: a recent leftover (it may be a live push's) and an old one a process holds open
  const recent = path.join(objects, 'tmp_objdir-incoming-recent')
  const held = path.join(objects, 'tmp_objdir-incoming-held')
  for (const d of [recent, held]) await mkdir(d)
  const handle = await open(path.join(held, 'pack.tmp'), 'w')
  t.teardown(() => handle.close())
  const longAgo = new Date(Date.now() - 2 * 3600_000)
  for (const d of [path.join(objects, leaked[0]!), held]) {
    for (const name of await readdir(d, { recursive: true })) await utimes(path.join(d, name), longAgo, longAgo)
    await utimes(d, longAgo, longAgo)
  }
  const again = await git(['push', second.url.replace('http://', 'http://kip:kip-password@') + '/demo.git', 'main'], work)
  t.equal(again.code, 0, `the next push lands: ${again.stderr}`)
  await waitFor(async () => !(await quarantines()).includes(leaked[0]!), 10_000, 'the stale quarantine to be swept')
  t.same(await quarantines(), ['tmp_objdir-incoming-held', 'tmp_objdir-incoming-recent'], 'a recent one and one a process holds open stay')
  t.equal((await git(['--git-dir', demo, 'fsck', '--no-progress'])).code, 0, 'the repo is whole')
  second.proc.kill('SIGTERM')
})

t.test('the push hooks run the worker\'s gitBin, not the git on PATH', async (t) => {
  // a wrapper that notes each command the hooks give it, then runs the real git
  const wrapper = await gitWrapper(t, '#!/bin/sh\necho "$*" >> @DIR@/calls\nexec git "$@"\n')
  const { git, work, server, w } = await setup(t, { 'git-bin': wrapper })
  const calls = async () => (await readFile(path.join(path.dirname(wrapper), 'calls'), 'utf8').catch(() => '')).split('\n')
  await writeFile(path.join(work, 'h.txt'), 'h\n')
  await git(['add', 'h.txt'], work)
  await git(['commit', '-m', 'h'], work)
  let r = await git(['push', 'origin', 'main'], work)
  t.equal(r.code, 0, r.stderr)
  t.ok((await calls()).some((c) => /^merge-base --is-ancestor [0-9a-f]{40} [0-9a-f]{40}$/.test(c)), 'pre-receive asked the wrapper for the ancestry of main')
  // a repo whose HEAD names no branch: post-receive points it at the first branch pushed
  await server(['symbolic-ref', 'HEAD', 'refs/heads/nothing-here'])
  r = await git(['push', 'origin', 'main:refs/heads/landing'], work)
  t.equal(r.code, 0, r.stderr)
  t.equal((await server(['symbolic-ref', 'HEAD'])).stdout.trim(), 'refs/heads/landing', 'HEAD follows the branch pushed')
  t.ok((await calls()).includes('symbolic-ref HEAD refs/heads/landing'), 'post-receive moved HEAD through the wrapper')
  t.ok(w.logs().some((l) => l.msg === 'request' && l.route === 'git_receive_pack'), 'the pushes went through the worker')
})
