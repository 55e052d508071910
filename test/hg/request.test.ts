/**
 * What the worker forwards to hg is what it judged (src/hg/request.ts). Every carrier of hg
 * arguments (the query, X-HgArg-N headers, the X-HgArgs-Post body) and every spelling hg's
 * Python server reads alike (`_` for `-`, a repeated cmd) is tried by an anonymous and a
 * read-only caller, proxied and handed over; none writes. The child itself refuses a push the
 * worker did not authorize.
 */
import t from 'tap'
import type * as Tap from 'tap'
import path from 'node:path'
import { gzipSync } from 'node:zlib'
import { appendFile, readdir, readFile, writeFile } from 'node:fs/promises'
import { startWorker, run, rawRequest, clientEnv, type Worker } from '../helpers/worker.js'
import { encodeComponent, judgeHgRequest, keptAnswerRequest, parseUrlencoded, MAX_PAGE_QUERY, MAX_PAGE_REVCOUNT } from '../../src/hg/request.js'

const ZERO = '0'.repeat(40)
const basic = (u: string, p: string) => ({ authorization: `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}` })
const raw = (headers: Record<string, string>) => Object.entries(headers).flat()

t.test('judging: one cmd, each argument once, the request rebuilt from what was read', async (t) => {
  let j = judgeHgRequest('GET', '/r?cmd=batch', raw({ 'X-HgArg-1': 'cmds=heads+%3Bknown+nodes%3D', 'X-HgProto-1': '0.1 0.2 comp=zstd,zlib,none', Accept: 'application/mercurial-0.1', Cookie: 'a=b', 'X-Other': 'x' }))
  t.equal(j.cmd, 'batch')
  t.equal(j.action, 'read')
  t.equal(j.target, '/r?cmd=batch')
  t.same(j.headers, { accept: 'application/mercurial-0.1', 'x-hgproto-1': '0.1 0.2 comp=zstd,zlib,none', 'x-hgarg-1': 'cmds=heads+%3Bknown+nodes%3D' }, 'only allow-listed headers and the re-encoded arguments')
  j = judgeHgRequest('GET', '/r?cmd=batch', raw({ 'X-HgArg-1': 'cmds=heads+%3Bpushkey+namespace%3Dbookmarks' }))
  t.equal(j.action, 'write', 'a batch hiding pushkey is a write')
  t.equal(judgeHgRequest('GET', '/r?cmd=batch&cmds=heads+%3Bunbundle', []).action, 'write', 'batch arguments in the query count')
  t.equal(judgeHgRequest('GET', '/r?cmd=frobnicate', []).action, 'write', 'an unknown command is a write')
  t.equal(judgeHgRequest('GET', '/r/log?style=raw', []).action, 'read', 'hgweb pages are reads')
  t.equal(judgeHgRequest('GET', '/r?cmd=getbundle', raw({ 'X-HgArg-1': `common=${ZERO}&heads=ab` })).workClass, 'full')
  t.equal(judgeHgRequest('GET', '/r?cmd=getbundle', raw({ 'X-HgArg-1': `common=${'1'.repeat(40)}&heads=ab` })).workClass, 'incremental')
  t.equal(judgeHgRequest('GET', '/r?cmd=heads', []).workClass, undefined)
  t.equal(judgeHgRequest('GET', '/r?cmd=heads&a=x%2By+z', []).target, '/r?cmd=heads&a=x%2By+z', 'the query re-encoded as Python encodes it')
  t.equal(judgeHgRequest('GET', '/r?%63md=heads', []).cmd, 'heads', 'an encoded name is the name it decodes to')
  t.equal(judgeHgRequest('GET', '/r?%63md=heads', []).target, '/r?cmd=heads', 'and is sent as that name')
  t.same(parseUrlencoded('a=1&&b&c=%zz&d=%41+', 'q').map((p) => [p.name, p.value.toString('latin1')]), [['a', '1'], ['b', ''], ['c', '%zz'], ['d', 'A ']])
  t.equal(encodeComponent(Buffer.from('a b;c=é')), 'a+b%3Bc%3D%C3%A9')

  const refused: [string, string, Record<string, string>, RegExp][] = [
    ['GET', '/r?cmd=capabilities&cmd=unbundle', {}, /cmd is given more than once/],
    ['GET', '/r?cmd=capabilities&%63md=pushkey', {}, /cmd is given more than once/],
    ['GET', '/r?cmd=batch&cmds=heads', { 'X-HgArg-1': 'cmds=pushkey' }, /argument "cmds" is given more than once/],
    ['GET', '/r?cmd=known', { 'X-HgArg-1': 'nodes=&nodes=' }, /argument "nodes" is given more than once/],
    ['GET', '/r?cmd=batch', { X_HgArg_1: 'cmds=pushkey' }, /header names with "_"/],
    ['POST', '/r?cmd=batch', { X_HgArgs_Post: '9' }, /header names with "_"/],
    ['GET', '/r?cmd=heads', { X_VCS_WORKER_USER: 'alice' }, /header names with "_"/],
    ['GET', '/r?cmd=batch', { 'X-HgArgs-Post': '9' }, /X-HgArgs-Post/],
    ['GET', '/r?cmd=known', { 'X-HgArg-2': 'nodes=' }, /x-hgarg-2 without the headers before it/],
    ['GET', '/r?cmd=known', { 'X-HgArg-1': 'nodes=', 'x-hgarg-1': 'x=' }, /x-hgarg-1 is repeated/],
    ['GET', '/r?cmd=heads', { 'X-HgFoo': '1' }, /unknown hg header/],
    ['GET', '/r?cmd=he%20ads', {}, /bad cmd/],
    ['GET', '/r?cmd=heads&x=\u00e9', {}, /outside printable ASCII/],
    ['GET', '/r/log', { 'X-HgArg-1': 'cmds=pushkey' }, /X-HgArg headers without a cmd/],
    ['POST', '/r?cmd=capabilities', { 'Content-Length': '5' }, /hg command capabilities takes no request body/],
    ['GET', '/r?cmd=unbundle', { 'Transfer-Encoding': 'chunked' }, /hg command unbundle takes no request body/],
  ]
  for (const [method, url, headers, reason] of refused) {
    t.throws(() => judgeHgRequest(method, url, raw(headers)), { statusCode: 400, message: reason }, `${method} ${url} ${JSON.stringify(headers)}`)
  }
})

/** hg run on the server side of a test (no worker in between). */
function local(w: Worker) {
  return (args: string[], cwd = w.dir) => run('hg', args, { cwd, env: clientEnv(w.dir, { HGRCPATH: '', HGUSER: 'Test <t@example.invalid>' }) })
}

/** What the server repo holds that an attack could change: bookmarks, phases, changesets. */
async function snapshot(w: Worker): Promise<string> {
  const hg = local(w)
  const repo = ['-R', path.join(w.reposDir, 'demo-hg')]
  const marks = (await hg([...repo, 'bookmarks', '-T', '{bookmark}={node} '])).stdout
  const log = (await hg([...repo, 'log', '-T', '{rev}:{phase} '])).stdout
  return `${marks}|${log}`
}

/** A draft changeset on top of demo-hg, pushed straight into the server repo (not through the worker). */
async function addDraft(t: Tap.Test, w: Worker): Promise<string> {
  const hg = local(w)
  const repo = path.join(w.reposDir, 'demo-hg')
  await writeFile(path.join(repo, '.hg', 'hgrc'), '[phases]\npublish = False\n')
  await hg(['clone', '-q', repo, 'draft-src'])
  const src = path.join(w.dir, 'draft-src')
  await writeFile(path.join(src, 'draft.txt'), 'draft\n')
  await hg(['add', 'draft.txt'], src)
  await hg(['commit', '-m', 'draft'], src)
  t.equal((await hg(['push', '-q', repo], src)).code, 0)
  return (await hg(['-R', repo, 'log', '-r', 'tip', '-T', '{node}'])).stdout
}

/** Every way of writing we know of, sent as `who`; each must be refused and change nothing. */
async function attacks(t: Tap.Test, w: Worker, who: Record<string, string>, draft: string, bundle: Buffer) {
  const pushkey = (ns: string, key: string, old: string, value: string) => `namespace=${ns}&key=${key}&old=${old}&new=${value}`
  const batchPushkey = `cmds=${encodeURIComponent(`heads ;pushkey namespace=bookmarks,key=evil,old=,new=${draft}`)}`
  const tries: [string, string, Record<string, string>, Buffer | undefined][] = [
    ['repeated cmd hides a push', '/demo-hg?cmd=capabilities&cmd=unbundle', { 'content-type': 'application/mercurial-0.1', 'x-hgarg-1': 'heads=666f726365' }, bundle],
    ['repeated cmd hides a pushkey', `/demo-hg?cmd=capabilities&cmd=pushkey&${pushkey('bookmarks', 'evil', '', draft)}`, {}, undefined],
    ['repeated cmd hides a phase move', `/demo-hg?cmd=capabilities&cmd=pushkey&${pushkey('phases', draft, '1', '0')}`, {}, undefined],
    ['X_HgArg_1 carries a pushkey batch', '/demo-hg?cmd=batch', { 'X_HgArg_1': batchPushkey }, undefined],
    ['X_HgArg_1 beside X-HgArg-1', '/demo-hg?cmd=batch', { 'x-hgarg-1': 'cmds=heads+', 'X_HgArg_1': batchPushkey }, undefined],
    ['X_HgArgs_Post carries a pushkey batch', '/demo-hg?cmd=batch', { 'content-type': 'application/mercurial-0.1', 'X_HgArgs_Post': String(batchPushkey.length) }, Buffer.from(batchPushkey)],
    ['X-HgArgs-Post carries a pushkey batch', '/demo-hg?cmd=batch', { 'content-type': 'application/mercurial-0.1', 'X-HgArgs-Post': String(batchPushkey.length) }, Buffer.from(batchPushkey)],
    ['cmds in the query and in a header', '/demo-hg?cmd=batch&cmds=heads+', { 'x-hgarg-1': batchPushkey }, undefined],
  ]
  for (const [what, url, headers, body] of tries) {
    const before = await snapshot(w)
    const method = body ? 'POST' : 'GET'
    const res = await rawRequest(w.port, method, url, { ...who, ...headers }, body)
    t.equal(res.status, 400, `${what}: 400 (${res.body.toString().trim()})`)
    t.equal(await snapshot(w), before, `${what}: nothing changed`)
  }
}

for (const handoff of [true, false]) {
  t.test(`attacks on the hg path (handoff ${handoff ? 'on' : 'off'}): anonymous and read-only callers write nothing`, async (t) => {
    const w = await startWorker(t, { 'hg-processes': '1', 'hg-handoff': handoff })
    await w.addUser('rita', 'rita-password', { 'demo-hg': 'read' })
    const draft = await addDraft(t, w)
    // a real bundle of one more changeset, as `hg push` would send it
    const hg = local(w)
    const src = path.join(w.dir, 'draft-src')
    await writeFile(path.join(src, 'more.txt'), 'more\n')
    await hg(['add', 'more.txt'], src)
    await hg(['commit', '-m', 'more'], src)
    await hg(['bundle', '-q', '-t', 'none-v2', '-r', 'tip', '--base', draft, path.join(w.dir, 'b.hg')], src)
    const bundle = await readFile(path.join(w.dir, 'b.hg'))

    await attacks(t, w, {}, draft, bundle)
    await attacks(t, w, basic('rita', 'rita-password'), draft, bundle)

    // the same write without the tricks: refused by authorization, not by the parser
    let res = await rawRequest(w.port, 'POST', `/demo-hg?cmd=pushkey&namespace=bookmarks&key=evil&old=&new=${draft}`, basic('rita', 'rita-password'))
    t.equal(res.status, 403, 'a plain pushkey by a reader: 403')
    res = await rawRequest(w.port, 'POST', `/demo-hg?cmd=pushkey&namespace=bookmarks&key=evil&old=&new=${draft}`)
    t.equal(res.status, 401, 'by an anonymous caller: 401')
    t.equal((await local(w)(['-R', path.join(w.reposDir, 'demo-hg'), 'log', '-r', draft, '-T', '{phase}'])).stdout, 'draft', 'the draft is still a draft')

    // control headers: an anonymous download that claims to be alice is not alice to hg hooks
    const record = path.join(w.dir, 'outgoing.txt')
    const hook = path.join(w.dir, 'who.py')
    await writeFile(hook, `def hook(ui, repo, **kwargs):\n    with open(${JSON.stringify(record)}, 'ab') as f:\n        f.write(b'user=' + repo.ui.environ.get(b'REMOTE_USER', b'') + b'\\n')\n`)
    await appendFile(path.join(w.reposDir, 'demo-hg', '.hg', 'hgrc'), `[hooks]\npreoutgoing.who = python:${hook}:hook\n`)
    const download = (headers: Record<string, string>) => rawRequest(w.port, 'GET', '/demo-hg?cmd=getbundle', { 'x-hgarg-1': `common=${ZERO}&heads=${draft}`, ...headers })
    res = await download({ 'X-VCS-Worker-User': 'alice', 'X-VCS-Worker-Access': 'write' })
    t.equal(res.status, 200, 'a download with our control headers set by the client is served')
    res = await download({ 'X_VCS_WORKER_USER': 'alice' })
    t.equal(res.status, 400, 'the same with "_" spelling: 400')
    res = await download(basic('rita', 'rita-password'))
    t.equal(res.status, 200, 'rita downloads')
    t.equal(await readFile(record, 'utf8'), 'user=\nuser=rita\n', 'hooks saw no user for the anonymous download (the client\'s header was not passed on), and rita for hers')
    const log = w.logs().filter((l) => l.msg === 'request' && l.route === 'hg_proxy')
    t.notOk(log.some((l) => l.user === 'alice'), 'and the access log names nobody')
  })
}

t.test('a read or a page with a body is refused before anything is spilled', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const body = gzipSync(Buffer.alloc(4 * 1024 * 1024))
  for (const url of ['/demo-hg?cmd=capabilities', '/demo-hg?cmd=heads', '/demo-hg/log']) {
    const res = await rawRequest(w.port, 'POST', url, { 'content-encoding': 'gzip', 'content-type': 'application/mercurial-0.1' }, body)
    t.equal(res.status, 400, `${url}: ${res.body.toString().trim()}`)
  }
  t.same(await readdir(w.config.tmpDir), [], 'no temp file was written')
  t.equal((await rawRequest(w.port, 'GET', '/demo-hg?cmd=heads')).status, 200, 'the worker serves on')
})

t.test('the child refuses a push the worker did not authorize (defence in depth)', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const child = w.app.hgPool!.children[0]!
  const tip = (await local(w)(['-R', path.join(w.reposDir, 'demo-hg'), 'log', '-r', 'tip', '-T', '{node}'])).stdout
  const direct = (access: string | undefined) => rawRequest(Number(child.url!.port), 'POST', `/demo-hg?cmd=pushkey&namespace=bookmarks&key=direct-${access}&old=&new=${tip}`, {
    'x-vcs-worker-secret': child.secret, ...(access ? { 'x-vcs-worker-access': access } : {}),
  })
  for (const access of [undefined, 'read', 'READ', 'writ']) {
    const res = await direct(access)
    t.equal(res.status, 403, `access ${access}: 403 from the child itself`)
  }
  const ok = await direct('write')
  t.equal(ok.status, 200, 'with the worker\'s word for it, the same request is served')
  t.equal((await local(w)(['-R', path.join(w.reposDir, 'demo-hg'), 'bookmarks', '-T', '{bookmark} '])).stdout.trim().split(' ').filter((b) => b.startsWith('direct')).join(' '), 'direct-write', 'only the authorized one made a bookmark')
})

t.test('which answers the worker may keep, and under what: light reads and a getbundle with nothing to send', async (t) => {
  const a = 'a'.repeat(40)
  const b = 'b'.repeat(40)
  const key = (method: string, url: string, headers: Record<string, string> = {}) => keptAnswerRequest(method, judgeHgRequest(method, url, Object.entries(headers).flat()))
  for (const cmd of ['capabilities', 'heads', 'branchmap', 'listkeys&namespace=phases', `known&nodes=${a}`, 'lookup&key=tip']) t.ok(key('GET', `/r?cmd=${cmd}`), `${cmd} kept`)
  t.ok(key('GET', '/r?cmd=batch', { 'X-HgArg-1': `cmds=heads+%3Bknown+nodes%3D${a}` }), 'a batch of light reads kept')
  t.equal(key('GET', '/r?cmd=batch', { 'X-HgArg-1': 'cmds=heads+%3Bpushkey+namespace%3Dphases' }), undefined, 'a batch with a write: never')
  t.equal(key('GET', '/r?cmd=batch', { 'X-HgArg-1': `cmds=heads+%3Bgetbundle+heads%3D${a}` }), undefined, 'a batch with a bundle: never')
  t.equal(key('GET', '/r?cmd=unbundle'), undefined, 'a push: never')
  t.equal(key('GET', '/r?cmd=stream_out'), undefined, 'a stream clone: never')
  t.equal(key('GET', '/r'), undefined, 'hgweb pages: never')
  t.equal(key('GET', '/r?cmd=between&pairs='), undefined, 'a command not on the list: never')
  t.ok(key('GET', '/r?cmd=getbundle', { 'X-HgArg-1': `heads=${a}&common=${b}+${a}` }), 'getbundle, every head common: kept')
  t.equal(key('GET', '/r?cmd=getbundle', { 'X-HgArg-1': `heads=${a}+${b}&common=${a}` }), undefined, 'getbundle with a head to send: never')
  t.equal(key('GET', '/r?cmd=getbundle', { 'X-HgArg-1': `common=${a}` }), undefined, 'getbundle of every head: never')
  t.equal(key('GET', '/r?cmd=getbundle', { 'X-HgArg-1': 'heads=tip&common=tip' }), undefined, 'getbundle of names, not nodes: never')

  // the key: the arguments always, the user agent never, compression headers for bundles only
  t.not(key('GET', `/r?cmd=known&nodes=${a}`), key('GET', `/r?cmd=known&nodes=${b}`), 'arguments in the key')
  t.not(key('GET', '/r?cmd=batch', { 'X-HgArg-1': `cmds=known+nodes%3D${a}` }), key('GET', '/r?cmd=batch', { 'X-HgArg-1': `cmds=known+nodes%3D${b}` }), 'header-borne arguments in the key')
  t.equal(key('GET', '/r?cmd=heads', { 'User-Agent': 'mercurial/proto-1.0 (Mercurial 6.3)', 'X-HgProto-1': '0.2 comp=zstd' }), key('GET', '/r?cmd=heads', { 'User-Agent': 'other' }), 'heads: the same answer for every client')
  const gb = (proto: string) => key('GET', '/r?cmd=getbundle', { 'X-HgArg-1': `heads=${a}&common=${a}`, 'X-HgProto-1': proto, 'User-Agent': proto })
  t.not(gb('0.2 comp=zstd'), gb('0.1'), 'getbundle: the negotiated compression in the key')
})

t.test('hgweb pages: what a page may ask is bounded, and pages are heavy work', async (t) => {
  t.equal(judgeHgRequest('GET', '/r/graph?revcount=2500', []).target, `/r/graph?revcount=${MAX_PAGE_REVCOUNT}`, 'revcount clamped')
  t.equal(judgeHgRequest('GET', '/r/shortlog?revcount=60&style=raw', []).target, '/r/shortlog?revcount=60&style=raw', 'a revcount under the bound passes as it is')
  t.equal(judgeHgRequest('GET', '/r/log?revcount=0', []).target, '/r/log?revcount=1')
  t.equal(judgeHgRequest('GET', '/r/log?%72evcount=9999', []).target, `/r/log?revcount=${MAX_PAGE_REVCOUNT}`, 'an encoded name is clamped too')
  for (const bad of ['-5', '1e9', 'lots', '', '9999999999']) t.throws(() => judgeHgRequest('GET', `/r/log?revcount=${bad}`, []), /revcount must be a whole number/, `revcount=${bad}`)
  t.throws(() => judgeHgRequest('GET', `/r/log?rev=${'x'.repeat(MAX_PAGE_QUERY + 1)}`, []), /a search of at most/)
  t.equal(judgeHgRequest('GET', '/r/log?rev=tip', []).target, '/r/log?rev=tip')
  t.equal(judgeHgRequest('GET', '/r/graph', []).workClass, 'incremental', 'a page is admitted as heavy work')
  t.equal(judgeHgRequest('GET', '/r/annotate/tip/README', []).workClass, 'incremental')
  t.equal(judgeHgRequest('GET', '/r/archive/tip.tar.gz', []).workClass, 'full', 'an archive as a full clone')
  t.equal(judgeHgRequest('GET', '/r/static/style-paper.css', []).workClass, undefined, 'a static file is light')
  t.equal(judgeHgRequest('GET', '/r?cmd=heads&revcount=99999', []).target, '/r?cmd=heads&revcount=99999', 'wire commands are not pages')
})
