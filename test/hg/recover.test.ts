import t from 'tap'
import { existsSync } from 'node:fs'
import { symlink, unlink } from 'node:fs/promises'
import path from 'node:path'
import { pino } from 'pino'
import { JournalRecovery, lockHeld, lockPrefix } from '../../src/hg/recover.js'
import { loadConfig } from '../../src/config/load.js'
import { run } from '../helpers/worker.js'

const env = { PATH: process.env.PATH, HGPLAIN: '1', HGUSER: 'T <t@example.invalid>', HGRCPATH: '' }

/** A repo whose last commit was killed (SIGKILL from its own pretxncommit hook): `.hg/store/journal` stays. */
async function abandoned(dir: string): Promise<string> {
  const repo = path.join(dir, 'repo')
  await run('hg', ['init', repo], { env })
  await run('sh', ['-c', 'echo a > a && hg add a && hg commit -q -m first'], { cwd: repo, env })
  await run('sh', ['-c', 'echo b > a'], { cwd: repo, env })
  await run('hg', ['commit', '-m', 'killed', '--config', 'hooks.pretxncommit=kill -9 $PPID'], { cwd: repo, env })
  return repo
}

t.test('a journal whose lock names another host (shared storage) is left alone; ours with a dead pid is recovered', async (t) => {
  const dir = t.testdir()
  const repo = await abandoned(dir)
  const store = path.join(repo, '.hg', 'store')
  t.ok(existsSync(path.join(store, 'journal')), 'the killed commit left its journal')
  const lines: string[] = []
  const log = pino({ level: 'info' }, { write: (l: string) => { lines.push(l) } })
  const config = loadConfig({ flags: { data: dir, repos: dir }, env })
  const recovery = new JournalRecovery(config, log)
  const lock = path.join(store, 'lock')
  await unlink(lock).catch(() => {})

  // a transaction in progress on another host: its pid means nothing here
  await symlink('other-host/effffffb:1', lock)
  t.equal(await lockHeld(store), true, 'another host\'s lock is live')
  await recovery.ensure(repo)
  t.ok(existsSync(path.join(store, 'journal')), 'not rolled back')
  t.notMatch(lines.join(''), /recovered/)
  // the same host name in another pid namespace (a container) is someone else too
  await unlink(lock)
  await symlink(`${(await lockPrefix()).split('/')[0]}/1:1`, lock)
  t.equal(await lockHeld(store), true, 'another pid namespace\'s lock is live')

  // ours, with a pid that is gone: abandoned
  await unlink(lock)
  await symlink(`${await lockPrefix()}:999999999`, lock)
  t.equal(await lockHeld(store), false)
  await unlink(lock) // hg recover takes the lock itself; hg would break a stale one of ours the same way
  await recovery.ensure(repo)
  t.notOk(existsSync(path.join(store, 'journal')), 'rolled back')
  t.match(lines.join(''), /recovered an abandoned hg transaction/)
  const verify = await run('hg', ['-R', repo, 'verify', '-q'], { env })
  t.equal(verify.code, 0, verify.stdout + verify.stderr)
  t.equal((await run('hg', ['-R', repo, 'log', '-T', '{desc}\n'], { env })).stdout, 'first\n', 'the killed commit is gone, the first stays')

  // a live process of ours holds it
  await symlink(`${await lockPrefix()}:${process.pid}`, lock)
  t.equal(await lockHeld(store), true, 'our own live pid')
})
