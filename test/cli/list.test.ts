import t from 'tap'
import path from 'node:path'
import { CLI, CLI_ENV, fixtureDir, gitClient, run, spawnWorker } from '../helpers/worker.js'

const cli = (args: string[], input?: string) => run(process.execPath, [CLI, ...args], { env: CLI_ENV, input })

t.test('user, token, grant and repo list: tables for people, --json for scripts, never a secret', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const common = ['--data', dataDir, '--repos', reposDir]
  t.equal((await cli(['user', 'add', 'ada', ...common], 'ada-password-1\n')).code, 0)
  t.equal((await cli(['user', 'add', 'bob', ...common], 'bob-password-1\n')).code, 0)
  const created = await cli(['token', 'create', 'ada', '--expires', '30d', ...common])
  const token = created.stdout.trim().split('\n').pop()!
  t.match(token, /^vcsw_/)
  t.equal((await cli(['token', 'create', 'ada', ...common])).code, 0)
  t.equal((await cli(['token', 'revoke', 'ada', '2', ...common])).code, 0)
  t.equal((await cli(['grant', 'ada', 'team/project', 'write', ...common])).code, 0)
  t.equal((await cli(['grant', 'bob', 'demo', 'read', ...common])).code, 0)
  t.equal((await cli(['repo', 'visibility', 'demo', 'public', ...common])).code, 0)

  // a token that authenticates a clone shows when it was last used
  const worker = await spawnWorker(t, [...common, '--hg-processes', '0'])
  const host = new URL(worker.url).host
  const clone = await gitClient(dir)(['clone', `http://ada:${token}@${host}/team/project.git`, 'p'])
  t.equal(clone.code, 0, clone.stderr)

  const users = await cli(['user', 'list', ...common])
  t.equal(users.code, 0, users.stderr)
  t.match(users.stdout, /^NAME +CREATED +TOKENS +GRANTS\nada +\d{4}-\d\d-\d\dT[\d:]+Z +1 +1\nbob +\S+ +0 +1\n$/, 'one row a user: active tokens and grants counted')
  const usersJson = JSON.parse((await cli(['user', 'list', '--json', ...common])).stdout) as { name: string; tokens: number }[]
  t.same(usersJson.map((u) => [u.name, u.tokens]), [['ada', 1], ['bob', 0]])

  const tokens = JSON.parse((await cli(['token', 'list', 'ada', '--json', ...common])).stdout) as Record<string, unknown>[]
  t.same(tokens.map((x) => [x.id, x.state]), [[1, 'active'], [2, 'revoked']], 'revoked tokens listed as such')
  t.ok(typeof tokens[0]!.lastUsedAt === 'number' && Math.abs((tokens[0]!.lastUsedAt as number) - Date.now() / 1000) < 600, 'the used token has its last use')
  t.equal(tokens[1]!.lastUsedAt, null, 'the unused one has none')
  t.ok(typeof tokens[0]!.expiresAt === 'number' && tokens[1]!.expiresAt === null)
  const tokenTable = await cli(['token', 'list', 'ada', ...common])
  t.match(tokenTable.stdout, /^ID +CREATED +EXPIRES +LAST USED +STATE\n1 /)
  for (const out of [tokenTable.stdout, JSON.stringify(tokens), users.stdout]) t.notOk(out.includes(token) || out.includes(token.slice(5, 20)), 'no secret in any listing')

  const grants = JSON.parse((await cli(['grant', 'list', '--json', ...common])).stdout)
  t.same(grants, [{ user: 'bob', repo: 'demo.git', level: 'read' }, { user: 'ada', repo: 'team/project.git', level: 'write' }])
  t.same(JSON.parse((await cli(['grant', 'list', '--user', 'ada', '--json', ...common])).stdout), [{ user: 'ada', repo: 'team/project.git', level: 'write' }])
  t.same(JSON.parse((await cli(['grant', 'list', '--repo', 'demo', '--json', ...common])).stdout), [{ user: 'bob', repo: 'demo.git', level: 'read' }])
  t.match((await cli(['grant', 'list', ...common])).stdout, /^REPO +USER +LEVEL\ndemo.git +bob +read\nteam\/project.git +ada +write\n$/)

  const repos = JSON.parse((await cli(['repo', 'list', '--json', ...common])).stdout)
  t.same(repos, [
    { name: 'demo-hg', kind: 'hg', public: false },
    { name: 'demo.git', kind: 'git', public: true },
    { name: 'empty.git', kind: 'git', public: false },
    { name: 'team/project.git', kind: 'git', public: false },
  ], 'every repo on disk, with its visibility')

  // bad input: one line, exit 2 for usage, 1 for what is not there
  const both = await cli(['grant', 'list', '--user', 'ada', '--repo', 'demo', ...common])
  t.equal(both.code, 2)
  t.match(both.stderr, /^vcs-worker: grant list takes --user NAME or --repo PATH, not both\n/)
  const nobody = await cli(['token', 'list', 'nobody', ...common])
  t.equal(nobody.code, 1)
  t.equal(nobody.stderr, `vcs-worker: no such user: nobody (in ${path.join(dataDir, 'auth.sqlite')})\n`, 'the store it looked in is named')
  const extra = await cli(['user', 'list', 'x', ...common])
  t.equal(extra.code, 2)
  t.equal(extra.stderr, 'vcs-worker: user list: unexpected "x"\nusage: vcs-worker user list [--json]\n', 'the reason and a one-line hint, not the whole usage')
  const badRepo = await cli(['grant', 'list', '--repo', '../x', ...common])
  t.equal(badRepo.code, 2)
  t.match(badRepo.stderr, /^vcs-worker: bad repository path/)
  worker.proc.kill('SIGTERM')
  await new Promise((resolve) => worker.proc.once('exit', resolve))
})
