import t from 'tap'
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { gateWrapper, gitClient, gitWrapper, metric, processesMatching, startWorker, waitFor } from '../helpers/worker.js'
import { cloneAs, lfsUser, routeRequests } from '../helpers/lfs.js'

t.test('git lfs lock, locks and unlock; a push that changes a file another user locked is refused naming the owner', async (t) => {
  const w = await startWorker(t)
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-pw', { 'demo.git': 'write' })
  await w.addUser('carol', 'carol-pw', { 'demo.git': 'read' })
  await w.addUser('dora', 'dora-pw', { 'demo.git': 'admin' })
  const alice = await lfsUser(w, 'alice')
  const bob = await lfsUser(w, 'bob')
  const carol = await lfsUser(w, 'carol')
  const dora = await lfsUser(w, 'dora')
  const clone = (git: typeof alice, who: string, pw: string) => cloneAs(w, git, who, pw, `${who}-work`, ['-b', 'main'])

  // alice adds a lockable design file to main
  const aliceWork = await cloneAs(w, alice, 'alice', 'alice-pw', 'alice-work')
  let r
  await alice(['checkout', '-q', '-B', 'main'], aliceWork)
  t.equal((await alice(['lfs', 'track', '--lockable', '*.psd'], aliceWork)).code, 0)
  await writeFile(path.join(aliceWork, 'design.psd'), randomBytes(20_000))
  await writeFile(path.join(aliceWork, 'notes.txt'), 'notes\n')
  await alice(['add', '.gitattributes', 'design.psd', 'notes.txt'], aliceWork)
  t.equal((await alice(['commit', '-q', '-m', 'design'], aliceWork)).code, 0)
  r = await alice(['push', '-q', 'origin', 'main'], aliceWork)
  t.equal(r.code, 0, r.stderr)

  const mark = w.logs().length
  r = await alice(['lfs', 'lock', 'design.psd'], aliceWork)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /Locked design\.psd/)
  r = await alice(['lfs', 'lock', 'design.psd'], aliceWork)
  t.not(r.code, 0, 'a second lock of the same file fails')
  t.match(r.stderr, /already created lock|already locked/i)

  const bobWork = await clone(bob, 'bob', 'bob-pw')
  r = await bob(['lfs', 'locks'], bobWork)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /design\.psd\s+alice\s+ID:\d+/, 'bob sees alice holds it')

  // bob changes it anyway and pushes without git-lfs's own pre-push check: the server refuses
  await chmod(path.join(bobWork, 'design.psd'), 0o644)
  await writeFile(path.join(bobWork, 'design.psd'), randomBytes(20_000))
  await writeFile(path.join(bobWork, 'notes.txt'), 'more notes\n')
  await bob(['commit', '-q', '-am', 'my design'], bobWork)
  t.equal((await bob(['lfs', 'push', 'origin', 'main'], bobWork)).code, 0, 'his object may be uploaded: objects are not locked')
  r = await bob(['push', '--no-verify', 'origin', 'main'], bobWork)
  t.not(r.code, 0, 'the push is refused')
  t.match(r.stderr, /design\.psd \(locked by alice\)/, 'naming the file and its owner')
  t.equal((await bob(['ls-remote', 'origin', 'refs/heads/main'], bobWork)).stdout.split('\t')[0], (await alice(['rev-parse', 'HEAD'], aliceWork)).stdout.trim(), 'main did not move')
  r = await bob(['push', 'origin', 'main'], bobWork)
  t.not(r.code, 0, 'with git-lfs\'s pre-push too (which only warns; the server refuses)')
  t.match(r.stderr, /remote rejected.*design\.psd \(locked by alice\)/)

  // bob cannot unlock it, not even with --force; carol (read) cannot lock at all
  r = await bob(['lfs', 'unlock', 'design.psd'], bobWork)
  t.not(r.code, 0)
  t.match(r.stderr, /design\.psd is locked by alice; only they, or an admin of the repo with --force, may unlock it/)
  r = await bob(['lfs', 'unlock', '--force', 'design.psd'], bobWork)
  t.not(r.code, 0)
  t.match(r.stderr, /only an admin of demo\.git may force/)
  const carolWork = await clone(carol, 'carol', 'carol-pw')
  r = await carol(['lfs', 'lock', 'notes.txt'], carolWork)
  t.not(r.code, 0)
  t.match(r.stderr, /carol may read demo\.git but not push to it/, 'a reader cannot lock')
  r = await carol(['lfs', 'locks'], carolWork)
  t.equal(r.code, 0, 'a reader may list them')
  t.match(r.stdout, /design\.psd\s+alice/)

  // alice changes her own locked file: accepted
  await chmod(path.join(aliceWork, 'design.psd'), 0o644)
  await writeFile(path.join(aliceWork, 'design.psd'), randomBytes(20_000))
  await alice(['commit', '-q', '-am', 'her design'], aliceWork)
  r = await alice(['push', 'origin', 'main'], aliceWork)
  t.equal(r.code, 0, r.stderr)

  // unlocked: bob's push (rebased on hers) goes through
  r = await alice(['lfs', 'unlock', 'design.psd'], aliceWork)
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /Unlocked design\.psd/)
  await bob(['pull', '-q', '--no-rebase', '-X', 'theirs', 'origin', 'main'], bobWork)
  r = await bob(['push', 'origin', 'main'], bobWork)
  t.equal(r.code, 0, r.stderr)

  // an admin forces a lock open
  t.equal((await bob(['lfs', 'lock', 'design.psd'], bobWork)).code, 0)
  const doraWork = await clone(dora, 'dora', 'dora-pw')
  r = await dora(['lfs', 'unlock', '--force', 'design.psd'], doraWork)
  t.equal(r.code, 0, r.stderr)
  r = await dora(['lfs', 'locks'], doraWork)
  t.equal(r.stdout.trim(), '', 'no locks left')

  const logged = routeRequests(w, mark, 'lfs_locks')
  t.ok(logged.length >= 8, 'each locks request logged under lfs_locks')
  t.ok(logged.some((l) => l.status === 201 && typeof l.lock_id === 'string' && l.service === 'lfs-locks'), 'a lock taken, with its id')
})

const LFS = 'application/vnd.git-lfs+json'
const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`
type LockJson = { id: string; path: string; locked_at: string; owner: { name: string } }

t.test('the locks API: bad input refused with its JSON error and nothing stored; paging, filters, verify, force', async (t) => {
  const w = await startWorker(t, { 'lfs-max-locks-per-repo': '40' }, { private: true })
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-pw', { 'demo.git': 'write' })
  await w.addUser('carol', 'carol-pw', { 'demo.git': 'read' })
  const base = `${w.url}/demo.git/info/lfs/locks`
  const call = (url: string, opts: { as?: string; body?: unknown; method?: string; accept?: string } = {}) => fetch(url, {
    method: opts.method ?? (opts.body === undefined ? 'GET' : 'POST'),
    headers: { accept: opts.accept ?? LFS, 'content-type': LFS, ...(opts.as ? { authorization: opts.as } : {}) },
    body: opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body),
  })
  const alice = basic('alice', 'alice-pw')
  const bob = basic('bob', 'bob-pw')
  const err = async (res: Response) => [res.status, res.headers.get('content-type'), ((await res.json()) as { message: string }).message]
  const lock = (path: unknown, as = alice) => call(base, { as, body: { path, ref: { name: 'refs/heads/main' } } })

  const anon = await call(base)
  t.equal(anon.status, 401, 'a private repo asks who is listing')
  t.match(anon.headers.get('lfs-authenticate'), /^Basic /)
  for (const bad of ['../etc/passwd', '/abs/path', 'a//b', 'a/./b', 'a/..', '', 'a\u0000b', 'tab\there', 'x'.repeat(4097), 42, null]) {
    t.match(await err(await lock(bad)), [422, LFS, /path (must|is longer|cannot)/], `path ${JSON.stringify(bad)?.slice(0, 30)} refused`)
  }
  t.match(await err(await call(base, { as: alice, body: '{"path": ' })), [422, LFS, /not JSON/])
  t.match(await err(await call(base, { as: alice, body: '["a"]' })), [422, LFS, /JSON object/])
  t.match(await err(await call(base, { as: alice, body: ' '.repeat(100_000) })), [413, LFS, /larger than 65536 bytes/])
  t.match(await err(await call(base, { as: alice, body: { path: 'a' }, accept: 'application/json' })), [406, LFS, /Accept must include/])
  t.match(await err(await lock('a.psd', basic('carol', 'carol-pw'))), [403, LFS, /carol may read demo\.git but not push to it/])
  t.match(await err(await call(base, { as: alice, method: 'PUT', body: {} })), [405, LFS, /.+/], 'PUT: not allowed')
  t.same(await w.store.listLocks('demo.git', { limit: 10 }), [], 'none of that stored anything')

  // take three; one twice
  const made: LockJson[] = []
  for (const [p, as] of [['art/a.psd', alice], ['art/b.psd', bob], ['c d/ünï.psd', alice]] as const) {
    const res = await lock(p, as)
    t.equal(res.status, 201, `${p} locked`)
    t.equal(res.headers.get('content-type'), LFS)
    made.push(((await res.json()) as { lock: LockJson }).lock)
  }
  t.match(made[0], { id: /^\d+$/, path: 'art/a.psd', owner: { name: 'alice' }, locked_at: /^\d{4}-\d\d-\d\dT/ })
  const twice = await lock('art/a.psd', bob)
  t.equal(twice.status, 409, 'a locked path: 409')
  t.match(await twice.json(), { lock: { id: made[0]!.id, owner: { name: 'alice' } }, message: /already locked by alice/ }, 'with the lock that is there')

  // listing: pages by limit and cursor; filters by path and id
  const list = async (query: string) => (await (await call(`${base}${query}`, { as: bob })).json()) as { locks: LockJson[]; next_cursor?: string }
  const first = await list('?limit=2')
  t.same(first.locks.map((l) => l.path), ['art/a.psd', 'art/b.psd'])
  t.equal(first.next_cursor, made[2]!.id, 'the cursor of the next page')
  const second = await list(`?limit=2&cursor=${first.next_cursor}`)
  t.same([second.locks.map((l) => l.path), second.next_cursor], [['c d/ünï.psd'], undefined], 'the last page has no cursor')
  t.same((await list(`?path=${encodeURIComponent('c d/ünï.psd')}`)).locks.map((l) => l.id), [made[2]!.id], 'by path')
  t.same((await list(`?id=${made[1]!.id}`)).locks.map((l) => l.path), ['art/b.psd'], 'by id')
  t.same((await list('?id=abc')).locks, [], 'an id that cannot be one names none')
  t.same((await list('?path=../x')).locks, [])
  for (const [query, message] of [['?limit=0', /limit must be/], ['?limit=1001', /limit must be/], ['?limit=x', /limit must be/], ['?cursor=../1', /cursor is not one/], ['?path=a&path=b', /path may be given once/]] as const) {
    t.match(await err(await call(`${base}${query}`, { as: bob })), [422, LFS, message], query)
  }

  // verify: mine and the others'
  const verify = await call(`${base}/verify`, { as: alice, body: { ref: { name: 'refs/heads/main' } } })
  t.equal(verify.status, 200)
  const v = (await verify.json()) as { ours: LockJson[]; theirs: LockJson[] }
  t.same([v.ours.map((l) => l.path), v.theirs.map((l) => l.path)], [['art/a.psd', 'c d/ünï.psd'], ['art/b.psd']])
  t.match(await err(await call(`${base}/verify`, { as: basic('carol', 'carol-pw'), body: {} })), [403, LFS, /not push/], 'verify needs write')
  t.match(await err(await call(`${base}/verify`, { as: alice })), [405, LFS, /use POST/], 'GET on verify')

  // unlock: not found, not hers, bad force, then hers
  const unlock = (id: string, body: unknown, as = alice) => call(`${base}/${id}/unlock`, { as, body })
  t.match(await err(await unlock('999999', {})), [404, LFS, /lock not found/])
  t.match(await err(await unlock('abc', {})), [404, LFS, /lock not found/], 'an id that cannot be one')
  t.match(await err(await unlock(made[1]!.id, { force: 'yes' })), [422, LFS, /force must be true or false/])
  t.match(await err(await unlock(made[1]!.id, {})), [403, LFS, /art\/b\.psd is locked by bob/])
  t.match(await err(await unlock(made[1]!.id, { force: true })), [403, LFS, /only an admin of demo\.git/], 'force needs admin')
  const ok = await unlock(made[0]!.id, { force: false })
  t.equal(ok.status, 200)
  t.match(await ok.json(), { lock: { id: made[0]!.id, path: 'art/a.psd' } })
  t.match(await err(await unlock(made[0]!.id, {})), [404, LFS, /lock not found/], 'once')
  t.same((await w.store.listLocks('demo.git', { limit: 10 })).map((l) => l.path), ['art/b.psd', 'c d/ünï.psd'])

  // a repo at its limit takes no more
  const aliceId = (await w.store.findUser('alice'))!.id
  const max = w.config.lfsMaxLocksPerRepo
  t.equal(max, 40, 'the setting')
  for (let i = 0; i < max - 2; i++) await w.store.createLock('demo.git', `bulk/${i}`, aliceId, max)
  t.match(await err(await lock('one-more')), [422, LFS, new RegExp(`holds ${max} locks, the most it may`)])
  t.equal((await fetch(`${w.url}/health/live`)).status, 200, 'the worker is alive after all of it')
})

t.test('the push check: renames and deletions of a locked file count, merges by what they bring, the owner and unrelated refs pass', async (t) => {
  const w = await startWorker(t)
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-pw', { 'demo.git': 'write' })
  const bob = await lfsUser(w, 'bob')
  const work = await cloneAs(w, bob, 'bob', 'bob-pw', 'bob-work')
  let r
  await bob(['checkout', '-q', '-B', 'main'], work)
  await writeFile(path.join(work, 'locked.bin'), 'v1\n')
  await writeFile(path.join(work, 'free.txt'), 'v1\n')
  await bob(['add', 'locked.bin', 'free.txt'], work)
  await bob(['commit', '-q', '-m', 'base'], work)
  t.equal((await bob(['push', '-q', 'origin', 'main'], work)).code, 0)
  const res = await fetch(`${w.url}/demo.git/info/lfs/locks`, { method: 'POST', headers: { accept: LFS, 'content-type': LFS, authorization: basic('alice', 'alice-pw') }, body: JSON.stringify({ path: 'locked.bin' }) })
  t.equal(res.status, 201)
  const push = (ref: string) => bob(['push', '--no-verify', 'origin', ref], work)

  // an unrelated change passes; a branch at an old commit, a tag, a deletion pass
  await writeFile(path.join(work, 'free.txt'), 'v2\n')
  await bob(['commit', '-q', '-am', 'free'], work)
  t.equal((r = await push('main')).code, 0, r.stderr)
  t.equal((r = await push('HEAD~1:refs/heads/old')).code, 0, r.stderr)
  await bob(['tag', 'v1', 'HEAD~1'], work)
  t.equal((r = await push('v1')).code, 0, r.stderr)
  t.equal((r = await push(':refs/heads/old')).code, 0, r.stderr)

  // a rename of the locked file: refused
  await bob(['mv', 'locked.bin', 'moved.bin'], work)
  await bob(['commit', '-q', '-m', 'move'], work)
  r = await push('HEAD:refs/heads/rename')
  t.not(r.code, 0)
  t.match(r.stderr, /locked\.bin \(locked by alice\)/, 'a rename removes the locked path')
  await bob(['reset', '-q', '--hard', 'HEAD~1'], work)
  // deleting it: refused
  await bob(['rm', '-q', 'locked.bin'], work)
  await bob(['commit', '-q', '-m', 'delete'], work)
  r = await push('HEAD:refs/heads/delete')
  t.match(r.stderr, /locked\.bin \(locked by alice\)/, 'so does a deletion')
  await bob(['reset', '-q', '--hard', 'HEAD~1'], work)

  // a side branch changes it; a merge bringing that change into main is refused, on main only
  await bob(['checkout', '-q', '-b', 'side'], work)
  await writeFile(path.join(work, 'locked.bin'), 'v2\n')
  await bob(['commit', '-q', '-am', 'side change'], work)
  await bob(['checkout', '-q', 'main'], work)
  await writeFile(path.join(work, 'other.txt'), 'x\n')
  await bob(['add', 'other.txt'], work)
  await bob(['commit', '-q', '-m', 'main moves'], work)
  await bob(['merge', '-q', '--no-edit', 'side'], work)
  r = await bob(['push', '--no-verify', 'origin', 'main', 'HEAD~1:refs/heads/plain'], work)
  t.not(r.code, 0)
  t.match(r.stderr, /! \[remote rejected\] main -> main \(changes files locked by others: locked\.bin \(locked by alice\)/)
  t.match(r.stderr, /\* \[new branch\]\s+HEAD~1 -> plain|HEAD~1 -> plain/, 'the other ref of the same push is accepted')
  t.notMatch(r.stderr, /rejected\][^\n]*plain/)

  // the owner's own change is hers to push
  const alice = await lfsUser(w, 'alice')
  const aw = await cloneAs(w, alice, 'alice', 'alice-pw', 'alice-work', ['-b', 'main'])
  await writeFile(path.join(aw, 'locked.bin'), 'hers\n')
  await alice(['commit', '-q', '-am', 'hers'], aw)
  t.equal((r = await alice(['push', '--no-verify', 'origin', 'main'], aw)).code, 0, r.stderr)
})

t.test('a push that cannot be checked against the locks is refused with the reason, and the git that hung is stopped', async (t) => {
  // git as the worker runs it, except the listing of a push's changed paths: failing, then hanging
  const wrapper = await gitWrapper(t, `#!/bin/sh
for a in "$@"; do
  if [ "$a" = --diff-merges=first-parent ]; then
    case "$(cat @DIR@/mode 2>/dev/null)" in
      fail) echo "fatal: broken on purpose" >&2; exit 128 ;;
      hang) exec sh -c 'sleep 120; exit 0' vcsw-lock-check-hang ;;
    esac
  fi
done
exec git "$@"
`)
  const w = await startWorker(t, { 'git-bin': wrapper, 'lfs-lock-check-timeout-ms': '2000' })
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-pw', { 'demo.git': 'write' })
  const bob = await lfsUser(w, 'bob')
  const work = await cloneAs(w, bob, 'bob', 'bob-pw', 'bob-work')
  await writeFile(path.join(work, 'file.bin'), 'v1\n')
  await bob(['add', 'file.bin'], work)
  await bob(['commit', '-q', '-m', 'one'], work)
  t.equal((await bob(['push', '-q', 'origin', 'HEAD:refs/heads/main'], work)).code, 0, 'no locks yet: nothing is listed')
  const res = await fetch(`${w.url}/demo.git/info/lfs/locks`, { method: 'POST', headers: { accept: LFS, 'content-type': LFS, authorization: basic('alice', 'alice-pw') }, body: JSON.stringify({ path: 'other.bin' }) })
  t.equal(res.status, 201)
  const head = (await bob(['ls-remote', 'origin', 'refs/heads/main'], work)).stdout
  const dir = path.dirname(wrapper)

  await writeFile(path.join(work, 'file.bin'), 'v2\n')
  await bob(['commit', '-q', '-am', 'two'], work)
  await writeFile(path.join(dir, 'mode'), 'fail')
  let r = await bob(['push', '--no-verify', 'origin', 'HEAD:refs/heads/main'], work)
  t.not(r.code, 0)
  t.match(r.stderr, /cannot check this push against file locks/, 'git failing: refused with the reason (fail closed)')

  await writeFile(path.join(dir, 'mode'), 'hang')
  const t0 = Date.now()
  r = await bob(['push', '--no-verify', 'origin', 'HEAD:refs/heads/main'], work)
  t.not(r.code, 0)
  t.match(r.stderr, /cannot check this push against file locks: its changed paths pass 64 MiB or 2 s/, 'git hanging: refused with the reason')
  t.ok(Date.now() - t0 >= 1900, `after the check's lfsLockCheckTimeoutMs, not before (${Date.now() - t0} ms)`)
  t.equal((await bob(['ls-remote', 'origin', 'refs/heads/main'], work)).stdout, head, 'main did not move')
  await waitFor(async () => (await processesMatching('vcsw-lock-check-hang')).length === 0, 10_000, 'the hung git to be stopped')

  await writeFile(path.join(dir, 'mode'), '')
  r = await bob(['push', '--no-verify', 'origin', 'HEAD:refs/heads/main'], work)
  t.equal(r.code, 0, `and once git answers, the push goes through: ${r.stderr}`)
})

t.test('a repo of 10,000 locks: a push is checked against them by lookups, listings are paged, a lock path is bounded', async (t) => {
  const w = await startWorker(t)
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  await w.addUser('bob', 'bob-pw', { 'demo.git': 'write' })
  const aliceId = (await w.store.findUser('alice'))!.id
  for (let i = 0; i < 10_000; i++) await w.store.createLock('demo.git', `assets/${i}.psd`, aliceId, w.config.lfsMaxLocksPerRepo)
  t.equal(w.config.lfsMaxLocksPerRepo, 10_000, 'the default bound')
  const bob = await lfsUser(w, 'bob')
  const work = await cloneAs(w, bob, 'bob', 'bob-pw', 'bob-work')
  await bob(['checkout', '-q', '-B', 'main'], work)
  await writeFile(path.join(work, 'free.txt'), 'free\n')
  await bob(['add', 'free.txt'], work)
  await bob(['commit', '-q', '-m', 'free'], work)
  let r = await bob(['push', '--no-verify', 'origin', 'main'], work)
  t.equal(r.code, 0, `a change to no locked file passes: ${r.stderr}`)
  await mkdir(path.join(work, 'assets'))
  for (const n of [9998, 17, 4242, 77]) await writeFile(path.join(work, 'assets', `${n}.psd`), `${n}\n`)
  await bob(['add', 'assets'], work)
  await bob(['commit', '-q', '-m', 'locked ones'], work)
  r = await bob(['push', '--no-verify', 'origin', 'main'], work)
  t.not(r.code, 0, 'a change to locked files is refused')
  t.match(r.stderr, 'changes files locked by others: assets/17.psd (locked by alice), assets/77.psd (locked by alice), assets/4242.psd (locked by alice) and 1 more')

  const alice = `Basic ${Buffer.from('alice:alice-pw').toString('base64')}`
  const list = (query = '') => fetch(`${w.url}/demo.git/info/lfs/locks${query}`, { headers: { accept: LFS, authorization: alice } })
  t.equal((await list('?limit=5000')).status, 422, 'a page of more than 1000 is refused')
  const page = await (await list()).json() as { locks: unknown[]; next_cursor?: string }
  t.equal(page.locks.length, 100, 'a listing is a page')
  t.ok(page.next_cursor, 'with the cursor of the next')
  const res = await fetch(`${w.url}/demo.git/info/lfs/locks`, { method: 'POST', headers: { accept: LFS, 'content-type': LFS, authorization: alice }, body: JSON.stringify({ path: `${'x/'.repeat(600)}y` }) })
  t.equal(res.status, 422, 'a path past the bound is refused before the store is asked')
  t.match(await res.json(), { message: 'path is longer than 1024 bytes' })
})

t.test('lock listings and verifies are admitted work: refused when no slot is free, served once one is', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'heavy-limit': '1', 'queue-limit': '0', 'git-bin': gate.bin })
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'write' })
  const alice = `Basic ${Buffer.from('alice:alice-pw').toString('base64')}`
  await gate.close()
  const clone = gitClient(w.dir)(['-c', 'protocol.version=0', 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => metric(await (await fetch(`${w.url}/metrics`)).text(), 'vcs_heavy_in_flight') === 1, 10_000, 'the clone to hold the one slot')
  let res = await fetch(`${w.url}/demo.git/info/lfs/locks`, { headers: { accept: LFS } })
  t.equal(res.status, 503, 'an anonymous listing waits for a slot as heavy work does (the queue is 0 here)')
  t.match(await res.json(), { message: /server busy/ })
  res = await fetch(`${w.url}/demo.git/info/lfs/locks/verify`, { method: 'POST', headers: { accept: LFS, 'content-type': LFS, authorization: alice }, body: '{}' })
  t.equal(res.status, 503, 'and so does a verify')
  await gate.open()
  t.equal((await clone).code, 0)
  t.equal((await fetch(`${w.url}/demo.git/info/lfs/locks`, { headers: { accept: LFS } })).status, 200, 'served once the slot is free')
})
