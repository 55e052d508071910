import t from 'tap'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { ROOT, run } from '../helpers/worker.js'

const EACH_FILE = pathToFileURL(path.join(ROOT, 'dist/test/helpers/each-file.js')).href

t.test('a test process that leaves a child running fails, naming it; one that does not passes', async (t) => {
  const leaves = `import { spawn } from 'node:child_process'
const c = spawn('sleep', ['3600'], { stdio: 'ignore', detached: true })
c.unref()
console.log(c.pid)`
  const r = await run(process.execPath, ['--import', EACH_FILE, '--input-type=module', '-e', leaves], { env: { PATH: process.env.PATH } })
  const pid = Number(r.stdout.trim())
  t.teardown(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } })
  t.equal(r.code, 1, 'the file fails')
  t.match(r.stderr, new RegExp(`^test file left 1 child process\\(es\\) running:\\n  ${pid} \\S+\\s+sleep 3600\\n$`), 'naming the process')
  const tidy = `import { spawn } from 'node:child_process'
const c = spawn('sleep', ['3600'], { stdio: 'ignore' })
c.on('exit', () => {})
c.kill()
await new Promise((resolve) => c.once('exit', resolve))`
  const ok = await run(process.execPath, ['--import', EACH_FILE, '--input-type=module', '-e', tidy], { env: { PATH: process.env.PATH } })
  t.same([ok.code, ok.stderr], [0, ''], 'a child reaped before the end is no leftover')
})

t.test('test fetches ask for a connection of their own; a header a test sets is kept', async (t) => {
  const script = `import http from 'node:http'
const seen = []
const server = http.createServer((req, res) => { seen.push(req.headers.connection); res.end('ok') })
await new Promise((r) => server.listen(0, '127.0.0.1', r))
const url = 'http://127.0.0.1:' + server.address().port
await (await fetch(url)).text()
await (await fetch(url, { headers: { connection: 'keep-alive' } })).text()
server.closeAllConnections(); server.close()
console.log(JSON.stringify(seen))`
  const r = await run(process.execPath, ['--import', EACH_FILE, '--input-type=module', '-e', script], { env: { PATH: process.env.PATH } })
  t.equal(r.code, 0, r.stderr)
  t.same(JSON.parse(r.stdout), ['close', 'keep-alive'])
})
