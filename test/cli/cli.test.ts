import t from 'tap'
import path from 'node:path'
import { readdir, writeFile } from 'node:fs/promises'
import { loadConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import { CLI, ROOT, fixtureDir, gitClient, run, spawnWorker } from '../helpers/worker.js'

const cli = (args: string[], env: NodeJS.ProcessEnv = {}, input?: string) => run(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH, ...env }, input })

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
