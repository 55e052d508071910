import t from 'tap'
import { commandAction, commandLabel, HG_COMMAND_NAMES, takesBody } from '../../src/hg/commands.js'
import { judgeHgRequest } from '../../src/hg/request.js'
import { defaultPool, haproxyConfig } from '../../tools/pool/haproxy-config.js'

const WRITES = ['pushkey', 'unbundle']

t.test('the command table: Mercurial\'s read and write classes, fail closed', async (t) => {
  for (const cmd of HG_COMMAND_NAMES) {
    if (cmd === 'batch') continue
    t.equal(commandAction(cmd), WRITES.includes(cmd) ? 'write' : 'read', cmd)
  }
  for (const unknown of ['frobnicate', 'Unbundle', 'push', '', 'constructor', '__proto__', 'toString']) t.equal(commandAction(unknown), 'write', `unknown ${JSON.stringify(unknown)} needs write`)
  t.equal(commandAction('batch'), 'write', 'batch inside batch is a write')
  t.same(HG_COMMAND_NAMES.filter(takesBody), ['unbundle'], 'only unbundle takes a body')
  t.notOk(takesBody(undefined))
  t.equal(commandLabel('getbundle'), 'getbundle')
  t.equal(commandLabel('debugwireargs'), 'debugwireargs', 'the metrics list no longer lacks it')
  t.equal(commandLabel('filelog'), 'filelog')
  t.equal(commandLabel('hgweb'), 'hgweb')
  t.equal(commandLabel('x'.repeat(50)), 'other', 'labels stay bounded')
  const acl = haproxyConfig(defaultPool()).split('\n').find((l) => l.includes('acl hg_cmd url_param(cmd)'))!
  t.same(acl.split(' -m str ')[1]!.split(' ').sort(), [...HG_COMMAND_NAMES].sort(), 'HAProxy routes exactly the commands of the table to servers-hg')
})

t.test('a batch is as strong as its strongest sub-command, in every carrier', async (t) => {
  const headers = (...args: string[]) => args.flatMap((a, i) => [`X-HgArg-${i + 1}`, a])
  const cases: [string, string[], 'read' | 'write'][] = [
    ['/r?cmd=batch&cmds=heads+%3Bknown+nodes%3D', [], 'read'],
    ['/r?cmd=batch&cmds=heads+%3Bpushkey+namespace%3Dphases', [], 'write'],
    ['/r?cmd=batch', headers('cmds=heads+%3Bknown+nodes%3D'), 'read'],
    ['/r?cmd=batch', headers('cmds=heads+%3Bunbundle+heads%3D'), 'write'],
    ['/r?cmd=batch', headers('cmds=known+nodes%3D%3A1%3B2%2C3+%3Bpushkey+key%3Dx'), 'write'],
    ['/r?cmd=batch', headers('cmds=batch+cmds%3Dheads'), 'write'],
    ['/r?cmd=batch', headers('cmds=heads+%3Bfrobnicate'), 'write'],
    ['/r?cmd=batch', headers('cmds=%3B%3B+heads'), 'read'],
    ['/r?cmd=pushkey', [], 'write'],
    ['/r?cmd=listkeys&namespace=bookmarks', [], 'read'],
  ]
  for (const [url, raw, action] of cases) t.equal(judgeHgRequest('GET', url, raw).action, action, `${url} ${raw.join(' ')}`)
})

t.test('work classes: only bundle commands are admitted as heavy work', async (t) => {
  const null40 = '0'.repeat(40)
  t.equal(judgeHgRequest('POST', '/r?cmd=unbundle', ['Content-Length', '10']).workClass, 'incremental')
  t.equal(judgeHgRequest('GET', '/r?cmd=stream_out', []).workClass, 'full')
  t.equal(judgeHgRequest('GET', `/r?cmd=changegroup&roots=${null40}`, []).workClass, 'full')
  t.equal(judgeHgRequest('GET', `/r?cmd=changegroupsubset&roots=${'2'.repeat(40)}&heads=`, []).workClass, 'incremental')
  for (const light of ['capabilities', 'heads', 'known', 'listkeys', 'lookup', 'branchmap', 'clonebundles']) t.equal(judgeHgRequest('GET', `/r?cmd=${light}`, []).workClass, undefined, `${light} is light`)
})
