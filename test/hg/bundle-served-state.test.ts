import t, { type Test } from 'tap'
import path from 'node:path'
import { appendFile, readFile, writeFile } from 'node:fs/promises'
import { clientEnv, rawRequest, run, startWorker, waitFor, type Worker } from '../helpers/worker.js'

/**
 * A clone bundle holds what the repo served when it was made; it must never hand out what the
 * repo would not serve now. The delay is long enough that the stale bundles are still there
 * when the clone right after the change runs, so a worker that listed them would be caught.
 */
const DELAY_MS = '3000'

async function hgClient(w: Worker) {
  const rc = path.join(w.dir, 'hgrc-client')
  await writeFile(rc, '[ui]\nusername = Test User <test@example.invalid>\ninteractive = false\n')
  const env = clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc })
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env })
}

const metaFile = (w: Worker) => path.join(w.reposDir, 'demo-hg', '.hg', 'clonebundles', 'meta.json')
const generatedAt = async (w: Worker) => (JSON.parse(await readFile(metaFile(w), 'utf8').catch(() => '{"generatedAt":0}')) as { generatedAt: number }).generatedAt
const server = (w: Worker, args: string[]) => run('hg', ['-R', path.join(w.reposDir, 'demo-hg'), ...args], { env: clientEnv(w.dir, { HGRCPATH: '' }) })
const port = (w: Worker) => Number(new URL(w.url).port)

/** What an anonymous caller can get from the bundles right now: the manifest's text and each bundle file's status. */
async function anonymousView(w: Worker): Promise<{ manifest: string; files: number[] }> {
  const manifest = (await rawRequest(port(w), 'GET', '/demo-hg?cmd=clonebundles', { host: `127.0.0.1:${port(w)}` })).body.toString()
  const files = []
  for (const name of ['stream-v2.hg', 'zstd-v2.hg']) files.push((await rawRequest(port(w), 'GET', `/demo-hg/.hg/clonebundles/${name}`)).status)
  return { manifest, files }
}

/** Makes the bundles and waits until they hold the repo as it is now. */
async function freshBundles(t: Test, w: Worker, hg: Awaited<ReturnType<typeof hgClient>>, after: number, name: string): Promise<number> {
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, name])).code, 0)
  await waitFor(async () => (await generatedAt(w)) > after, 30_000, 'clone bundles made')
  return generatedAt(w)
}

/** A worker whose demo-hg hana may push to, with its first clone bundles made. */
async function withBundles(t: Test): Promise<{ w: Worker; hg: Awaited<ReturnType<typeof hgClient>>; made: number }> {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': DELAY_MS })
  const hg = await hgClient(w)
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'write' })
  return { w, hg, made: await freshBundles(t, w, hg, 0, 'seed') }
}

t.test('a bundle holding a changeset the repo no longer serves is withdrawn at once, then made again: strip, secret phase, rollback, obsolescence', async (t) => {
  const { w, hg, made: seeded } = await withBundles(t)
  let made = seeded

  // two new changesets pushed, bundles made with them in
  const work = path.join(w.dir, 'work')
  t.equal((await hg(['clone', `${w.url}/demo-hg`, 'work'])).code, 0)
  const nodes: string[] = []
  for (const n of [1, 2, 3]) {
    await writeFile(path.join(work, `f${n}.txt`), `${n}\n`)
    await hg(['add', '-R', work, path.join(work, `f${n}.txt`)])
    await hg(['commit', '-R', work, '-m', `change ${n}`])
    nodes.push((await hg(['log', '-R', work, '-r', '.', '-T', '{node}'])).stdout)
  }
  const push = await hg(['push', '-R', work, `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])
  t.equal(push.code, 0, push.stderr + push.stdout)
  made = await freshBundles(t, w, hg, made, 'with-three')
  const before = await anonymousView(w)
  t.match(before.manifest, /stream-v2\.hg[\s\S]*zstd-v2\.hg/, 'both bundles listed')
  t.same(before.files, [200, 200])

  const cloneHas = async (name: string, node: string): Promise<boolean> => {
    const r = await hg(['clone', '-U', `${w.url}/demo-hg`, name])
    t.equal(r.code, 0, r.stderr)
    return (await hg(['log', '-R', path.join(w.dir, name), '--hidden', '-r', `id(${node})`, '-T', 'x'])).stdout === 'x'
  }

  // a strip on the server: the bundles hold the stripped changeset
  t.equal((await server(w, ['--config', 'extensions.strip=', 'strip', '-q', '-r', nodes[2]!])).code, 0)
  t.same(await anonymousView(w), { manifest: '', files: [404, 404] }, 'after a strip: nothing listed, nothing served')
  t.notOk(await cloneHas('after-strip', nodes[2]!), 'a clone does not get the stripped changeset')
  made = await freshBundles(t, w, hg, made, 'strip-seen')
  t.match((await anonymousView(w)).manifest, /stream-v2\.hg/, 'made again without it, and listed')
  t.notOk(await cloneHas('after-strip-2', nodes[2]!), 'nor from the new bundle')

  // a changeset made secret
  t.equal((await server(w, ['phase', '--secret', '--force', '-r', nodes[1]!])).code, 0)
  t.same(await anonymousView(w), { manifest: '', files: [404, 404] }, 'after a phase change to secret: withdrawn')
  t.notOk(await cloneHas('after-secret', nodes[1]!), 'a clone does not get the secret changeset')
  made = await freshBundles(t, w, hg, made, 'secret-seen')
  const secretView = await anonymousView(w)
  t.notMatch(secretView.manifest, /stream-v2\.hg/, 'no stream bundle while a changeset is secret')
  t.match(secretView.manifest, /zstd-v2\.hg/)
  t.same(secretView.files, [404, 200])
  t.notOk(await cloneHas('after-secret-2', nodes[1]!), 'nor from the new bundle')
  t.equal((await server(w, ['phase', '--draft', '--force', '-r', nodes[1]!])).code, 0)
  made = await freshBundles(t, w, hg, made, 'draft-again')

  // a push, then `hg rollback` of it on the server
  await writeFile(path.join(work, 'f4.txt'), '4\n')
  await hg(['add', '-R', work, path.join(work, 'f4.txt')])
  await hg(['commit', '-R', work, '-m', 'change 4'])
  const rolled = (await hg(['log', '-R', work, '-r', '.', '-T', '{node}'])).stdout
  t.equal((await hg(['push', '-R', work, '-f', `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])).code, 0)
  made = await freshBundles(t, w, hg, made, 'with-four')
  t.equal((await server(w, ['--config', 'ui.rollback=true', 'rollback'])).code, 0)
  t.same(await anonymousView(w), { manifest: '', files: [404, 404] }, 'after a rollback: withdrawn')
  t.notOk(await cloneHas('after-rollback', rolled), 'a clone does not get the rolled-back changeset')
  made = await freshBundles(t, w, hg, made, 'rollback-seen')

  // an obsolescence marker hides a changeset (the repo turns evolution on)
  await appendFile(path.join(w.reposDir, 'demo-hg', '.hg', 'hgrc'), '\n[experimental]\nevolution = all\n')
  const tip = (await server(w, ['log', '-r', 'tip', '-T', '{node}'])).stdout
  t.equal((await server(w, ['phase', '--draft', '--force', '-r', tip])).code, 0, 'pushed changesets are public, and public ones cannot be obsoleted')
  t.equal((await server(w, ['debugobsolete', tip])).code, 0)
  t.same(await anonymousView(w), { manifest: '', files: [404, 404] }, 'after a changeset is made obsolete: withdrawn')
  t.notOk(await cloneHas('after-obsolete', tip), 'a clone does not get the hidden changeset')
  await freshBundles(t, w, hg, made, 'obsolete-seen')
  const obsView = await anonymousView(w)
  t.notMatch(obsView.manifest, /stream-v2\.hg/, 'no stream bundle while the store holds a hidden changeset')
  t.notOk(await cloneHas('after-obsolete-2', tip), 'nor from the new bundle')
})

t.test('a push keeps the stale bundles listed (a clone applies one and pulls the rest); an old record without heads is made again', async (t) => {
  const { w, hg, made } = await withBundles(t)
  const work = path.join(w.dir, 'seed2')
  t.equal((await hg(['clone', `${w.url}/demo-hg`, 'seed2'])).code, 0)
  await writeFile(path.join(work, 'new.txt'), 'new\n')
  await hg(['add', '-R', work, path.join(work, 'new.txt')])
  await hg(['commit', '-R', work, '-m', 'new'])
  t.equal((await hg(['push', '-R', work, `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])).code, 0)
  const view = await anonymousView(w)
  t.match(view.manifest, /stream-v2\.hg[\s\S]*zstd-v2\.hg/, 'still listed: they hold nothing the repo does not serve')
  t.same(view.files, [200, 200])
  const r = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c'])
  t.match(r.stdout, /applying clone bundle[\s\S]*added 1 changesets/)

  // a meta.json of an older worker (no heads): not trusted, made again
  await waitFor(async () => (await generatedAt(w)) > made, 30_000, 'made again after the push')
  const meta = JSON.parse(await readFile(metaFile(w), 'utf8')) as { bundles: { heads?: string[] }[] }
  for (const b of meta.bundles) delete b.heads
  await writeFile(metaFile(w), JSON.stringify(meta))
  t.same(await anonymousView(w), { manifest: '', files: [404, 404] }, 'a record without heads lists nothing')
  await waitFor(async () => (await anonymousView(w)).files.join() === '200,200', 30_000, 'made again')
})
