import t from 'tap'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { loadConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import { openSqliteStore } from '../../src/auth/sqlite-store.js'
import { CLI, CLI_ENV, ROOT, fixtureDir, gitClient, run, spawnWorker } from '../helpers/worker.js'

const cli = (args: string[], env: NodeJS.ProcessEnv = {}, input?: string) => run(process.execPath, [CLI, ...args], { env: { ...CLI_ENV, ...env }, input })

t.test('config precedence: defaults < file < env < flags', async (t) => {
  const dir = t.testdir({ 'c.json': JSON.stringify({ port: 1111, host: '127.0.0.2', hgProcesses: 3, logLevel: 'warn' }) })
  const file = path.join(dir, 'c.json')
  const c = loadConfig({ flags: { config: file, port: '3333' }, env: { VCS_WORKER_PORT: '2222', VCS_WORKER_HG_PROCESSES: '4' }, cwd: dir })
  t.equal(c.port, 3333, 'flag beats env and file')
  t.equal(c.hgProcesses, 4, 'env beats file')
  t.equal(c.host, '127.0.0.2', 'file beats defaults')
  t.equal(c.logLevel, 'warn')
  t.equal(c.killGraceMs, 5000, 'default')
  t.equal(c.reposDir, path.join(ROOT, 'data', 'repos'), 'repos default under the install\'s data dir, wherever the command runs')
  t.ok(Object.isFrozen(c))
})

t.test('a boolean setting on by default is turned off with --no-<flag> (and the env)', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const common = ['--repos', reposDir, '--data', dataDir, '--hg-processes', '0']
  t.equal((await cli(['repo', 'visibility', 'demo', 'public', '--repos', reposDir, '--data', dataDir])).code, 0)
  const git = gitClient(dir)
  const packCacheOf = async (args: string[], env: NodeJS.ProcessEnv, name: string): Promise<unknown> => {
    const w = await spawnWorker(t, [...common, ...args], env)
    const clone = await git(['clone', '-q', `${w.url}/demo.git`, name])
    t.equal(clone.code, 0, clone.stderr)
    const line = w.output().split('\n').filter((l) => l.includes('"route":"git_upload_pack"')).map((l) => JSON.parse(l) as Record<string, unknown>).pop()
    w.proc.kill('SIGTERM')
    return line?.pack_cache
  }
  t.equal(await packCacheOf([], {}, 'c-default'), 'miss', 'the cache is on by default: a first fetch is a miss')
  t.equal(await packCacheOf(['--no-pack-cache'], {}, 'c-flag'), undefined, '--no-pack-cache: no cache at all')
  t.equal(await packCacheOf([], { VCS_WORKER_PACK_CACHE: 'false' }, 'c-env'), undefined, 'VCS_WORKER_PACK_CACHE=false the same')
  const both = await cli(['serve', '--pack-cache=false', ...common])
  t.equal(both.code, 2)
  t.match(both.stderr, /does not take an argument/, 'a value on a boolean flag is refused, not read as true')
})

t.test('bad configuration: every problem reported, each naming its key', async (t) => {
  const dir = t.testdir({ 'bad.json': JSON.stringify({ port: 'eighty', colour: 'blue' }), 'broken.json': '{ not json' })
  try {
    loadConfig({ flags: { config: path.join(dir, 'bad.json'), 'hg-processes': '-1', 'log-level': 'loud' }, env: { VCS_WORKER_KILL_GRACE_MS: 'soon' } })
    t.fail('should throw')
  } catch (err) {
    t.type(err, ConfigError)
    const problems = (err as ConfigError).problems.join('\n')
    t.match(problems, 'colour: unknown configuration key')
    t.match(problems, 'port: expected an integer, got "eighty"')
    t.match(problems, 'VCS_WORKER_KILL_GRACE_MS: expected an integer')
    t.match(problems, 'hgProcesses: -1 is out of range')
    t.match(problems, 'logLevel: must be one of')
  }
  const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
    [['serve', '--port', '99999'], {}, /bad configuration: port: 99999 is out of range/],
    [['serve', '--port', 'x'], {}, /bad configuration: --port: expected an integer/],
    [['serve'], { VCS_WORKER_PORT: 'http' }, /bad configuration: VCS_WORKER_PORT: expected an integer/],
    [['serve', '--config', path.join(dir, 'broken.json')], {}, /bad configuration: config file .*broken.json/],
    [['serve', '--no-such-flag'], {}, /^vcs-worker: unknown option --no-such-flag\nusage: vcs-worker serve /],
    [['serve', '--prot', '80'], {}, /^vcs-worker: unknown option --prot; did you mean --port\?\n/],
    [['serve', '--repos', path.join(dir, 'missing')], {}, /bad configuration: reposDir: .*missing does not exist/],
    [['frobnicate'], {}, /unknown command: frobnicate/],
    [['repo', 'create', 'x'], {}, /exactly one of --git or --hg/],
  ]
  for (const [args, env, msg] of cases) {
    const r = await cli([...args, '--data', path.join(dir, 'data')], env)
    t.equal(r.code, 2, `${args.join(' ')} exits 2`)
    t.match(r.stderr, msg)
  }
})

t.test('repo create: git and nested paths, refuses bad and existing names, never half-made', async (t) => {
  const { dir, reposDir, dataDir } = await fixtureDir(t)
  const common = ['--repos', reposDir, '--data', dataDir]
  let r = await cli(['repo', 'create', 'team/new-thing', '--git', ...common])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout, 'created git repository team/new-thing.git (private)\n')
  r = await cli(['repo', 'create', 'team/new-thing.git', '--git', ...common])
  t.equal(r.code, 1)
  t.match(r.stderr, 'team/new-thing.git already exists')
  for (const bad of ['../escape', '.hidden', 'a//b', 'x\\y', 'demo.git/inner']) {
    r = await cli(['repo', 'create', bad, '--git', ...common])
    t.not(r.code, 0, `${bad} refused`)
    t.match(r.stderr, /^vcs-worker: /)
  }
  const entries = (await readdir(reposDir, { recursive: true })).filter((e) => e.includes('.tmp-') || e.includes('escape'))
  t.same(entries, [], 'no temp dirs or escaped repos left')
  t.same((await readdir(path.dirname(reposDir))).sort(), ['client-home', 'data', 'repos'], 'nothing written beside the repos dir')

  // a server already running sees the new repo, user and grant at once, and serves them
  const worker = await spawnWorker(t, common)
  r = await cli(['repo', 'create', 'fresh', '--git', '--public', ...common])
  t.equal(r.code, 0)
  r = await cli(['user', 'add', 'maker', ...common], {}, 'maker-password\n')
  t.equal(r.code, 0, r.stderr)
  r = await cli(['grant', 'maker', 'fresh', 'write', ...common])
  t.equal(r.stdout, 'maker has write on fresh.git\n')
  const git = gitClient(dir)
  const anon = await git(['clone', `${worker.url}/fresh.git`, 'fresh-anon'])
  t.equal(anon.code, 0, 'public: anonymous clone works')
  const url = new URL(worker.url)
  const c = await git(['clone', `http://maker:maker-password@${url.host}/fresh.git`, 'fresh'])
  t.equal(c.code, 0, c.stderr)
  await writeFile(path.join(dir, 'fresh', 'a'), 'a\n')
  await git(['add', 'a'], path.join(dir, 'fresh'))
  await git(['commit', '-m', 'first'], path.join(dir, 'fresh'))
  const p = await git(['push', 'origin', 'HEAD:main'], path.join(dir, 'fresh'))
  t.equal(p.code, 0, p.stderr)
  worker.proc.kill('SIGTERM')
  await new Promise((resolve) => worker.proc.once('exit', resolve))
  t.equal(worker.proc.exitCode, 0, 'SIGTERM: clean exit 0')
})

t.test('--version, -h, help: answers on stdout with exit 0; a bare or incomplete command is a usage mistake', async (t) => {
  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }
  const { reposDir, dataDir } = await fixtureDir(t)
  for (const flag of ['--version', '-V']) t.same(await cli([flag]), { code: 0, stdout: `vcs-worker ${pkg.version}\n`, stderr: '' }, flag)
  const whole = await cli(['--help'])
  t.same([whole.code, whole.stderr], [0, ''])
  t.match(whole.stdout, /^usage:\n {2}vcs-worker serve .*\n[\s\S]* {2}vcs-worker lfs fsck PATH .*\nevery command takes --data DIR/)
  t.equal((await cli(['-h'])).stdout, whole.stdout, '-h is --help')
  const bare = await cli([])
  t.same([bare.code, bare.stdout, bare.stderr], [2, '', whole.stdout], 'no command: the usage, on stderr, exit 2')
  const user = await cli(['user', '--help'])
  t.equal(user.code, 0)
  t.same(user.stdout.split('\n').filter((l) => l.startsWith('  ')).map((l) => l.trim().split(/\s+/).slice(0, 3).join(' ')), ['vcs-worker user add', 'vcs-worker user passwd', 'vcs-worker user rename', 'vcs-worker user remove', 'vcs-worker user unlock', 'vcs-worker user list'], 'user --help: the user commands only')
  t.equal((await cli(['help', 'user'])).stdout, user.stdout, 'help user is the same')
  const serveHelp = await cli(['serve', '--help'])
  t.match(serveHelp.stdout, /docs\/configuration\.md/)
  t.match(serveHelp.stdout, /^ {2}--heavy-limit N +.*\[\d+\]$/m, 'serve --help lists the settings with their defaults')
  t.match(serveHelp.stdout, /^ {2}--pack-cache, --no-pack-cache /m)
  for (const [args, stderr] of [
    [['user'], 'vcs-worker: user needs a subcommand: add, passwd, rename, remove, unlock, list\nsee: vcs-worker user --help\n'],
    [['usr', 'add'], 'vcs-worker: unknown command: usr; did you mean user add?\nsee: vcs-worker --help\n'],
    [['user', 'ad', 'x'], 'vcs-worker: unknown command: user ad; did you mean user add?\nsee: vcs-worker user --help\n'],
    [['token', 'create'], 'vcs-worker: token create: missing NAME\nusage: vcs-worker token create NAME [--expires 30d|12h|2027-01-31]\n'],
    [['grant', 'ada', 'demo'], 'vcs-worker: grant: missing read|write|admin\nusage: vcs-worker grant NAME PATH read|write|admin\n'],
  ] as [string[], string][]) {
    const r = await cli([...args, '--data', dataDir, '--repos', reposDir])
    t.same([r.code, r.stderr], [2, stderr], `${args.join(' ')}: the reason and one hint`)
  }
})

t.test('--init makes a store only the owner can read; serve warns about looser modes; cut deletes are swept', async (t) => {
  const dir = t.testdir({})
  const data = path.join(dir, 'fresh-data')
  const { reposDir } = await fixtureDir(t)
  const r = await cli(['user', 'add', 'ada', '--data', data, '--repos', reposDir, '--init'], {}, 'ada-password-1\n')
  t.same([r.code, r.stdout], [0, 'added user ada\n'], r.stderr)
  t.equal((await stat(data)).mode & 0o777, 0o700, 'the data dir: 0700')
  t.equal((await stat(path.join(data, 'auth.sqlite'))).mode & 0o777, 0o600, 'the store: 0600 (password hashes, token hashes)')
  t.equal((await cli(['user', 'list', '--data', data, '--repos', reposDir])).code, 0, 'found again without --init')

  await chmod(data, 0o755)
  await chmod(path.join(data, 'auth.sqlite'), 0o644)
  // a delete killed between its rename and its removal, two hours ago; and one still running
  const old = path.join(reposDir, `.deleted-${Date.now() - 2 * 3600_000}-0a1b2c`)
  const young = path.join(reposDir, `.deleted-${Date.now()}-3d4e5f`)
  for (const d of [old, young]) await mkdir(path.join(d, 'objects'), { recursive: true })
  const w = await spawnWorker(t, ['--data', data, '--repos', reposDir, '--hg-processes', '0'])
  t.match(w.output(), `${data} is mode 755: others can read it (chmod 700 ${data})`)
  t.match(w.output(), `${path.join(data, 'auth.sqlite')} is mode 644: others can read it (chmod 600 `)
  t.same((await readdir(reposDir)).filter((e) => e.startsWith('.')), [path.basename(young)], 'the old trash is gone, the young one kept')
  w.proc.kill('SIGTERM')
  await new Promise((resolve) => w.proc.once('exit', resolve))
})

t.test('kdfCost: new password hashes at the configured cost; a cost out of range refused, nothing written', async (t) => {
  const { reposDir, dataDir } = await fixtureDir(t)
  const common = ['--data', dataDir, '--repos', reposDir, '--init']
  const hashOf = async (name: string) => {
    const store = openSqliteStore(path.join(dataDir, 'auth.sqlite'))
    try { return (await store.findUser(name))?.passwordHash } finally { await store.close() }
  }
  let r = await cli(['user', 'add', 'cheap', ...common], {}, 'cheap-password-1\n')
  t.equal(r.code, 0, r.stderr)
  t.match(await hashOf('cheap'), /^scrypt\$1024\$8\$1\$/, 'the tests\' cost, 2^10')
  r = await cli(['user', 'add', 'dear', ...common], { VCS_WORKER_KDF_COST: '17' }, 'dear-password-1\n')
  t.equal(r.code, 0, r.stderr)
  t.match(await hashOf('dear'), /^scrypt\$131072\$8\$1\$/, 'the default cost, 2^17')
  r = await cli(['user', 'add', 'weak', ...common], { VCS_WORKER_KDF_COST: '9' }, 'weak-password-1\n')
  t.equal(r.code, 2)
  t.equal(r.stderr, "vcs-worker: bad configuration: kdfCost: 9 is out of range [10, 22]\n")
  t.equal(await hashOf('weak'), undefined, 'no user added')
})

t.test('an admin command loads neither the server nor the PostgreSQL driver', async (t) => {
  const { reposDir, dataDir, dir } = await fixtureDir(t)
  const seen = path.join(dir, 'loaded.txt')
  const hooks = path.join(dir, 'hooks.mjs')
  const register = path.join(dir, 'register.mjs')
  // a module resolve hook (Node's module.register) writing every URL the CLI loads to a file
  await writeFile(hooks, `import { appendFileSync } from 'node:fs'\nexport async function resolve(s, c, next) { const r = await next(s, c); appendFileSync(${JSON.stringify(seen)}, r.url + '\\n'); return r }\n`)
  await writeFile(register, `import { register } from 'node:module'\nregister(${JSON.stringify(pathToFileURL(hooks).href)})\n`)
  const r = await run(process.execPath, ['--import', pathToFileURL(register).href, CLI, 'repo', 'list', '--data', dataDir, '--repos', reposDir, '--init'], { env: CLI_ENV })
  t.equal(r.code, 0, r.stderr)
  const loaded = (await readFile(seen, 'utf8')).split('\n').filter(Boolean)
  t.ok(loaded.some((u) => u.endsWith('/dist/src/cli/admin.js')), 'the hook saw the CLI load (admin.js)')
  t.same(loaded.filter((u) => /\/node_modules\/(fastify|pg|pino)\/|\/dist\/src\/app\.js$/.test(u)), [], 'no fastify, pg, pino or app.js')
})
