import t from 'tap'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { configurationTable, withCurrentTable } from '../../src/config/docs.js'
import { loadConfig } from '../../src/config/load.js'
import { envOf, flagOf, SETTING_KEYS, defaultSettings } from '../../src/config/schema.js'
import { ROOT } from '../helpers/worker.js'

t.test('docs/configuration.md holds the table the schema generates (run `npm run docs` when this fails)', async (t) => {
  const doc = await readFile(path.join(ROOT, 'docs', 'configuration.md'), 'utf8')
  t.equal(withCurrentTable(doc), doc, 'the table is current')
  const table = configurationTable()
  for (const key of SETTING_KEYS) t.match(table, `| ${key} | \`--${flagOf(key)}\` | \`${envOf(key)}\` |`, `${key} has its row`)
})

t.test('names derived from the schema: flags in kebab case, variables in upper snake case', async (t) => {
  t.equal(flagOf('dataDir'), 'data')
  t.equal(flagOf('reposDir'), 'repos')
  t.equal(flagOf('maxNegotiationBytes'), 'max-negotiation-bytes')
  t.equal(envOf('loginFailureAddressLimit'), 'VCS_WORKER_LOGIN_FAILURE_ADDRESS_LIMIT')
  t.equal(new Set(SETTING_KEYS.map(flagOf)).size, SETTING_KEYS.length, 'no two settings share a flag')
  t.equal(defaultSettings().port, 8080)
})

t.test('the example config file of the operating docs loads', async (t) => {
  const c = loadConfig({ flags: { config: path.join(ROOT, 'docs', 'vcs-worker.example.json') }, env: {} })
  t.equal(c.reposDir, '/srv/repos')
  t.same(c.trustedProxies, ['10.0.0.2'])
})

t.test('every problem named by its key, from every source, in one error', async (t) => {
  const dir = t.testdir({ 'c.json': JSON.stringify({ port: -5, trustedProxies: 'x', realm: 7, hgHandoff: 'yes', nope: 1 }) })
  let problems = ''
  try {
    loadConfig({ flags: { config: path.join(dir, 'c.json'), 'heavy-limit': '0', 'default-branch': 'a..b' }, env: { VCS_WORKER_FSCK_OBJECTS: 'maybe', VCS_WORKER_HOST: 'a\0b' } })
  } catch (err) {
    problems = (err as Error).message
  }
  for (const expected of [
    'VCS_WORKER_FSCK_OBJECTS: expected true or false, got "maybe"',
    'port: -5 is out of range [0, 65535]',
    'trustedProxies: expected a list of strings',
    'realm: expected a string, got 7',
    'hgHandoff: expected true or false, got "yes"',
    `nope: unknown configuration key (in ${path.join(dir, 'c.json')})`,
    'heavyLimit: 0 is out of range [1, inf]',
    'defaultBranch: expected a branch name',
    'host: expected text without NUL bytes',
  ]) t.match(problems, expected)
  t.equal(problems.split('\n').length, 9, 'one line a problem, none twice')
})
