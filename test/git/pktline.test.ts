import t from 'tap'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { PassThrough } from 'node:stream'
import { FLUSH, pkt, PktDecoder, PktFramingError, PktLineChecker, splitPackets } from '../../src/git/pktline.js'
import { ReportRewriter } from '../../src/git/report-status.js'

/** Feeds `bytes` in pieces of `size` and returns what came out. */
async function through(stage: NodeJS.ReadWriteStream, bytes: Buffer, size: number): Promise<Buffer> {
  const pieces: Buffer[] = []
  for (let i = 0; i < bytes.length; i += size) pieces.push(bytes.subarray(i, i + size))
  const out: Buffer[] = []
  const sink = new PassThrough()
  sink.on('data', (c: Buffer) => out.push(c))
  await pipeline(Readable.from(pieces), stage, sink)
  return Buffer.concat(out)
}

t.test('the decoder: whole packets or framing only, across any split', async (t) => {
  const bytes = Buffer.concat([pkt('want abc\n'), Buffer.from('0001'), pkt(Buffer.alloc(1000, 0x61)), FLUSH])
  for (const size of [1, 3, 7, 1000, bytes.length]) {
    const whole = new PktDecoder(true)
    const seen: number[] = []
    for (let i = 0; i < bytes.length; i += size) whole.feed(bytes.subarray(i, i + size), (p) => { seen.push(p.len) })
    t.same(seen, [13, 1, 1004, 0], `whole packets, split every ${size} bytes`)
    t.notOk(whole.midPacket)
    const framing = new PktDecoder(false)
    const lens: number[] = []
    for (let i = 0; i < bytes.length; i += size) framing.feed(bytes.subarray(i, i + size), (p) => { lens.push(p.len) })
    t.same(lens, [13, 1, 1004, 0], `framing only, split every ${size} bytes`)
  }
  t.same(splitPackets(bytes).map((p) => p.length), [13, 4, 1004, 4])
  t.throws(() => splitPackets(Buffer.from('000')), PktFramingError, 'a truncated header')
  t.throws(() => new PktDecoder(true).feed(Buffer.from('zzzz'), () => {}), { message: 'bad pkt-line: length is not hexadecimal' })
  t.throws(() => new PktDecoder(true).feed(Buffer.from('0003'), () => {}), { message: 'bad pkt-line length 3' })
  t.throws(() => new PktDecoder(false).feed(Buffer.from('fff1'), () => {}), { message: 'bad pkt-line length 65521' })
})

t.test('the framing check: commands mode stops at the flush, all mode checks every packet', async (t) => {
  const pack = Buffer.from('PACK\0\0\0\x02 not pkt-lines at all')
  const push = Buffer.concat([pkt('0'.repeat(40) + ' ' + '1'.repeat(40) + ' refs/heads/main\0report-status\n'), FLUSH, pack])
  t.same(await through(new PktLineChecker({ mode: 'commands' }), push, 5), push, 'the pack after the flush passes unchecked')
  await t.rejects(through(new PktLineChecker({ mode: 'all' }), push, 5), { code: 'VCS_BAD_REQUEST', message: 'bad pkt-line: length is not hexadecimal' }, 'all mode refuses what follows')
  await t.rejects(through(new PktLineChecker({ mode: 'all' }), pkt('want x\n').subarray(0, 6), 2), { message: 'truncated pkt-line in request body' })
  await t.rejects(through(new PktLineChecker({ mode: 'commands' }), pkt('x\n'), 2), { message: 'request body ends before the flush packet of its command list' })
  const probe = new PktLineChecker({ mode: 'all' })
  await through(probe, FLUSH, 4)
  t.ok(probe.isFlushProbe, 'a lone flush is git\'s probe')
  const refused = new PktLineChecker({ mode: 'all', onPacket: (p) => (p.toString().startsWith('command=object-info') ? new Error('not served') : undefined) })
  await t.rejects(through(refused, Buffer.concat([pkt('command=object-info\n'), FLUSH]), 3), { message: 'not served' }, 'onPacket refuses a packet whole, however it is split')
})

t.test('report-status: a declined ref gets our reason, with or without side-band, however git splits it', async (t) => {
  const reasons = (ref: string) => (ref === 'refs/heads/main' ? 'main is protected: no force-push' : undefined)
  const report = Buffer.concat([pkt('unpack ok\n'), pkt('ng refs/heads/main hook declined\n'), pkt('ng refs/heads/dev hook declined\n'), pkt('ok refs/heads/x\n'), FLUSH])
  const expected = Buffer.concat([pkt('unpack ok\n'), pkt('ng refs/heads/main main is protected: no force-push\n'), pkt('ng refs/heads/dev hook declined\n'), pkt('ok refs/heads/x\n'), FLUSH])
  for (const size of [1, 5, report.length]) t.same(await through(new ReportRewriter(reasons), report, size), expected, `plain, split every ${size}`)

  // side-band-64k: the report inside band-1 packets, split in the middle of an inner line; progress on band 2 untouched
  const band = (n: number, data: Buffer) => pkt(Buffer.concat([Buffer.from([n]), data]))
  const cut = 17
  const sideband = Buffer.concat([band(2, Buffer.from('progress\n')), band(1, report.subarray(0, cut)), band(1, report.subarray(cut)), FLUSH])
  const out = await through(new ReportRewriter(reasons), sideband, 9)
  const inner = Buffer.concat(splitPackets(out).filter((p) => p.length > 5 && p[4] === 1).map((p) => p.subarray(5)))
  t.same(inner, expected, 'the reassembled band-1 stream carries the rewritten report')
  t.same(splitPackets(out)[0], band(2, Buffer.from('progress\n')), 'band 2 passes as it was')
  t.ok(out.subarray(-4).equals(FLUSH))

  const garbage = Buffer.from('this is not pkt-line output\n')
  t.same(await through(new ReportRewriter(reasons), garbage, 4), garbage, 'output that is not pkt-lines passes unchanged')
  t.same(await through(new ReportRewriter(reasons), Buffer.concat([pkt(`ng refs/heads/main non-fast-forward\n`), FLUSH]), 3), Buffer.concat([pkt('ng refs/heads/main non-fast-forward\n'), FLUSH]), 'git\'s own reasons stay')
})
