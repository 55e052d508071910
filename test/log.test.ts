import t from 'tap'
import path from 'node:path'
import { ROOT, run } from './helpers/worker.js'

const logOnce = (tty: boolean) => run(process.execPath, ['--input-type=module', '-e', `
  const { createLogger } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/log.js'))})
  createLogger('info', ${tty}).info({ repo: 'demo.git', authorization: 'Basic c2VjcmV0' }, 'request')
`])

t.test('logs: readable lines on a terminal, JSON otherwise, redacted either way', async (t) => {
  const json = await logOnce(false)
  t.equal(json.code, 0, json.stderr)
  const line = JSON.parse(json.stdout) as Record<string, unknown>
  t.equal(line.msg, 'request')
  t.equal(line.repo, 'demo.git')
  t.equal(line.authorization, '[redacted]')
  const shown = await logOnce(true)
  t.equal(shown.code, 0, shown.stderr)
  // eslint-disable-next-line no-control-regex
  const pretty = { stdout: shown.stdout.replace(/\x1b\[[0-9;]*m/g, '') } // colours where the terminal has them
  t.notMatch(pretty.stdout, /^\{/, 'not JSON')
  t.match(pretty.stdout, /INFO.*request/)
  t.match(pretty.stdout, /repo: "demo.git"/)
  t.notMatch(pretty.stdout, /c2VjcmV0/, 'the credential is redacted before it is formatted')
})
