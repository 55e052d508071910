import t from 'tap'
import { pino } from 'pino'
import { loadConfig } from '../../src/config/load.js'
import { HANDOFF_PROTOCOL } from '../../src/hg/handoff.js'
import { handoffWorks } from '../../src/hg/handoff-check.js'
import { EXTENSION } from '../../src/hg/serve-pool.js'

t.test('the hg child serves a handed-over connection of its own protocol, and nothing of another', async (t) => {
  const dir = t.testdir()
  const config = loadConfig({ flags: { data: dir, repos: dir }, env: { PATH: process.env.PATH } })
  const warnings: Record<string, unknown>[] = []
  const log = pino({ level: 'debug' }, { write: (line: string) => { const l = JSON.parse(line) as Record<string, unknown>; if (l.level === 40) warnings.push(l) } })
  t.equal(await handoffWorks(config, EXTENSION, log), true, `protocol ${HANDOFF_PROTOCOL}: answered end to end`)
  t.same(warnings, [])
  t.equal(await handoffWorks(config, EXTENSION, log, HANDOFF_PROTOCOL + 1), false, `protocol ${HANDOFF_PROTOCOL + 1}: refused`)
  t.equal(warnings.length, 1, 'with one warning')
  t.match(warnings[0]?.reason, /^unexpected answer \(status 0\): ""/, 'the child closed the connection without a byte and reported it lost')
})
