import t from 'tap'
import path from 'node:path'
import Fastify from 'fastify'
import vcsAuth, { type RefHook } from '../../src/auth/plugin.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { hashPassword } from '../../src/auth/password.js'
import { ForbiddenError } from '../../src/errors.js'
import type { RepoRef } from '../../src/repos/path.js'
import { waitFor } from '../helpers/worker.js'

// The plugin in another fastify service, as README shows: register, then authorize per thing.
t.test('the auth plugin works in a plain fastify app, with extra repo and ref hooks', async (t) => {
  const store = openSqliteStore(path.join(t.testdir(), 'auth.sqlite'))
  t.teardown(() => store.close())
  await store.addUser('ivy', await hashPassword('ivy-password', { N: 1024, r: 8, p: 1 }))
  await store.setRepo('docs.git', 'git', false)
  await store.setGrant('ivy', 'docs.git', 'write')

  const app = Fastify()
  await app.register(vcsAuth, { store, realm: 'docs' })
  app.vcsAuth.addRepoHook(async ({ action, repo }) => {
    if (action === 'write' && repo.name === 'docs.git' && process.env.FREEZE_DOCS === '1') throw new ForbiddenError('docs are frozen')
  })
  const seen: string[] = []
  const noTags: RefHook = async ({ updates }) => updates.filter((u) => u.ref.startsWith('refs/tags/')).map((u) => ({ ref: u.ref, reason: 'no tags here' }))
  app.vcsAuth.addRefHook(noTags)
  app.setErrorHandler((err: Error & { statusCode?: number; headers?: Record<string, string> }, _req, reply) => {
    reply.code(err.statusCode ?? 500).headers(err.headers ?? {}).send(err.message)
  })
  const repo: RepoRef = { kind: 'git', name: 'docs.git', dir: '/nowhere' }
  app.post('/docs/publish', async (req) => {
    const who = await app.vcsAuth.authorize(req, repo, 'write')
    const refused = await app.vcsAuth.checkRefUpdates({ principal: who, repo, updates: [
      { ref: 'refs/heads/main', oldId: 'a'.repeat(40), newId: 'b'.repeat(40), kind: 'update' },
      { ref: 'refs/tags/v1', oldId: '0'.repeat(40), newId: 'c'.repeat(40), kind: 'create' },
    ] })
    seen.push(who.kind === 'user' ? who.name : 'anonymous')
    return { refused }
  })
  const basic = `Basic ${Buffer.from('ivy:ivy-password').toString('base64')}`
  let res = await app.inject({ method: 'POST', url: '/docs/publish' })
  t.equal(res.statusCode, 401)
  t.match(res.headers['www-authenticate'], /^Basic realm="docs"/)
  res = await app.inject({ method: 'POST', url: '/docs/publish', headers: { authorization: basic } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { refused: [{ ref: 'refs/tags/v1', reason: 'no tags here' }] })
  process.env.FREEZE_DOCS = '1'
  res = await app.inject({ method: 'POST', url: '/docs/publish', headers: { authorization: basic } })
  delete process.env.FREEZE_DOCS
  t.equal(res.statusCode, 403)
  t.equal(res.body, 'docs are frozen')
  t.same(seen, ['ivy'])
  await app.close()
})

t.test('a busy credential is verified again before its cache entry expires, so no request waits on the KDF', async (t) => {
  const store = openSqliteStore(path.join(t.testdir(), 'auth.sqlite'))
  t.teardown(() => store.close())
  await store.addUser('kai', await hashPassword('kai-password', { N: 1024, r: 8, p: 1 }))
  await store.setRepo('docs.git', 'git', true)
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'debug', stream: { write: (l: string) => { lines.push(l) } } } })
  const ttl = 4000
  // the cache's clock, moved by the test: the entry's life passes without waiting for it
  const clock = { ms: Date.now(), now() { return this.ms } }
  await app.register(vcsAuth, { store, realm: 'docs', cacheTtlMs: ttl, clock })
  const repo: RepoRef = { kind: 'git', name: 'docs.git', dir: '/nowhere' }
  app.get('/docs', async (req) => (await app.vcsAuth.authorize(req, repo, 'read')).kind)
  const get = async () => (await app.inject({ method: 'GET', url: '/docs', headers: { authorization: `Basic ${Buffer.from('kai:kai-password').toString('base64')}` } })).body
  const misses = () => lines.filter((l) => l.includes('credentials verified (cache miss)')).length
  t.equal(await get(), 'user')
  t.equal(misses(), 1, 'the first request runs the KDF')
  // in the last quarter of the entry's life: served from the cache, and refreshed behind it
  clock.ms += ttl * 0.8
  t.equal(await get(), 'user')
  await waitFor(() => lines.some((l) => l.includes('credentials refreshed ahead of expiry')), 5000, 'the refresh')
  // past the first entry's expiry: still a hit
  clock.ms += ttl * 0.2 + 100
  t.equal(await get(), 'user')
  t.equal(misses(), 1, 'no request after the first waited on the KDF')
  await app.close()
})
