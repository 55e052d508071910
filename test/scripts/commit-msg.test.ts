import t from 'tap'
import path from 'node:path'
import { mkdir, writeFile } from 'node:fs/promises'
import { clientEnv, ROOT, run } from '../helpers/worker.js'

// The commit message rule, as git applies it: a repo whose core.hooksPath is the project's hooks.
t.test('commit-msg: a subject of at most 72 characters, a blank line before the body', async (t) => {
  const dir = t.testdir({})
  const env = clientEnv(path.join(dir, 'home'))
  await mkdir(path.join(dir, 'home'))
  const git = (...args: string[]) => run('git', args, { cwd: path.join(dir, 'r'), env })
  t.equal((await run('git', ['init', '-q', 'r'], { cwd: dir, env })).code, 0)
  t.equal((await git('config', 'core.hooksPath', path.join(ROOT, '.githooks'))).code, 0)
  const commit = async (message: string) => {
    await writeFile(path.join(dir, 'msg'), message)
    return git('commit', '-q', '--allow-empty', '-F', path.join(dir, 'msg'))
  }
  t.equal((await commit('A subject that says what\n\nAnd a body that says why.\n')).code, 0)
  t.equal((await commit(`${'x'.repeat(72)}\n`)).code, 0, '72 characters: fine')
  t.equal((await commit('Zoë: ünïcode counts as characters, not bytes, and this fits in 72 ok\n')).code, 0)
  let r = await commit(`${'x'.repeat(73)}\n`)
  t.equal(r.code, 1)
  t.match(r.stderr, /^commit-msg: the subject is 73 characters; at most 72 \(say the rest in the body, after a blank line\)$/m)
  r = await commit('Subject\nbody right under it\n')
  t.equal(r.code, 1)
  t.match(r.stderr, /the second line must be blank/)
  t.equal((await git('rev-list', '--count', 'HEAD')).stdout, '3\n', 'the refused ones made no commit')
})
