import t from 'tap'
import { randomBytes } from 'node:crypto'
import { writeFile, open } from 'node:fs/promises'
import path from 'node:path'
import { BufferPool, pooledFile, type ChunkSource } from '../../src/process/pooled-read.js'

/** Reads a source to its end, releasing each chunk at once or after a pause; returns the bytes or the error. */
function drain(source: ChunkSource, holdMs = 0): Promise<{ bytes: Buffer; err?: Error; chunks: number }> {
  const parts: Buffer[] = []
  let chunks = 0
  return new Promise((resolve) => {
    source.start({
      data(chunk, release) {
        chunks++
        parts.push(Buffer.from(chunk)) // a copy: the pooled buffer is about to be reused
        if (!holdMs) {
          release()
          release() // twice: must not put the buffer in the pool twice
          return true
        }
        setTimeout(() => { release(); source.resume() }, holdMs)
        return false
      },
      end(err) { resolve({ bytes: Buffer.concat(parts), err, chunks }) },
    })
  })
}

t.test('a pool keeps at most `keep` buffers, of its own size only', async (t) => {
  const pool = new BufferPool(1024, 2)
  const [a, b, c] = [pool.take(), pool.take(), pool.take()]
  t.equal(a.length, 1024)
  pool.give(a); pool.give(b); pool.give(c)
  t.equal(pool.available, 2, 'the third is let go')
  pool.give(Buffer.alloc(10))
  t.equal(pool.available, 2, 'a foreign size is never kept')
  t.equal(pool.take(), b, 'a kept buffer is used again')
})

t.test('a file range read into pooled buffers comes out whole, a released buffer is reused once', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'f')
  const data = randomBytes(1_000_000)
  await writeFile(file, data)
  const pool = new BufferPool(64 * 1024, 4)
  const fh = await open(file)
  t.teardown(() => fh.close())
  const all = await drain(pooledFile(fh, 0, data.length, pool))
  t.equal(all.err, undefined)
  t.ok(all.bytes.equals(data), 'every byte, in order')
  t.equal(all.chunks, Math.ceil(data.length / (64 * 1024)))
  t.equal(pool.available, 1, 'one buffer went round: released twice, kept once')
  const range = await drain(pooledFile(fh, 123_456, 300_000, pool), 3)
  t.ok(range.bytes.equals(data.subarray(123_456, 423_456)), 'a Range: exactly its bytes, with the reader pausing')
  const short = await drain(pooledFile(fh, 900_000, 200_000, pool))
  t.match(short.err?.message, /shorter than expected/, 'a file cut under the reader is an error, not a short success')
  t.equal(short.bytes.length, 100_000)
})

t.test('destroy stops a file source mid-way and ends it', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'f')
  await writeFile(file, randomBytes(512 * 1024))
  const fh = await open(file)
  t.teardown(() => fh.close())
  const source = pooledFile(fh, 0, 512 * 1024, new BufferPool(64 * 1024, 2))
  const got = await new Promise<number>((resolve) => {
    let n = 0
    source.start({
      data(_chunk, release) { n++; release(); if (n === 2) source.destroy(); return n < 2 },
      end() { resolve(n) },
    })
  })
  t.equal(got, 2, 'no chunk after destroy')
})
