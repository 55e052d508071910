import t from 'tap'
import { parseAuthorization } from '../../src/auth/credentials.js'
import { hashPassword, verifyPassword, PasswordVerifier } from '../../src/auth/password.js'
import { refPattern } from '../../src/auth/protection.js'

const basic = (s: string) => `Basic ${Buffer.from(s, 'utf8').toString('base64')}`

t.test('Basic and Bearer per RFC 7617 / 6750', async (t) => {
  t.same(parseAuthorization(basic('ada:secret')), { scheme: 'basic', username: 'ada', secret: 'secret' })
  t.same(parseAuthorization(basic('ada:pa:ss:word')), { scheme: 'basic', username: 'ada', secret: 'pa:ss:word' }, 'split at the first colon')
  t.same(parseAuthorization(basic('ada:')), { scheme: 'basic', username: 'ada', secret: '' })
  t.same(parseAuthorization(basic('Zoë李:пароль')), { scheme: 'basic', username: 'Zoë李', secret: 'пароль' }, 'unicode')
  t.same(parseAuthorization(`bAsIc ${Buffer.from('a:b').toString('base64')}`), { scheme: 'basic', username: 'a', secret: 'b' }, 'scheme is case-insensitive')
  t.same(parseAuthorization('Bearer vcsw_abc-_DEF'), { scheme: 'bearer', secret: 'vcsw_abc-_DEF' })
  t.equal(parseAuthorization(undefined), undefined)
  t.equal(parseAuthorization(''), undefined)
})

t.test('malformed headers are all the same answer', async (t) => {
  const bad = [
    'Basic !!!notbase64',
    'Basic YWRh', // "ada": no colon
    basic(':secret'), // empty user
    basic('ada\u0000:x'),
    basic('ada:x\ny'),
    'Basic ',
    'Basic',
    `Basic ${'A'.repeat(10 * 1024)}`,
    'Digest username="ada"',
    'Negotiate abc',
    'Bearer',
    'Bearer a b',
    'Bearer {json}',
    'ada:secret',
    `Basic ${Buffer.from([0x61, 0x3a, 0xff, 0xfe]).toString('base64')}`, // invalid UTF-8
  ]
  for (const h of bad) t.equal(parseAuthorization(h), 'malformed', JSON.stringify(h.slice(0, 40)))
})

t.test('scrypt hashes carry their parameters and verify in constant time', async (t) => {
  const low = { N: 1024, r: 8, p: 1 }
  const h = await hashPassword('correct horse', low)
  t.match(h, /^scrypt\$1024\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/)
  t.ok(await verifyPassword('correct horse', h))
  t.notOk(await verifyPassword('correct horsE', h))
  t.notOk(await verifyPassword('x', 'plain-text'), 'a malformed hash never verifies')
  t.notOk(await verifyPassword('x', 'scrypt$99999999$8$1$AA==$AA=='), 'absurd parameters are refused')
  const h2 = await hashPassword('correct horse', low)
  t.not(h, h2, 'salted')
})

t.test('protected ref patterns', async (t) => {
  t.ok(refPattern('main').test('refs/heads/main'))
  t.notOk(refPattern('main').test('refs/heads/mainline'))
  t.ok(refPattern('release/*').test('refs/heads/release/1.x'))
  t.notOk(refPattern('release/*').test('refs/heads/release/1/x'))
  t.ok(refPattern('refs/tags/**').test('refs/tags/v1/rc/2'))
  t.notOk(refPattern('ma.n').test('refs/heads/main'), 'dots are literal')
})

t.test('the password verifier: bounded concurrency, a bounded queue, one derivation per credential at a time', async (t) => {
  const pending: { password: string; done: (ok: boolean) => void }[] = []
  const derive = (password: string) => new Promise<boolean>((resolve) => pending.push({ password, done: resolve }))
  const v = new PasswordVerifier({ concurrency: 2, queueLimit: 2, derive })
  const results: Promise<boolean>[] = []
  for (let i = 0; i < 4; i++) results.push(v.verify(`k${i}`, `p${i}`, 'stored'))
  await new Promise((r) => setImmediate(r))
  t.equal(pending.length, 2, 'two derivations run at once')
  t.equal(v.queued, 2, 'two wait')
  await t.rejects(v.verify('k9', 'p9', 'stored'), { code: 'VCS_PASSWORD_QUEUE_FULL' }, 'a fifth is refused at once, not queued')
  const same = [v.verify('k0', 'p0', 'stored'), v.verify('k0', 'p0', 'stored')]
  t.equal(v.queued, 2, 'the same credential again joins the derivation in flight')
  pending[0]!.done(true)
  t.same(await Promise.all([results[0], ...same]), [true, true, true], 'and shares its result')
  await new Promise((r) => setImmediate(r))
  t.equal(pending.length, 3, 'a freed slot starts the next waiter')
  pending[1]!.done(false)
  pending[2]!.done(true)
  await new Promise((r) => setImmediate(r))
  pending[3]!.done(false)
  t.same(await Promise.all(results), [true, false, true, false])
  t.equal(v.queued, 0)
  // once done, the same credential derives again (no result is kept here: that is the cache's job)
  const again = v.verify('k0', 'p0', 'stored')
  await new Promise((r) => setImmediate(r))
  t.equal(pending.length, 5)
  pending[4]!.done(true)
  t.equal(await again, true)
})
