import t from 'tap'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { RefHookServer } from '../../src/git/ref-hooks.js'
import { HOOK_PROTOCOL } from '../../src/git/hook-protocol.js'
import type { RefContext } from '../../src/auth/plugin.js'

t.test('the pre-receive endpoint judges what it is sent: only object ids reach the ref hooks, only a quarantine inside the repo', async (t) => {
  const dir = t.testdir()
  const repo = path.join(dir, 'r.git')
  await mkdir(path.join(repo, 'objects', 'tmp_objdir-incoming-abc123'), { recursive: true })
  const seen: RefContext[] = []
  const server = new RefHookServer(async (ctx) => { seen.push(ctx); return [] }, dir)
  await server.start()
  t.teardown(() => server.stop())
  const session = server.open({ principal: { kind: 'anonymous' }, repo: { kind: 'git', name: 'r.git', dir: repo } })
  const post = (body: unknown) => fetch(session.env.VCS_WORKER_HOOK_URL!, { method: 'POST', body: JSON.stringify({ v: HOOK_PROTOCOL, token: session.token, ...body as object }) })
  const id = 'a'.repeat(40)
  const update = { ref: 'refs/heads/main', oldId: id, newId: 'b'.repeat(40), kind: 'update' }

  for (const newId of ['--output=/tmp/x', 'HEAD', 'B'.repeat(40), 'b'.repeat(41)]) {
    t.equal((await post({ updates: [{ ...update, newId }] })).status, 400, `newId ${newId} refused`)
  }
  t.equal((await post({ updates: [update], objects: path.join(dir, 'elsewhere', 'tmp_objdir-incoming-abc123') })).status, 400, 'a quarantine outside the repo refused')
  t.equal((await post({ updates: [update], objects: path.join(repo, 'objects', '..', 'objects', 'pack') })).status, 400, 'a directory that is no quarantine refused')
  t.equal(seen.length, 0, 'no hook ran for any of them')

  const ok = await post({ updates: [update], objects: path.join(repo, 'objects', 'tmp_objdir-incoming-abc123') })
  t.equal(ok.status, 200)
  t.same(seen[0]?.quarantine?.objects, path.join(repo, 'objects', 'tmp_objdir-incoming-abc123'), 'the quarantine, rebuilt from the repo\'s own objects dir')
  t.equal((await fetch(session.env.VCS_WORKER_HOOK_URL!, { method: 'POST', body: JSON.stringify({ v: HOOK_PROTOCOL, token: 'forged', updates: [update] }) })).status, 403, 'no session, no answer')
  const old = await post({ v: HOOK_PROTOCOL + 1, updates: [update] })
  t.equal(old.status, 400, 'a hook of another protocol refused')
  t.match(((await old.json()) as { reason?: string }).reason, /^the push hook speaks protocol 2, this worker 1: /, 'with the reason the pusher reads')
  t.equal(seen.length, 1, 'and no hook ran for it')
  await session.close()
})
