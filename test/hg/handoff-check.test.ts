import t from 'tap'
import path from 'node:path'
import { writeFile } from 'node:fs/promises'
import { clientEnv, gitWrapper, run, startWorker, type Worker } from '../helpers/worker.js'

const clone = async (w: Worker, dest: string) => {
  const rc = path.join(w.dir, 'hgrc-anon')
  await writeFile(rc, '[ui]\nusername = Test <t@example.invalid>\n')
  return run('hg', ['clone', `${w.url}/demo-hg`, dest], { cwd: w.dir, env: clientEnv(path.join(w.dir, 'client-home'), { HGRCPATH: rc }) })
}
const getbundles = (w: Worker) => w.logs().filter((l) => l.msg === 'request' && l.service === 'getbundle')

t.test('the handoff self-test passes on this runtime: bundle downloads are handed over', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1' })
  t.ok(w.app.hgPool!.handoffVerified)
  t.equal(w.logs().filter((l) => l.msg === 'hg handoff self-test passed: bundle downloads are handed over').length, 1)
  const r = await clone(w, 'c')
  t.equal(r.code, 0, r.stderr)
  t.ok(getbundles(w).length > 0 && getbundles(w).every((l) => l.handed_over === true), 'the clone\'s bundle was handed over')
})

t.test('a runtime where the handoff does not work: one warning, and clones are proxied', async (t) => {
  // an hg whose extension cannot take the handed-over socket, as a runtime with other IPC internals would be
  const hg = await gitWrapper(t, '#!/bin/sh\nfor a in "$@"; do [ "$a" = debugvcsworkerhandoff ] && { echo "cannot take the socket" >&2; exit 1; }; done\nexec hg "$@"\n')
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-bin': hg })
  t.notOk(w.app.hgPool!.handoffVerified)
  const warnings = w.logs().filter((l) => l.level === 40 && String(l.msg).startsWith('hg handoff self-test failed'))
  t.equal(warnings.length, 1, 'one warning')
  t.match(warnings[0]!, { node: process.version, reason: /unexpected answer|no answer|channel/ })
  const r = await clone(w, 'c')
  t.equal(r.code, 0, r.stderr)
  t.ok(getbundles(w).length > 0 && getbundles(w).every((l) => l.handed_over === undefined && l.status === 200), 'the bundle was proxied')
  t.equal(w.app.hgPool!.readyCount(), 1, 'the children serve on')
})

t.test('hgHandoff off: no self-test, nothing handed over', async (t) => {
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-handoff': false })
  t.notOk(w.app.hgPool!.handoffVerified)
  t.notOk(w.logs().some((l) => String(l.msg).startsWith('hg handoff self-test')), 'no self-test ran')
})
