import t from 'tap'
import path from 'node:path'
import { clientEnv, gateWrapper, gitClient, metric, rawRequest, run, startWorker, waitFor } from '../helpers/worker.js'
import { MAX_PAGE_REVCOUNT } from '../../src/hg/request.js'

t.test('hgweb pages: revcount bounded on its way to hg, pages admitted as heavy work (refused when no slot is free), static files not', async (t) => {
  const gate = await gateWrapper(t)
  const w = await startWorker(t, { 'hg-processes': '1', 'hg-clone-bundles': false, 'heavy-limit': '1', 'queue-limit': '0', 'git-bin': gate.bin })
  const repo = path.join(w.reposDir, 'big-hg')
  const hgEnv = clientEnv(w.dir, { HGRCPATH: '' })
  t.equal((await run('hg', ['init', repo], { env: hgEnv })).code, 0)
  t.equal((await run('hg', ['-R', repo, 'debugbuilddag', '+300'], { env: hgEnv })).code, 0, '300 changesets')
  await w.store.setRepo('big-hg', 'hg', true)
  const admitted = async () => metric(await (await fetch(`${w.url}/metrics`)).text(), 'vcs_queue_wait_seconds_count', { class: 'incremental' })

  const before = await admitted()
  const res = await fetch(`${w.url}/big-hg/json-log?revcount=2500`)
  t.equal(res.status, 200)
  const entries = ((await res.json()) as { changesets: unknown[] }).changesets
  t.equal(entries.length, MAX_PAGE_REVCOUNT, `a page lists at most ${MAX_PAGE_REVCOUNT} changesets, whatever revcount asks`)
  t.equal(await admitted(), before + 1, 'the page was admitted as heavy work')
  const bad = await rawRequest(w.port, 'GET', '/big-hg/graph?revcount=lots')
  t.same([bad.status, bad.body.toString()], [400, 'revcount must be a whole number\n'], 'a revcount that is no number: 400, one line')

  // the one heavy slot held by a clone that waits at the gate: a page is refused at once
  await gate.close()
  const git = gitClient(w.dir)
  const clone = git(['-c', 'protocol.version=0', 'clone', '-q', `${w.url}/demo.git`, 'held'])
  await waitFor(async () => metric(await (await fetch(`${w.url}/metrics`)).text(), 'vcs_heavy_in_flight') === 1, 10_000, 'the clone to hold the slot')
  const refused = await rawRequest(w.port, 'GET', '/big-hg/graph')
  t.equal(refused.status, 503, 'an hgweb page waits for a slot like any heavy work (the queue is 0 here)')
  t.match(refused.body.toString(), /server busy/)
  const css = await rawRequest(w.port, 'GET', '/big-hg/static/style-paper.css')
  t.equal(css.status, 200, 'a static file is light: served all the same')
  await gate.open()
  t.equal((await clone).code, 0)
  t.equal((await rawRequest(w.port, 'GET', '/big-hg/graph')).status, 200, 'served once the slot is free')
})
