import t from 'tap'
import { mkdtemp, readFile, rm, writeFile, chmod, mkdir } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { clientEnv, CLI, run } from '../helpers/worker.js'
import { freshClone, readmeCommands, sections, tourScript } from '../helpers/readme.js'

// a first npm start builds the whole clone (tsc, the C helpers) and starts two pools: about 90 s
// idle, twice that with both cores busy; the file's own bound instead of tap's 300 s default
t.setTimeout(600_000)

// README's tour, every shell line exactly as written, top to bottom, in one shell, from a fresh
// clone's layout: npm start, the clone, the users and tokens, the push after `cd project`, hg,
// both pools and pool:stats. Then what a user meets next: npm start twice (the port in use) and a
// pool whose port is taken (HAProxy's own bind error).
t.test('README, as written: the tour and the pool, in a clone of its own', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vcsw-readme-'))
  const logs = path.join(dir, 'logs')
  await mkdir(logs)
  t.teardown(async () => {
    // whatever the script left running (it stops its own; this is for a script cut short)
    const pids = await readFile(path.join(logs, 'pids'), 'utf8').catch(() => '')
    for (const pid of pids.split('\n').filter(Boolean)) {
      try {
        process.kill(-Number(pid), 'SIGKILL')
      } catch { /* gone */ }
    }
    await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  })
  const clone = await freshClone(dir)
  const home = path.join(dir, 'home')
  await mkdir(home)
  const password = 's3cret-passw0rd'
  // the answers a user types at git's and hg's password prompts
  const askpass = path.join(home, 'askpass')
  await writeFile(askpass, `#!/bin/sh\necho '${password}'\n`)
  await chmod(askpass, 0o755)
  await writeFile(path.join(home, '.hgrc'), `[auth]\ntour.prefix = http://127.0.0.1:8080\ntour.username = ada\ntour.password = ${password}\n`)

  const lines = await readmeCommands(path.join(clone, 'README.md'))
  t.ok(lines.includes('npm start   # installs what is missing, builds, seeds data/repos, serves on http://127.0.0.1:8080'), 'README begins with npm start')
  // after the tour: the PostgreSQL pool answers, and the two mistakes of a second terminal
  const after = [
    'echo "@@ pg-pool"', 'git ls-remote http://127.0.0.1:8000/demo.git 2>&1', 'stop_bg pool',
    'echo "@@ start-twice"', 'npm start 2>&1; echo "exit $?"',
    'echo "@@ pool-port-taken"', 'stop_bg start',
    'node -e "require(\'net\').createServer().listen(8000, \'127.0.0.1\', () => console.log(\'holding 8000\'))" > "$LOGS/holder.log" 2>&1 & HOLDER=$!',
    'for _ in $(seq 500); do grep -q holding "$LOGS/holder.log" && break; sleep 0.1; done',
    'npm run pool 2>&1; echo "exit $?"', 'kill $HOLDER; wait $HOLDER 2>/dev/null',
  ].join('\n')
  const script = tourScript(lines, logs, after)
  const env = { ...clientEnv(home, { GIT_ASKPASS: askpass }), npm_config_update_notifier: 'false' }
  delete (env as Record<string, unknown>).GIT_AUTHOR_DATE
  delete (env as Record<string, unknown>).GIT_COMMITTER_DATE
  const r = await run('unshare', ['--net', '--', 'bash', '-c', script], { cwd: clone, env, timeoutMs: 900_000 })
  if (process.env.VCSW_README_TRANSCRIPT) await writeFile(process.env.VCSW_README_TRANSCRIPT, `${r.stdout}\n--- stderr\n${r.stderr}`)
  const out = sections(r.stdout)
  t.equal(r.code, 0, `every README line succeeded${/@@FAIL.*/.exec(r.stdout)?.[0].replace('@@FAIL', ': line') ?? ''}`)
  if (r.code !== 0) t.comment(`${r.stdout.slice(-4000)}\n${r.stderr.slice(-2000)}`)
  const of = (text: string): string => {
    const i = lines.findIndex((l) => l.startsWith(text))
    return out.get(String(i + 1)) ?? `(line "${text}" not in README)`
  }
  t.match(of('curl http://127.0.0.1:8080/'), /^vcs-worker \d+\.\d+\.\d+: a git and Mercurial server\. Clone with: git clone http:\/\/127\.0\.0\.1:8080\/<repo>\.git or hg clone http:\/\/127\.0\.0\.1:8080\/<repo>$/m, 'GET /: what the server is, with its version')
  t.match(of('git clone http://127.0.0.1:8080/demo.git'), /Cloning into 'demo'/)
  t.match(of('vcs-worker token create ada'), /^vcsw_[A-Za-z0-9_-]{20,}$/m, 'the token, once')
  t.match(of('cd project && git commit'), /HEAD -> main|-> main/, 'the push after `cd project`: the alias works from there')
  t.match(of('vcs-worker token list ada'), /^ID +CREATED +EXPIRES +LAST USED +STATE\n1 /)
  t.match(of('hg clone http://ada@127.0.0.1:8080/team/site'), /updating to branch default|no changes found/)
  t.match(of('git clone http://127.0.0.1:8000/demo.git'), /Cloning into 'demo'/, 'a clone through the pool')
  t.match(of('npm run pool:stats'), /servers-git/, 'pool:stats reads the pool npm run pool started, with no flags')
  t.match(out.get('pg-pool'), /refs\/heads\/main/, 'the PostgreSQL pool serves')
  const twice = out.get('start-twice') ?? ''
  t.match(twice, /exit 1\n$/)
  t.match(twice.trim().split('\n').slice(-2)[0], /^vcs-worker: cannot listen on 127\.0\.0\.1:8080: the port is in use .*--port N/, 'npm start twice: the last line says why and names --port')
  const taken = out.get('pool-port-taken') ?? ''
  t.match(taken, /cannot bind socket.*8000/, 'HAProxy\'s own bind error, reported by the launcher')
  t.notMatch(taken, /exit 0\n/)
  t.notMatch(r.stdout, /MODULE_NOT_FOUND|\n +at .*\(.*:\d+:\d+\)/, 'no stack trace anywhere')
  // README's command table is the CLI's own help
  const readme = await readFile(path.join(clone, 'README.md'), 'utf8')
  const help = execFileSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' })
  t.ok(readme.includes(`\`\`\`text\n${help}\`\`\``), 'README shows `vcs-worker --help` as it is')
})

t.test('the CLI from another directory finds this install\'s store; a wrong --data is refused, not made', async (t) => {
  const dir = t.testdir({})
  const typo = path.join(dir, 'dta')
  const r = await run(process.execPath, [CLI, 'user', 'add', 'ada', '--data', typo], { cwd: dir, input: 'ada-password-1\n', env: { PATH: process.env.PATH } })
  t.equal(r.code, 2)
  t.match(r.stderr, /^vcs-worker: bad configuration: dataDir: .*dta holds no account store \(auth\.sqlite\); this install's default data dir is \/.*\/data: give the right --data, or --init to create a new store there\n$/)
  t.equal(await readFile(path.join(typo, 'auth.sqlite')).then(() => 'made', () => 'absent'), 'absent', 'nothing created')
})
