import t from 'tap'
import path from 'node:path'
import { appendFile, writeFile } from 'node:fs/promises'
import { startWorker, run, clientEnv, type Worker } from '../helpers/worker.js'

async function hgClient(w: Worker) {
  const rc = path.join(w.dir, 'hgrc-client')
  await writeFile(rc, '[ui]\nusername = Test User <test@example.invalid>\ninteractive = false\n')
  const env = clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc })
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env })
}

/** the access lines of capabilities requests since `from`, and whether an hg child answered each */
function capabilityLines(w: Worker, from: number): boolean[] {
  return w.logs().slice(from)
    .filter((l) => l.msg === 'request' && typeof l.url === 'string' && l.url.includes('cmd=capabilities'))
    .map((l) => l.child_pid !== undefined)
}

t.test('capabilities: asked of hg once per repo, answered by the worker after, asked again when the repo\'s config changes', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundles': false })
  const hg = await hgClient(w)
  const url = `${w.url}/demo-hg?cmd=capabilities`
  const first = await fetch(url)
  const firstBody = await first.text()
  t.equal(first.status, 200)
  t.match(firstBody, /\bgetbundle\b/)
  t.match(firstBody, /stream%3Dv2/, 'stream clones offered by default')
  let mark = 0
  t.same(capabilityLines(w, mark), [true], 'the first answer comes from an hg serve child')

  mark = w.logs().length
  const second = await fetch(url)
  t.same([second.status, second.statusText, second.headers.get('content-type'), await second.text()], [200, first.statusText, first.headers.get('content-type'), firstBody], 'the same answer, reason phrase and type')
  const c1 = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c1'])
  t.equal(c1.code, 0, c1.stderr)
  t.same(capabilityLines(w, mark), [false, false], 'then the worker answers, for a plain request and a real clone')

  // the repo's own config changes what hg offers: the next answer is hg's again, and new
  await appendFile(path.join(w.reposDir, 'demo-hg', '.hg', 'hgrc'), '\n[server]\nuncompressed = False\n')
  mark = w.logs().length
  const third = await (await fetch(url)).text()
  t.notMatch(third, /stream%3Dv2/, 'the edited hgrc is seen at once')
  t.same(capabilityLines(w, mark), [true])
  const c2 = await hg(['clone', '-U', `${w.url}/demo-hg`, 'c2'])
  t.equal(c2.code, 0, c2.stderr)
})

t.test('a kept capabilities answer is still behind the repo\'s authorization', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundles': false }, { private: true })
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'read' })
  const auth = { authorization: `Basic ${Buffer.from('hana:hana-password').toString('base64')}` }
  const url = `${w.url}/demo-hg?cmd=capabilities`
  t.equal((await fetch(url, { headers: auth })).status, 200)
  t.equal((await fetch(url, { headers: auth })).status, 200, 'kept')
  t.equal((await fetch(url)).status, 401, 'anonymous: still asked for credentials')
  await w.addUser('other', 'other-password')
  const other = { authorization: `Basic ${Buffer.from('other:other-password').toString('base64')}` }
  t.equal((await fetch(url, { headers: other })).status, 404, 'a user without read: still no such repo')
})

/** the hg commands asked since `from`, each with whether an hg serve child answered it */
function commandLines(w: Worker, from: number): string[] {
  return w.logs().slice(from)
    .filter((l) => l.msg === 'request' && typeof l.url === 'string' && l.url.includes('cmd='))
    .map((l) => `${/cmd=([a-z_]+)/.exec(l.url as string)![1]}:${l.child_pid !== undefined ? 'hg' : 'kept'}`)
}

t.test('light read answers (heads, known, a getbundle with nothing to send) are kept; a push, a phase change or a bookmark makes the next one hg\'s again', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundles': false })
  await w.addUser('hana', 'hana-password', { 'demo-hg': 'write' })
  const hg = await hgClient(w)
  const repo = path.join(w.reposDir, 'demo-hg')
  const tip = async (dir: string) => (await hg(['log', '-R', dir, '-r', 'tip', '--template', '{desc}'])).stdout
  for (const name of ['c1', 'c2']) t.equal((await hg(['clone', `${w.url}/demo-hg`, name])).code, 0)
  const c1 = path.join(w.dir, 'c1')
  const c2 = path.join(w.dir, 'c2')

  let mark = w.logs().length
  t.equal((await hg(['pull', '-R', c2])).code, 0)
  t.ok(commandLines(w, mark).includes('getbundle:hg'), `a pull with nothing new: asked of hg once (${commandLines(w, mark).join(' ')})`)
  mark = w.logs().length
  const again = await hg(['pull', '-R', c2])
  t.equal(again.code, 0, again.stderr)
  t.match(again.stdout, /no changes found/)
  const lines = commandLines(w, mark)
  t.ok(lines.includes('getbundle:kept') && lines.every((l) => l.endsWith(':kept')), `then every answer is the worker's: ${lines.join(' ')}`)

  // a push: the pull after it gets the new changeset, never the kept "nothing new"
  await writeFile(path.join(c1, 'pushed.txt'), 'pushed\n')
  t.equal((await hg(['commit', '-R', c1, '-A', '-m', 'pushed after the answers were kept'])).code, 0)
  const pushed = await hg(['push', '-R', c1, `http://hana:hana-password@${w.url.slice('http://'.length)}/demo-hg`])
  t.equal(pushed.code, 0, pushed.stderr)
  mark = w.logs().length
  t.equal((await hg(['pull', '-R', c2])).code, 0)
  t.equal(await tip(c2), 'pushed after the answers were kept', 'the push is seen')
  t.ok(commandLines(w, mark).includes('getbundle:hg'))

  // the same pull twice more, kept again; then the changeset made secret on the server: a new
  // clone must not get it, and the heads it is told of change
  await hg(['pull', '-R', c2])
  t.equal((await hg(['phase', '-R', repo, '--force', '--secret', '-r', 'tip'])).code, 0)
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'c3'])).code, 0)
  t.not(await tip(path.join(w.dir, 'c3')), 'pushed after the answers were kept', 'a secret changeset is not served')
  t.equal((await hg(['phase', '-R', repo, '--force', '--public', '-r', 'tip'])).code, 0)

  // a bookmark set on the server: the next pull learns it
  await hg(['pull', '-R', c2])
  t.equal((await hg(['bookmark', '-R', repo, '-r', '0', 'marker'])).code, 0)
  t.equal((await hg(['pull', '-R', c2])).code, 0)
  t.match((await hg(['bookmarks', '-R', c2])).stdout, /marker/, 'the bookmark is seen')
})

t.test('a repo whose hgrc restricts reading by user: kept answers are never handed to another caller, and the worker hands out no clone bundle of it', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundle-delay-ms': '0' })
  await w.addUser('alice', 'alice-password')
  await w.addUser('bob', 'bob-password')
  await appendFile(path.join(w.reposDir, 'demo-hg', '.hg', 'hgrc'), '\n[web]\nallow_read = alice\n')
  const basic = (u: string) => ({ authorization: `Basic ${Buffer.from(`${u}:${u}-password`).toString('base64')}` })
  const ask = async (cmd: string, headers: Record<string, string> = {}) => (await fetch(`${w.url}/demo-hg?cmd=${cmd}`, { headers: { accept: 'application/mercurial-0.1', ...headers } })).status
  for (const cmd of ['heads', 'branchmap', 'listkeys&namespace=bookmarks', 'capabilities']) {
    const anonymousFirst = await ask(cmd)
    t.equal(await ask(cmd, basic('alice')), 200, `${cmd}: alice reads`)
    t.equal(await ask(cmd, basic('alice')), 200, `${cmd}: alice again (kept for her)`)
    t.equal(await ask(cmd), anonymousFirst, `${cmd}: an anonymous caller gets hg's own answer to it (${anonymousFirst}), not alice's`)
    if (cmd !== 'capabilities') {
      t.equal(anonymousFirst, 401, `${cmd}: hg refuses an anonymous reader`)
      t.equal(await ask(cmd, basic('bob')), 401, `${cmd}: bob too`)
    }
  }
  const hg = await hgClient(w)
  const r = await hg(['clone', '-U', `http://alice:alice-password@${w.url.slice('http://'.length)}/demo-hg`, 'a1'])
  t.equal(r.code, 0, r.stderr)
  const manifest = await fetch(`${w.url}/demo-hg?cmd=clonebundles`, { headers: basic('alice') })
  t.equal(await manifest.text(), '', 'no bundles listed: hg alone judges who reads this repo')
  const bundle = await fetch(`${w.url}/demo-hg/.hg/clonebundles/zstd-v2.hg`)
  t.equal(bundle.status, 404, 'nor served to anyone')
  t.equal((await hg(['clone', '-U', `${w.url}/demo-hg`, 'anon'])).code, 255, 'an anonymous clone is refused by hg')
})
