/**
 * The events journal (SQLite and PostgreSQL) and its deliverer, against a real HTTP receiver on
 * 127.0.0.1: order and seq per repo, an intent holding its repo back, a dropped intent leaving
 * no gap, signatures, a 500 retried under the same delivery id, a 3xx not followed, and two
 * deliverers on one PostgreSQL journal sending each event once.
 */
import t from 'tap'
import type * as Tap from 'tap'
import http from 'node:http'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { openSqliteJournal } from '../../src/events/sqlite-journal.js'
import { openPgJournal } from '../../src/events/pg-journal.js'
import { EventDeliverer } from '../../src/events/deliverer.js'
import type { EventJournal, NewEvent } from '../../src/events/journal.js'
import { startPostgres } from '../helpers/postgres.js'
import { waitFor } from '../helpers/worker.js'

const SECRET = Buffer.from('test-secret')
const log = pino({ level: 'silent' })
const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const C = 'c'.repeat(40)
const push = (repo: string, before: string, after: string): NewEvent => ({ kind: 'push', repo, protocol: 'git', pusher: 'ana', changes: [{ ref: 'refs/heads/main', before, after }] })

interface Received { id: string; seq: number; repo: string; changes: { before: string; after: string }[]; verified: boolean }

/** A receiver that answers what `answer` says for each request and keeps what it got. */
async function receiver(t: Tap.Test, answer: (n: number) => number = () => 200) {
  const got: Received[] = []
  let n = 0
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks)
      const sig = String(req.headers['x-vcs-signature-256'] ?? '')
      const want = `sha256=${createHmac('sha256', SECRET).update(raw).digest('hex')}`
      const status = answer(n++)
      const body = JSON.parse(raw.toString()) as Received
      if (req.headers['x-vcs-delivery'] !== body.id) throw new Error('delivery id differs from the body id')
      if (status >= 200 && status < 300) got.push({ ...body, verified: sig.length === want.length && timingSafeEqual(Buffer.from(sig), Buffer.from(want)) })
      res.writeHead(status, status >= 300 && status < 400 ? { location: 'http://127.0.0.1:1/' } : {}).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return { got, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/events`, requests: () => n }
}

function deliverer(t: Tap.Test, journal: EventJournal, url: string): EventDeliverer {
  const d = new EventDeliverer({ journal, url, secret: SECRET, maxAgeMs: 3_600_000, log, pollMs: 50 })
  d.start()
  t.teardown(() => d.stop())
  return d
}

const sqlite = async (t: Tap.Test): Promise<EventJournal> => {
  const j = openSqliteJournal(path.join(mkdtempSync(path.join(os.tmpdir(), 'vcs-events-')), 'events.sqlite'))
  t.teardown(() => j.close())
  return j
}

const pgServer = await startPostgres(t)
const pgJournal = async (t: Tap.Test, url?: string): Promise<EventJournal> => {
  const j = await openPgJournal({ url: url ?? pgServer.url(await pgServer.database()), concurrency: 4 })
  t.teardown(() => j.close())
  return j
}

for (const [name, open] of [['sqlite', sqlite], ['postgres', pgJournal]] as const) {
  t.test(`${name}: order per repo, an intent holds its repo back, a dropped one leaves no gap`, async (t) => {
    const j = await open(t)
    const r = await receiver(t)
    const first = await j.intend(push('x.git', A, B), 'host', 1)
    const dropped = await j.intend(push('x.git', B, C), 'host', 1)
    await j.append(push('y.git', A, B))
    deliverer(t, j, r.url)
    await waitFor(() => r.got.length === 1, 10_000, 'y delivered')
    t.equal(r.got[0]!.repo, 'y.git', 'another repo goes on while x waits on its intent')
    t.equal(await j.settle(dropped.id, []), true, 'an intent that moved nothing is dropped')
    t.equal(await j.settle(first.id, push('x.git', A, B).changes), true)
    t.equal(await j.settle(first.id, []), false, 'settled once')
    await j.append(push('x.git', B, C))
    await waitFor(async () => (await j.stats()).pending === 0 && r.got.length === 3, 10_000, 'x delivered')
    const x = r.got.filter((e) => e.repo === 'x.git')
    t.same(x.map((e) => e.seq), [1, 2], 'seq 1, 2 with no gap where the dropped intent was')
    t.equal(x[1]!.changes[0]!.before, x[0]!.changes[0]!.after, 'each before is the previous after')
    t.ok(r.got.every((e) => e.verified), 'every signature verifies')
    t.same(await j.stats(), { pending: 0, intents: 0, failed: 0, oldestPendingAt: null })
  })

  t.test(`${name}: a 500 is retried under the same id; a 3xx is not followed`, async (t) => {
    const j = await open(t)
    const r = await receiver(t, (n) => (n === 0 ? 500 : n === 1 ? 302 : 200))
    const e = await j.append(push('x.git', A, B))
    deliverer(t, j, r.url)
    await waitFor(async () => (await j.list({ limit: 1, state: 'delivered' })).length === 1, 20_000, 'delivered on the third attempt')
    t.equal(r.got.length, 1)
    t.equal(r.got[0]!.id, e.id, 'the same delivery id')
    t.equal(r.requests(), 3, 'three attempts: 500, 302 (not followed), 200')
    const [listed] = await j.list({ limit: 10 })
    t.equal(listed!.attempts, 3)
  })
}

t.test('postgres: two deliverers on one journal send each event once', async (t) => {
  const url = pgServer.url(await pgServer.database())
  const [j1, j2] = [await pgJournal(t, url), await pgJournal(t, url)]
  const r = await receiver(t)
  for (let i = 0; i < 40; i++) await j1.append(push(`r${i % 8}.git`, A, B))
  deliverer(t, j1, r.url)
  deliverer(t, j2, r.url)
  await waitFor(async () => (await j1.stats()).pending === 0, 20_000, 'all delivered')
  t.equal(r.got.length, 40, 'forty deliveries for forty events')
  t.equal(new Set(r.got.map((e) => e.id)).size, 40, 'none twice')
  for (let i = 0; i < 8; i++) t.same(r.got.filter((e) => e.repo === `r${i}.git`).map((e) => e.seq), [1, 2, 3, 4, 5], `r${i}: seq in order`)
})
