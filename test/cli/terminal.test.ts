import t from 'tap'
import { access } from 'node:fs/promises'
import path from 'node:path'
import { CLI, rawRequest, run, startWorker } from '../helpers/worker.js'
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
