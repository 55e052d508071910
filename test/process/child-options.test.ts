import t from 'tap'
import type { Socket } from 'node:net'
import { runToCompletion, spawnChild, type SpawnOptions } from '../../src/process/child.js'
import { BufferPool } from '../../src/process/pooled-read.js'

// Where a child's stdout goes is one choice, checked by the compiler: each entry below is a
// combination that cannot be written, and tsc fails the build if one of them could.
export function invalidCombinations(socket: Socket, pool: BufferPool): SpawnOptions[] {
  const base = { env: {}, killGraceMs: 0 }
  return [
    // @ts-expect-error pooled chunks come through the spawn helper only
    { ...base, stdout: { pool } },
    // @ts-expect-error nor can a pooled spawn go direct
    { ...base, viaHelper: false, stdout: { pool } },
    // @ts-expect-error a relay started ahead is the helper's
    { ...base, viaHelper: false, stdout: { socket, prestart: true } },
    // @ts-expect-error Node's IPC channel is for direct spawns only
    { ...base, viaHelper: true, ipc: true },
  ]
}

t.test('a direct spawn with a piped stdout gives its output; the result types follow the options', async (t) => {
  const child = spawnChild('sh', ['-c', 'printf hello'], { env: { PATH: process.env.PATH ?? '' }, killGraceMs: 1000 })
  const { status, stdout } = await runToCompletion(child)
  t.equal(status.code, 0)
  t.equal(stdout.toString(), 'hello')
  t.equal(child.stdoutChunks, undefined, 'no pooled chunks for a pipe')
  t.equal(child.report, undefined, 'no report without a socket')
})
