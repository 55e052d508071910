import t from 'tap'
import { mkdir, readFile, readdir, realpath } from 'node:fs/promises'
import path from 'node:path'
import { HookService } from '../../src/git/hook-service.js'
import { PushHooks } from '../../src/git/ref-hooks.js'
import { HOOK_NAMES, HOOK_PROTOCOL } from '../../src/git/hook-protocol.js'
import type { RefContext } from '../../src/auth/plugin.js'

const git = { exec: async () => '' }

t.test('the hook service answers only the session it opened, in its own protocol, from its own repo; pre-receive judges what it is sent', async (t) => {
  const dir = await realpath(t.testdir())
  const repo = path.join(dir, 'r.git')
  await mkdir(path.join(repo, 'objects', 'tmp_objdir-incoming-abc123'), { recursive: true })
  const seen: RefContext[] = []
  const service = new HookService(path.join(dir, 'hooks'))
  await service.start()
  t.teardown(() => service.stop())
  const hooks = new PushHooks(service, async (ctx) => {
    seen.push(ctx)
    return ctx.updates.filter((u) => u.ref === 'refs/heads/locked').map((u) => ({ ref: u.ref, reason: 'locked\nby policy' }))
  }, dir, git)
  const session = hooks.open({ principal: { kind: 'anonymous' }, repo: { kind: 'git', name: 'r.git', dir: repo } })
  const good = { 'x-vcs-hook-protocol': String(HOOK_PROTOCOL), 'x-vcs-token': session.token, 'x-vcs-cwd': repo }
  const post = async (body: string, headers: Record<string, string> = {}, endpoint = 'pre-receive') => {
    const res = await fetch(`${session.env.VCS_WORKER_HOOK_URL}/${endpoint}`, { method: 'POST', headers: { ...good, ...headers }, body })
    return { status: res.status, text: await res.text() }
  }
  const [a, b] = ['a'.repeat(40), 'b'.repeat(40)]
  const line = (newId = b, kind = 'update', ref = 'refs/heads/main') => `${a} ${newId} ${kind} ${ref}\n`

  t.same((await readdir(path.join(dir, 'hooks'))).sort(), [...HOOK_NAMES, 'vcs-worker-hook'].sort(), 'the program, under every hook\'s name')
  for (const name of HOOK_NAMES) {
    const bytes = await readFile(path.join(dir, 'hooks', name))
    t.equal(bytes.subarray(0, 4).toString('latin1'), '\x7fELF', `${name}: a native program (no Node process starts for a push or a fetch)`)
  }
  for (const newId of ['--output=/tmp/x', 'HEAD', 'B'.repeat(40), 'b'.repeat(41)]) {
    t.equal((await post(line(newId))).status, 400, `newId ${newId} refused`)
  }
  t.equal((await post(line(b, 'rewrite'))).status, 400, 'a kind no hook sends refused')
  t.equal((await post(line(b, 'update', '--upload-pack=sh'))).status, 400, 'a ref that is an option refused')
  t.equal((await post(`${line()} extra`)).status, 400, 'a line of five fields refused')
  t.equal((await post(line(), { 'x-vcs-objects': path.join(dir, 'elsewhere', 'tmp_objdir-incoming-abc123') })).status, 400, 'a quarantine outside the repo refused')
  t.equal((await post(line(), { 'x-vcs-objects': path.join(repo, 'objects', '..', 'objects', 'pack') })).status, 400, 'a directory that is no quarantine refused')
  t.same(await post(line(), { 'x-vcs-token': 'forged' }), { status: 403, text: 'unknown hook call\n' }, 'no session, no answer')
  t.same(await post(line(), { 'x-vcs-cwd': dir }), { status: 403, text: 'unknown hook call\n' }, 'another directory, no answer')
  t.same(await post('want\n', {}, 'pack-objects'), { status: 404, text: 'no such hook call\n' }, 'no pack cache here: no such call')
  const old = await post(line(), { 'x-vcs-hook-protocol': String(HOOK_PROTOCOL - 1) })
  t.equal(old.status, 409, 'a hook of another protocol refused')
  t.match(old.text, /^the hook program speaks protocol 1, this worker 2: restart the workers sharing this data dir on one version\n$/, 'with the reason the pusher reads')
  t.equal(seen.length, 0, 'no ref hook ran for any of them')

  const ok = await post(line() + line(b, 'create', 'refs/heads/locked'), { 'x-vcs-objects': path.join(repo, 'objects', 'tmp_objdir-incoming-abc123') })
  t.same(ok, { status: 200, text: 'refs/heads/locked: locked by policy\n' }, 'the refused ref and why, on one line')
  t.same(seen[0]?.quarantine?.objects, path.join(repo, 'objects', 'tmp_objdir-incoming-abc123'), 'the quarantine, rebuilt from the repo\'s own objects dir')
  t.same(seen[0]?.updates.map((u) => [u.ref, u.kind]), [['refs/heads/main', 'update'], ['refs/heads/locked', 'create']])
  t.equal(await readFile(session.rejectsFile, 'utf8'), 'refs/heads/locked\n', 'the rejects file names it for `update`')
  t.equal(session.reasonFor('refs/heads/locked'), 'locked\nby policy')
  await session.close()
  t.same(await post(line()), { status: 403, text: 'unknown hook call\n' }, 'a closed session answers nothing')
  await t.rejects(readFile(session.rejectsFile), { code: 'ENOENT' }, 'and its rejects file is gone')
})
