import t from 'tap'
import { access, chmod } from 'node:fs/promises'
import path from 'node:path'
import { CLI, clientEnv, fixtureDir, gitClient, rawRequest, run, startWorker, waitFor } from '../helpers/worker.js'
import { freePort } from '../../tools/pool/launch.js'
import { atTerminal } from '../helpers/pty.js'

// The CLI at a real terminal (a pty): the questions a person is asked, what the screen shows.
t.test('user add and passwd at a terminal: a prompt, no echo, asked twice, the user checked first; Ctrl-C changes nothing', async (t) => {
  const w = await startWorker(t, {}, { private: true })
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cmd = (...args: string[]) => [process.execPath, CLI, ...args, ...common]
  const basic = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` })
  const canRead = async (password: string) => (await rawRequest(w.port, 'GET', '/demo.git/info/refs?service=git-upload-pack', basic('ada', password))).status

  let r = await atTerminal(cmd('user', 'add', 'ada'), [{ expect: 'Password: ', send: 'first-secret-1\r' }, { expect: 'Password (again): ', send: 'first-secret-1\r' }])
  t.same([r.code, r.stepsDone], [0, true], 'both prompts answered, exit 0')
  t.notMatch(r.output, 'first-secret-1', 'the password is never shown')
  t.match(r.output, /^Password: \r?\nPassword \(again\): \r?\nadded user ada\r?\n$/, 'two prompts, then the answer')
  t.equal((await run(process.execPath, [...cmd('grant', 'ada', 'demo', 'read').slice(1)])).code, 0)
  t.equal(await canRead('first-secret-1'), 200, 'the password typed is the one stored')

  r = await atTerminal(cmd('user', 'add', 'ada'), [])
  t.equal(r.code, 1)
  t.notMatch(r.output, 'Password', 'an existing user is told before any password is asked')
  t.match(r.output, /^vcs-worker: user ada already exists \(in .*auth\.sqlite\)\r?\n$/)
  r = await atTerminal(cmd('user', 'passwd', 'nobody'), [])
  t.same([r.code, /no such user: nobody/.test(r.output), r.output.includes('Password')], [1, true, false], 'a missing one too')

  r = await atTerminal(cmd('user', 'passwd', 'ada'), [{ expect: 'Password: ', send: 'second-secret-2\r' }, { expect: 'Password (again): ', send: 'second-secret-X\r' }])
  t.equal(r.code, 2)
  t.match(r.output, /vcs-worker: the two passwords differ: nothing was changed\r?\n/)
  t.equal(await canRead('first-secret-1'), 200, 'unchanged')

  r = await atTerminal(cmd('user', 'passwd', 'ada'), [{ expect: 'Password: ', send: 'short\r' }])
  t.equal(r.code, 2)
  t.match(r.output, /vcs-worker: password must be at least 8 characters/, 'a short one is refused at the first prompt')

  r = await atTerminal(cmd('user', 'passwd', 'ada'), [{ expect: 'Password: ', send: 'half-typ\u0003' }])
  t.equal(r.code, 130, 'Ctrl-C: exit 130, as a shell reports an interrupt')
  t.match(r.output, /vcs-worker: cancelled at the prompt: nothing was changed/)
  t.equal(await canRead('first-secret-1'), 200)

  // a typo corrected with backspace is the password without it
  r = await atTerminal(cmd('user', 'passwd', 'ada'), [{ expect: 'Password: ', send: 'third-secret-3x\u007f\r' }, { expect: 'Password (again): ', send: 'third-secret-3\r' }])
  t.equal(r.code, 0, 'done')
  t.equal(await canRead('third-secret-3'), 200)
  t.equal(await canRead('first-secret-1'), 401, 'the old one no longer works')
})

t.test('repo delete at a terminal asks for the name; a wrong answer deletes nothing', async (t) => {
  const w = await startWorker(t)
  const common = ['--data', w.config.dataDir, '--repos', w.reposDir]
  const cmd = (...args: string[]) => [process.execPath, CLI, ...args, ...common]
  const present = () => access(path.join(w.reposDir, 'team/project.git')).then(() => true, () => false)
  let r = await atTerminal(cmd('repo', 'delete', 'team/project'), [{ expect: 'Type its name to go on: ', send: 'team/projekt\r' }])
  t.equal(r.code, 2)
  t.match(r.output, /This deletes team\/project\.git and its history for good\. Type its name to go on: team\/projekt\r?\nvcs-worker: the name typed does not match: nothing was deleted/, 'the name is echoed (it is no secret), the refusal follows')
  t.equal(await present(), true)
  r = await atTerminal(cmd('repo', 'delete', 'team/project'), [{ expect: 'Type its name to go on: ', send: 'team/project\r' }])
  t.equal(r.code, 0, 'done')
  t.match(r.output, /deleted git repository team\/project\.git with its 0 grants, 0 protections, 0 LFS locks/)
  t.equal(await present(), false)
  t.equal((await rawRequest(w.port, 'GET', '/team/project.git/info/refs?service=git-upload-pack')).status, 401, 'the running server no longer serves it (to an anonymous caller, as any missing repo)')
})

t.test('serve at a terminal: one start-up line, one line per request, one line for Ctrl-C', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  await chmod(dataDir, 0o700)
  for (const repo of ['demo', 'demo-hg']) t.equal((await run(process.execPath, [CLI, 'repo', 'visibility', repo, 'public', '--data', dataDir, '--repos', reposDir])).code, 0)
  const port = await freePort()
  const session = atTerminal([process.execPath, CLI, 'serve', '--port', String(port), '--data', dataDir, '--repos', reposDir, '--hg-processes', '1'], [
    { expect: 'listening on', send: '' },
    // the hg clone's last request, then Ctrl-C as a person presses it (the terminal sends SIGINT)
    { expect: 'demo-hg getbundle', send: '\u0003' },
  ])
  const url = `http://127.0.0.1:${port}`
  await waitFor(async () => (await fetch(`${url}/`).then((r) => r.status, () => 0)) === 200, 60_000, 'the worker to answer')
  t.equal((await gitClient(dir)(['ls-remote', `${url}/demo.git`])).code, 0)
  t.equal((await run('hg', ['clone', '-U', `${url}/demo-hg`, path.join(dir, 'h')], { env: clientEnv(path.join(dir, 'client-home')) })).code, 0)
  const r = await session
  t.same([r.code, r.stepsDone], [0, true], 'Ctrl-C: a clean stop')
  // eslint-disable-next-line no-control-regex
  const lines = r.output.replace(/\x1b\[[0-9;]*m/g, '').replace(/\^C/g, '').split(/\r?\n/).filter(Boolean)
  if (process.env.VCSW_SHOW_TERMINAL) t.comment(lines.join('\n'))
  t.match(lines[0], new RegExp(`^vcs-worker \\d+\\.\\d+\\.\\d+ listening on http://127\\.0\\.0\\.1:${port}/ \\(repos in .*; try: git clone http://127\\.0\\.0\\.1:${port}/demo\\.git\\)$`), 'the start-up line, first')
  const requests = lines.filter((l) => /^\d\d:\d\d:\d\d {2}\d{3} {2}[A-Z]+ {2}/.test(l))
  t.ok(requests.length >= 4, 'the root, the ls-remote and the hg clone\'s requests, one line each')
  t.ok(requests.some((l) => /^\d\d:\d\d:\d\d {2}200 {2}POST {2}demo\.git upload-pack {2}- {2}\d+ B in {2}\d+ B out {2}[\d.]+ ms$/.test(l)), 'a git request: time, status, method, repo and service, user, bytes, ms')
  t.ok(requests.some((l) => / {2}200 {2}GET {2}demo-hg getbundle {2}/.test(l)), 'an hg request line names the repo and the command')
  t.match(lines.at(-1), /stopping now \(in-flight requests are cut; SIGTERM drains instead\) signal=SIGINT$/, 'Ctrl-C says what it does, last')
  const other = lines.slice(1, -1).filter((l) => !requests.includes(l) && !l.includes('^C'))
  t.same(other, [], 'nothing else: no hg child states, no "killed!" on the stop')
})
