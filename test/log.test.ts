import t from 'tap'
import path from 'node:path'
import { ROOT, run } from './helpers/worker.js'

const logOnce = (tty: boolean) => run(process.execPath, ['--input-type=module', '-e', `
  const { createLogger } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/log.js'))})
  const log = createLogger('info', ${tty})
  log.info({ repo: 'demo.git', authorization: 'Basic c2VjcmV0' }, 'request')
  log.info({ method: 'GET', url: '/demo.git/info/refs', repo: 'demo.git', service: 'upload-pack', user: 'ada', status: 200, bytes_in: 0, bytes_out: 2048, duration_ms: 3.5, req_id: 'x-1', authorization: 'Basic c2VjcmV0' }, 'request')
  log.info({ req_id: 'x-1', code: 'VCS_UNAUTHORIZED' }, 'authentication required')
  log.warn({ hg_child: 1, output: 'Traceback: boom' }, 'hg serve error log')
`])

t.test('logs: readable lines on a terminal, JSON otherwise, redacted either way', async (t) => {
  const json = await logOnce(false)
  t.equal(json.code, 0, json.stderr)
  const lines = json.stdout.trim().split('\n')
  t.equal(lines.length, 4, 'every entry, one JSON object per line')
  const line = JSON.parse(lines[0]!) as Record<string, unknown>
  t.equal(line.msg, 'request')
  t.equal(line.repo, 'demo.git')
  t.equal(line.authorization, '[redacted]')
  const shown = await logOnce(true)
  t.equal(shown.code, 0, shown.stderr)
  // eslint-disable-next-line no-control-regex
  const pretty = { stdout: shown.stdout.replace(/\x1b\[[0-9;]*m/g, '') } // colours where the terminal has them
  t.notMatch(pretty.stdout, /^\{/, 'not JSON')
  const shownLines = pretty.stdout.trim().split('\n')
  t.equal(shownLines.length, 3, 'one line per request; a request\'s own info detail is left to its access line')
  t.match(shownLines[1], /^\d\d:\d\d:\d\d {2}200 {2}GET {2}demo.git upload-pack {2}ada {2}0 B in {2}2.0 KiB out {2}3.5 ms$/, 'time, status, method, repo, user, bytes, ms')
  t.match(shownLines[2], /^\d\d:\d\d:\d\d WARN hg serve error log hg_child=1 output="Traceback: boom"$/, 'a warning on one line with its fields')
  t.notMatch(pretty.stdout, /c2VjcmV0/, 'the credential is redacted before it is formatted')
})
