import t from 'tap'
import { LoginThrottle } from '../../src/auth/throttle.js'

t.test('the login throttle: blocked at the limit within the window, free after it; at most maxKeys pairs kept, the least recent dropped', async (t) => {
  const th = new LoginThrottle(2, 60_000, 3)
  const now = 1_000_000
  th.fail('ana', '10.0.0.1', now)
  t.equal(th.retryAfter('ana', '10.0.0.1', now), 0, 'one failure: not yet')
  th.fail('ana', '10.0.0.1', now + 1000)
  t.equal(th.retryAfter('ana', '10.0.0.1', now + 2000), 58, 'two: blocked until the first leaves the window')
  t.equal(th.retryAfter('ana', '10.0.0.2', now + 2000), 0, 'per address')
  t.equal(th.retryAfter('ana', '10.0.0.1', now + 61_000), 0, 'free once the window passed')

  // bounded: a fourth pair pushes out the least recently used
  th.fail('a', 'x', now)
  th.fail('a', 'x', now)
  for (const user of ['b', 'c', 'd']) th.fail(user, 'x', now)
  t.equal(th.retryAfter('a', 'x', now), 0, 'the oldest pair was dropped: the map never holds more than maxKeys')
})
