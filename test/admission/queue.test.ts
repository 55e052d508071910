import t from 'tap'
import { EventEmitter } from 'node:events'
import type { ServerResponse } from 'node:http'
import { Admission, admissionClient } from '../../src/admission/admission.js'

/** A stand-in for the response a waiter watches: only its 'close' matters to the queue. */
const response = () => new EventEmitter() as unknown as ServerResponse
const limits = { heavyLimit: 3, repoHeavyLimit: 2, fullCloneLimit: 2, clientHeavyLimit: 2, queueLimit: 2, queueTimeoutMs: 60_000, transferLimit: 4, transferRepoLimit: 3, transferClientLimit: 2 }

t.test('limits: global, per repo, full clones and per client; the queue orders incremental work first', async (t) => {
  const a = new Admission(limits)
  const r1 = await a.acquire('a', 'full', response(), 'c1')
  const r2 = await a.acquire('b', 'full', response(), 'c2')
  t.equal(a.activeFull, 2)
  let fullStarted = false
  const full = a.acquire('c', 'full', response(), 'c3').then((r) => { fullStarted = true; return r })
  t.equal(a.queued, 1, 'a third full clone waits: full-clone limit')
  const inc = await a.acquire('c', 'incremental', response(), 'c3')
  t.equal(a.active, 3, 'an incremental fetch takes the slot the full clones may not')
  const order: string[] = []
  const incWaiter = a.acquire('d', 'incremental', response(), 'c4').then((r) => { order.push('incremental'); return r })
  void full.then(() => order.push('full'))
  t.equal(a.queued, 2)
  await t.rejects(a.acquire('e', 'incremental', response(), 'c5'), { code: 'VCS_UNAVAILABLE' }, 'queue full: 503 at once')
  inc()
  const next = await incWaiter
  t.same(order, ['incremental'], 'a freed slot goes to incremental work before a full clone')
  t.notOk(fullStarted)
  r1()
  const third = await full
  t.ok(fullStarted, 'a freed full-clone slot starts the waiting full clone')
  for (const r of [r2, next, third]) r()
  t.ok(a.idle)
})

t.test('per repo and per client: one busy repo or one greedy client does not hold up the others', async (t) => {
  const a = new Admission({ ...limits, heavyLimit: 5, queueLimit: 4 })
  const take = (repo: string, client: string) => a.acquire(repo, 'incremental', response(), client)
  const h1 = await take('hot', 'x')
  const h2 = await take('hot', 'y')
  const waitingHot = take('hot', 'z')
  t.equal(a.queued, 1, 'the repo limit (2) queues a third request on the same repo')
  const h3 = await take('cold', 'z')
  t.equal(a.active, 3, 'another repo is served past the waiter')
  const h4 = await take('r1', 'y')
  const waitingY = take('r2', 'y')
  t.equal(a.active, 4)
  t.equal(a.queued, 2, 'client y holds its limit (2): its third request waits although a slot is free')
  h1()
  const rHot = await waitingHot
  h2()
  const rY = await waitingY
  for (const r of [h3, h4, rHot, rY]) r()
  t.ok(a.idle, 'every slot came back')
})

t.test('a waiter whose client leaves frees its place; a queue timeout answers 503; release twice is harmless', async (t) => {
  const a = new Admission({ ...limits, heavyLimit: 1, queueTimeoutMs: 50 })
  const first = await a.acquire('a', 'incremental', response(), 'c1')
  const res = response()
  const gone = a.acquire('a', 'incremental', res, 'c2')
  ;(res as unknown as EventEmitter).emit('close')
  await t.rejects(gone, { code: 'VCS_CLIENT_GONE' })
  t.equal(a.queued, 0, 'its place is free')
  await t.rejects(a.acquire('a', 'incremental', response(), 'c3'), { code: 'VCS_UNAVAILABLE', message: /no free slot within 0\.1 s/ })
  first()
  first()
  t.equal(a.active, 0, 'a second release does not free a slot twice')
})

t.test('draining refuses new work; saturation is told before the heavy request comes', async (t) => {
  const a = new Admission({ ...limits, heavyLimit: 1, queueLimit: 0 })
  const r = await a.acquire('a', 'full', response(), 'c')
  t.throws(() => a.refuseIfBusy(), { code: 'VCS_UNAVAILABLE', message: /too many clones and pushes/ }, 'saturated: a new session is refused at its start')
  r()
  t.doesNotThrow(() => a.refuseIfBusy())
  a.refuseNewSessions()
  t.throws(() => a.refuseIfBusy(), { message: 'server is restarting; try again in a few seconds' }, 'draining: new sessions refused')
  const late = await a.acquire('a', 'incremental', response(), 'c')
  late()
  t.pass('the heavy request of a session already started is still served')
  a.refuseAll()
  await t.rejects(a.acquire('a', 'incremental', response(), 'c'), { message: 'server is restarting; try again in a few seconds' }, 'closing: all refused')
})

t.test('the client key: a user by name, an anonymous caller by address', async (t) => {
  t.equal(admissionClient({ kind: 'user', name: 'ada' }, '10.0.0.1'), 'user:ada')
  t.equal(admissionClient({ kind: 'anonymous' }, '10.0.0.1'), 'addr:10.0.0.1')
})

t.test('file transfers: a class of their own, bounded in all, per repo and per client, refused at once, never taking a heavy slot', async (t) => {
  const refused: string[] = []
  const a = new Admission(limits, { rejected: (reason, cls) => refused.push(`${reason}:${cls}`) })
  const heavy = [await a.acquire('r', 'full', response(), 'c1'), await a.acquire('r', 'full', response(), 'c2')]
  const t1 = a.acquireTransfer('r', 'c1')
  const t2 = a.acquireTransfer('r', 'c1')
  t.throws(() => a.acquireTransfer('r', 'c1'), /too many downloads/, 'a client holds at most transferClientLimit')
  const t3 = a.acquireTransfer('r', 'c2')
  t.throws(() => a.acquireTransfer('r', 'c3'), /too many downloads/, 'a repo at most transferRepoLimit')
  const t4 = a.acquireTransfer('other', 'c3')
  t.throws(() => a.acquireTransfer('third', 'c4'), /too many downloads/, 'and all of them at most transferLimit')
  t.equal(a.active, 2, 'no heavy slot taken by a transfer')
  t.equal(a.transfers, 4)
  t.notOk(a.idle, 'a transfer in flight: not idle (a drain waits for it)')
  t1()
  t1()
  t.equal(a.transfers, 3, 'a release counts once')
  const t5 = a.acquireTransfer('r', 'c1')
  for (const r of [t2, t3, t4, t5, ...heavy]) r()
  t.ok(a.idle)
  t.same(refused, ['queue_full:transfer', 'queue_full:transfer', 'queue_full:transfer'])
  a.refuseAll()
  t.throws(() => a.acquireTransfer('r', 'c1'), /restarting/, 'refused while the worker closes')
})
