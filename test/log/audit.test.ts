import t from 'tap'
import path from 'node:path'
import { clientEnv, gitClient, rawRequest, startWorker, waitFor } from '../helpers/worker.js'
import { routeRequests } from '../helpers/lfs.js'

const requests = (w: Awaited<ReturnType<typeof startWorker>>, from: number) => w.logs().slice(from).filter((l) => l.msg === 'request')

t.test('the access log is an audit trail: client, agent, each pushed ref with its verdict, failed logins with their reason', async (t) => {
  const w = await startWorker(t, { 'trusted-proxies': '127.0.0.1' })
  await w.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  await w.store.setProtection('demo.git', 'main', [])
  const git = gitClient(w.dir)
  const work = path.join(w.dir, 'work')
  t.equal((await git(['clone', '-q', `${w.urlAs('ada', 'ada-password')}/demo.git`, work])).code, 0)
  const old = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()
  await git(['commit', '-q', '--allow-empty', '-m', 'one'], work)
  const head = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()
  // one ref refused (a force-push of protected main), one accepted (a new branch)
  await git(['commit', '-q', '--amend', '--allow-empty', '-m', 'other'], work)
  const amended = (await git(['rev-parse', 'HEAD'], work)).stdout.trim()
  t.equal((await git(['push', 'origin', `${head}:refs/heads/main`], work)).code, 0)
  const mark = w.logs().length
  const push = await git(['push', '-f', 'origin', `${amended}:refs/heads/main`, `${amended}:refs/heads/topic`], work)
  t.not(push.code, 0, 'the force-push of main is refused')
  await waitFor(() => routeRequests(w, mark, 'git_receive_pack').length === 1, 10_000, 'the push line')
  const line = routeRequests(w, mark, 'git_receive_pack')[0]!
  t.equal(line.client, '127.0.0.1')
  t.match(line.user_agent, /^git\//, 'git\'s User-Agent')
  t.equal(line.user, 'ada')
  const refs = line.refs as { ref: string; old: string; new: string; result: string }[]
  t.same(refs.map((r) => [r.ref, r.old, r.new]).sort(), [['refs/heads/main', head, amended], ['refs/heads/topic', '0'.repeat(40), amended]], 'old and new ids of each ref')
  t.equal(refs.find((r) => r.ref === 'refs/heads/topic')!.result, 'ok')
  t.match(refs.find((r) => r.ref === 'refs/heads/main')!.result, /protected/, 'the refused ref with the reason git push showed')
  t.not(old, head)

  // the client address a trusted proxy passed on
  const viaProxy = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', { 'x-forwarded-for': '203.0.113.9', 'user-agent': 'git/2.99 \u00e9' })
  t.equal(viaProxy.status, 200)
  await waitFor(() => requests(w, mark).some((l) => l.client === '203.0.113.9'), 10_000, 'the proxied line')
  t.equal(requests(w, mark).find((l) => l.client === '203.0.113.9')!.user_agent, 'git/2.99 ?', 'control characters of an agent are not written')

  // failed logins: the name tried and why, never the secret
  const token = 'vcsw_' + 'x'.repeat(43)
  const tries: [string, string][] = [['ada', 'wrong-password'], ['nobody', 'whatever-pw'], ['ada', token]]
  for (const [user, secret] of tries) {
    const r = await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-receive-pack', { authorization: `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}` })
    t.equal(r.status, 401)
  }
  await waitFor(() => requests(w, mark).filter((l) => l.login_failure).length === 3, 10_000, 'three failed logins')
  const failed = requests(w, mark).filter((l) => l.login_failure).map((l) => [l.login_user, l.login_failure])
  t.same(failed, [['ada', 'wrong password'], ['nobody', 'unknown user'], ['ada', 'unknown token']])
  t.notMatch(w.logText(), /wrong-password|whatever-pw|xxxxxxxxxx/, 'no secret in any log line')
})

t.test('the access log counts an LFS JSON answer\'s bytes and calls a relayed clone that completed complete', async (t) => {
  const w = await startWorker(t, { 'pack-relay': true })
  await w.addUser('ada', 'ada-password', { 'demo.git': 'write' })
  const mark = w.logs().length
  const batch = await rawRequest(w.port, 'POST', '/demo.git/info/lfs/objects/batch', {
    authorization: `Basic ${Buffer.from('ada:ada-password').toString('base64')}`, accept: 'application/vnd.git-lfs+json', 'content-type': 'application/vnd.git-lfs+json',
  }, JSON.stringify({ operation: 'download', objects: [{ oid: 'a'.repeat(64), size: 1 }] }))
  t.equal(batch.status, 200)
  const git = gitClient(w.dir)
  const env = clientEnv(path.join(w.dir, 'client-home'))
  t.ok(env)
  t.equal((await git(['clone', '-q', `${w.url}/demo.git`, path.join(w.dir, 'c')])).code, 0)
  await waitFor(() => routeRequests(w, mark, 'git_upload_pack').length >= 1 && routeRequests(w, mark, 'lfs_batch').length === 1, 10_000, 'the lines')
  t.equal(routeRequests(w, mark, 'lfs_batch')[0]!.bytes_out, batch.body.length, 'the JSON answer\'s bytes')
  const fetches = routeRequests(w, mark, 'git_upload_pack')
  t.ok(fetches.some((l) => l.handed_over), 'the pack went through the relay')
  t.same(fetches.filter((l) => l.aborted), [], 'a clone that completed is not aborted')
})
