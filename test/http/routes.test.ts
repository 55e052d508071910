import t from 'tap'
import { VERSION } from '../../src/install.js'
import type { IncomingMessage } from 'node:http'
import { REPO_URLS, urlClassifier } from '../../src/http/routes.js'
import { rawRequest, startWorker } from '../helpers/worker.js'

const classify = (url: string, hg = true): string => urlClassifier(hg)({ url } as IncomingMessage)

t.test('the classifier sends each repository URL to its fixed route, and nothing else', async (t) => {
  t.equal(classify('/team/project.git/info/refs?service=git-upload-pack'), `${REPO_URLS.git_info_refs}?service=git-upload-pack`)
  t.equal(classify('/demo/git-upload-pack'), REPO_URLS.git_upload_pack, 'the .git suffix is optional')
  t.equal(classify('/demo.git/git-receive-pack'), REPO_URLS.git_receive_pack)
  t.equal(classify('/demo.git/HEAD'), REPO_URLS.git_dumb)
  t.equal(classify('/demo.git/objects/info/packs'), REPO_URLS.git_dumb)
  t.equal(classify('/demo-hg?cmd=capabilities'), `${REPO_URLS.hg_proxy}?cmd=capabilities`)
  t.equal(classify('/demo-hg/file/tip/README'), REPO_URLS.hg_proxy, 'hgweb pages are hg')
  t.equal(classify('/demo-hg?cmd=capabilities', false), '/demo-hg?cmd=capabilities', 'with hg off, not a repository URL')
  for (const reserved of ['/', '/metrics', '/health/ready', '/health/unknown']) t.equal(classify(reserved), reserved, `${reserved} is reserved`)
  t.equal(classify('/%zz/x'), '/%zz/x', 'a path that does not decode is left to the router (400)')
  for (const fixed of Object.values(REPO_URLS)) t.equal(classify(`${fixed}?service=git-upload-pack`), '/.vcs-no-route', `${fixed} cannot be named from outside`)
})

t.test('GET / says what this is; fixed routes cannot be reached from outside; 405 names the method', async (t) => {
  const w = await startWorker(t)
  const root = await rawRequest(w.port, 'GET', '/', { host: 'vcs.example:8080' })
  t.equal(root.status, 200)
  t.equal(root.body.toString(), `vcs-worker ${VERSION}: a git server. Clone with: git clone http://127.0.0.1:${w.port}/<repo>.git\n`, 'the version, and the address the client reached: never a Host header anyone could write')
  const direct = await rawRequest(w.port, 'GET', '/.vcs/git_info_refs?service=git-upload-pack')
  t.equal(direct.status, 404, 'the fixed URL itself is no route')
  const unknownHealth = await rawRequest(w.port, 'GET', '/health/nope')
  t.equal(unknownHealth.status, 404)
  t.equal(unknownHealth.body.toString(), 'not found\n')
  const wrong = await rawRequest(w.port, 'DELETE', '/demo.git/git-upload-pack')
  t.equal(wrong.status, 405)
  t.equal(wrong.headers.allow, 'POST')
  const log = w.logs().filter((l) => l.msg === 'request')
  t.same(log.map((l) => [l.url, l.route, l.status]), [
    ['/', 'root', 200],
    ['/.vcs/git_info_refs?service=git-upload-pack', 'other', 404],
    ['/health/nope', 'other', 404],
    ['/demo.git/git-upload-pack', 'git_upload_pack', 405],
  ], 'access lines carry the URL as sent and the route id from the table')
})

t.test('with hg on, GET / mentions hg, and the fixed hg route cannot be named from outside either', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  const root = await rawRequest(w.port, 'GET', '/', { host: 'h' })
  t.equal(root.body.toString(), `vcs-worker ${VERSION}: a git and Mercurial server. Clone with: git clone http://127.0.0.1:${w.port}/<repo>.git or hg clone http://127.0.0.1:${w.port}/<repo>\n`)
  const direct = await rawRequest(w.port, 'GET', '/.vcs/hg_proxy?cmd=capabilities')
  t.equal(direct.status, 404)
  t.equal(direct.body.toString(), 'not found\n')
})

t.test('URLs the worker hands out come from publicUrl, or a trusted proxy\'s Host, never from an untrusted Host header', async (t) => {
  const batch = async (w: Awaited<ReturnType<typeof startWorker>>, headers: Record<string, string>) => {
    const r = await rawRequest(w.port, 'POST', '/demo.git/info/lfs/objects/batch', {
      authorization: `Basic ${Buffer.from('ada:ada-password').toString('base64')}`, accept: 'application/vnd.git-lfs+json', 'content-type': 'application/vnd.git-lfs+json', ...headers,
    }, JSON.stringify({ operation: 'upload', objects: [{ oid: 'a'.repeat(64), size: 1 }] }))
    t.equal(r.status, 200, r.body.toString())
    return (JSON.parse(r.body.toString()) as { objects: { actions: { upload: { href: string } } }[] }).objects[0]!.actions.upload.href
  }
  const plain = await startWorker(t)
  await plain.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  t.equal(await batch(plain, { host: 'evil.example:9999' }), `http://127.0.0.1:${plain.port}/demo.git/info/lfs/objects/${'a'.repeat(64)}`, 'a direct client: the address it reached')
  const proxied = await startWorker(t, { 'trusted-proxies': '127.0.0.1' })
  await proxied.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  t.match(await batch(proxied, { host: 'git.example:8443', 'x-forwarded-proto': 'https' }), /^https:\/\/git\.example:8443\/demo\.git\/info\/lfs\//, 'through a trusted proxy: its Host and scheme')
  const pub = await startWorker(t, { 'public-url': 'https://code.example.com/' })
  await pub.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  t.match(await batch(pub, { host: 'evil.example:9999' }), /^https:\/\/code\.example\.com\/demo\.git\/info\/lfs\//, 'publicUrl wins over any Host')
  const root = await rawRequest(pub.port, 'GET', '/', { host: 'evil.example' })
  t.match(root.body.toString(), /git clone https:\/\/code\.example\.com\/<repo>\.git/)
})
