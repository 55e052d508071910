import t from 'tap'
import net from 'node:net'
import { rename } from 'node:fs/promises'
import { startWorker, gitClient, gateWrapper, metric, rawRequest, waitFor, run, clientEnv, type Worker } from '../helpers/worker.js'
import path from 'node:path'

/** What HAProxy reads from the agent port, having sent `send` (its agent-send string) first. */
function agent(w: Worker, send?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(w.app.probes!.agentPort!, '127.0.0.1', () => { if (send !== undefined) socket.write(send) })
    let text = ''
    socket.on('data', (c: Buffer) => { text += c.toString() })
    socket.on('end', () => resolve(text))
    socket.on('error', reject)
  })
}

t.test('agent-check: weight and maxconn from the limits, per protocol, falling as the worker fills', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'agent-port': '0', 'git-bin': gate.bin, 'heavy-limit': '2', 'queue-limit': '2', 'hg-processes': '1' })
  t.equal(await agent(w, 'git\n'), 'up ready 100% maxconn:4\n')
  t.equal(await agent(w, 'hg\n'), 'up ready 100% maxconn:4\n')
  t.equal(await agent(w), 'up ready 100% maxconn:4\n', 'no agent-send: both protocols')
  t.equal(await agent(w, 'nonsense that is longer than any protocol name and has no newline at all, sixty-four bytes or more'), 'up ready 100% maxconn:4\n')

  await gate.close()
  const git = gitClient(w.dir)
  const held = git(['-c', 'protocol.version=0', 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => (await agent(w, 'git\n')) === 'up ready 75% maxconn:4\n', 10_000, 'the weight to fall to 75% with one of four places taken')
  await gate.open()
  t.equal((await held).code, 0)
  await waitFor(async () => (await agent(w, 'git\n')) === 'up ready 100% maxconn:4\n', 10_000, 'the weight back at 100%')
})

t.test('agent-check: down#<checks> when a deep check fails, only for the protocol it concerns', async (t) => {
  const w = await startWorker(t, { 'agent-port': '0', 'health-interval-ms': '100' }) // no hg children
  t.equal(await agent(w, 'git\n'), 'up ready 100% maxconn:80\n')
  t.equal(await agent(w, 'hg\n'), 'down#hg_children\n', 'hg is down, git is not')
  t.equal(await agent(w), 'down#hg_children\n')
  await rename(w.reposDir, `${w.reposDir}.away`)
  await waitFor(async () => (await agent(w, 'git\n')).startsWith('down#'), 10_000, 'git to go down')
  t.match(await agent(w, 'git\n'), /^down#repos_dir(,disk)?\n$/, 'the failing checks named (disk cannot be measured on a missing dir either)')
  await rename(`${w.reposDir}.away`, w.reposDir)
  await waitFor(async () => (await agent(w, 'git\n')) === 'up ready 100% maxconn:80\n', 10_000, 'git back up')
})

t.test('metrics: requests, sessions, bytes, children, auth failures and health, with bounded labels', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' }, { private: true })
  await w.addUser('alice', 'alice-pw', { 'demo.git': 'read', 'demo-hg': 'read' })
  const git = gitClient(w.dir)
  t.equal((await git(['clone', '-q', `${w.urlAs('alice', 'alice-pw')}/demo.git`, 'c'])).code, 0)
  t.not((await git(['clone', '-q', `${w.urlAs('alice', 'wrong-pw')}/demo.git`, 'd'])).code, 0)
  const hg = await run('hg', ['clone', '-q', `${w.urlAs('alice', 'alice-pw')}/demo-hg`, path.join(w.dir, 'h')], { env: clientEnv(path.join(w.dir, 'client-home')) })
  t.equal(hg.code, 0, hg.stderr)
  await rawRequest(w.port, 'GET', '/team/project.git/info/refs?service=git-upload-pack&x=%ff')
  await rawRequest(w.port, 'GET', `/demo-hg?cmd=${'x'.repeat(60)}`)

  const res = await rawRequest(w.port, 'GET', '/metrics')
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = res.body.toString()
  t.equal(metric(text, 'vcs_sessions_total', { backend: 'git', service: 'upload-pack' }), 1, 'one git session: the clone')
  t.equal(metric(text, 'vcs_sessions_total', { backend: 'hg' }), 1, 'one hg session')
  t.equal(metric(text, 'vcs_requests_total', { backend: 'git', service: 'upload-pack', protocol: 'v2', code: '200' }), 3, 'advertisement, ls-refs, fetch')
  t.ok(metric(text, 'vcs_requests_total', { backend: 'hg', service: 'getbundle', code: '200' }) >= 1)
  t.equal(metric(text, 'vcs_requests_total', { backend: 'hg', service: 'other' }), 1, 'an unknown hg command counts as other')
  t.equal(metric(text, 'vcs_auth_failures_total'), 1, 'the wrong password')
  t.ok(metric(text, 'vcs_bytes_out_total', { backend: 'git' }) > 0)
  t.ok(metric(text, 'vcs_bytes_in_total', { backend: 'git' }) > 0)
  t.ok(metric(text, 'vcs_bytes_out_total', { backend: 'hg' }) > 0)
  t.equal(metric(text, 'vcs_git_spawns_total', { result: 'started' }), metric(text, 'vcs_git_exits_total', { code: '0' }), 'every git started exited 0')
  t.ok(metric(text, 'vcs_git_spawns_total') >= 2)
  t.equal(metric(text, 'vcs_hg_children_ready'), 1)
  t.equal(metric(text, 'vcs_hg_child_spawns_total'), 1)
  t.equal(metric(text, 'vcs_health_check_ok', { check: 'git_canary' }), 1)
  t.ok(metric(text, 'vcs_time_to_first_byte_seconds_count', { backend: 'git', service: 'upload-pack' }) >= 3)
  t.match(text, /^nodejs_eventloop_lag_seconds /m, 'event-loop lag')
  t.notMatch(text, /alice/, 'never a user')
  t.notMatch(text, /demo\.git|demo-hg|repo=/, 'no repo label unless asked for')
  t.notMatch(text, /x{60}/, 'no label from the request')
})

t.test('metrics: the repo label only behind metricsRepoLabel', async (t) => {
  const w = await startWorker(t, { 'metrics-repo-label': true })
  t.equal((await gitClient(w.dir)(['ls-remote', `${w.url}/demo.git`])).code, 0)
  const text = (await rawRequest(w.port, 'GET', '/metrics')).body.toString()
  t.ok(metric(text, 'vcs_requests_total', { backend: 'git', repo: 'demo.git' }) >= 1)
})
