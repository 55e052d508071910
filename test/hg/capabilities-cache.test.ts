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
