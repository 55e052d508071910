import t from 'tap'
import { CredentialCache } from '../../src/auth/cache.js'

/** How many timers `fn` arms. */
function timersArmedBy(fn: () => void): number {
  const real = globalThis.setTimeout
  let armed = 0
  globalThis.setTimeout = ((...args: Parameters<typeof real>) => { armed++; return real(...args) }) as typeof real
  try { fn() } finally { globalThis.setTimeout = real }
  return armed
}

t.test('the credential cache: a warm lookup arms no timer; entries still expire on time and are refreshed in their last quarter', async (t) => {
  // the cache's clock, moved by the test: no real time passes
  const clock = { ms: 1_800_000_000_000, now() { return this.ms } }
  const advance = (ms: number) => { clock.ms += ms }
  const cache = new CredentialCache(2000, 10_000, clock)
  const key = cache.keyFor('Basic YWxpY2U6cHc=')
  t.not(key, cache.keyFor('Basic Ym9iOnB3'), 'a key per header')
  t.notMatch(key, /YWxpY2U6cHc/, 'the header itself is not the key')
  cache.set(key, { id: 1, name: 'alice', via: 'password' })

  // lru-cache's default keeps its clock with a setTimeout re-armed by the first lookup of every
  // millisecond, which cost a warm authenticated request more than everything else it does (bench:auth)
  let armed = 0
  for (let i = 0; i < 20; i++) {
    armed += timersArmedBy(() => { cache.get(key); cache.dueForRefresh(key) })
    advance(2)
  }
  t.equal(armed, 0, 'lookups over 40 ms of its clock armed no timer')
  cache.set(key, { id: 1, name: 'alice', via: 'password' }) // its life starts again: the timing below from here
  t.same(cache.get(key), { id: 1, name: 'alice', via: 'password' }, 'found while fresh')
  t.equal(cache.dueForRefresh(key), false, 'not due early in its life')

  advance(1600)
  t.equal(cache.dueForRefresh(key), true, 'due in the last quarter of its TTL')
  t.ok(cache.get(key), 'still served meanwhile')
  advance(500)
  t.equal(cache.get(key), undefined, 'gone once the TTL passed')

  // an entry never outlives its credential
  const token = cache.keyFor('Bearer x')
  cache.set(token, { id: 2, name: 'bob', via: 'token', expiresAt: clock.now() + 40 })
  t.equal(cache.dueForRefresh(token), false, 'a credential expiring first is not refreshed ahead')
  advance(70)
  t.equal(cache.get(token), undefined, 'expired with the token')
})
