/**
 * Git LFS objects (issue #16): the content store. Objects live in their repository, under
 * `<repo>/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>` (the layout git-lfs itself uses in a
 * client's `.git/lfs/objects`), so a pool on shared storage serves them from any worker and
 * a backup of the repos dir holds them. An upload streams into a temp file in `<repo>/lfs/tmp`
 * (the same filesystem, so the rename is atomic) while it is hashed and counted, and is renamed
 * into place only when its SHA-256 and size are the ones announced: a short, long or wrong body
 * leaves nothing behind. Two uploads of one oid at once both succeed and leave one file (the
 * same bytes renamed over each other). No object is ever held whole in memory.
 *
 * The worker talks to `LfsStore`, so an object store (S3 and the like) can be added later
 * behind the same few calls.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, type ReadStream } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import { Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** An LFS object id: SHA-256, 64 lowercase hex digits, nothing else (no `../`, no uppercase). */
export const OID = /^[0-9a-f]{64}$/

export function isOid(oid: unknown): oid is string {
  return typeof oid === 'string' && OID.test(oid)
}

/** Why an upload was not stored: the body did not match what was announced. */
export class LfsObjectError extends Error {
  constructor(message: string, readonly reason: 'size' | 'hash') {
    super(message)
    this.name = 'LfsObjectError'
  }
}

export interface LfsStore {
  /** the stored object's size, or undefined when it is not there */
  size(repoDir: string, oid: string): Promise<number | undefined>
  /** the object's bytes from `start` to `end` inclusive (a Range), or all of them */
  read(repoDir: string, oid: string, range?: { start: number; end: number }): ReadStream
  /**
   * Stores `body` as `oid` if it is exactly `size` bytes whose SHA-256 is `oid`; otherwise
   * throws LfsObjectError and stores nothing. A body that fails (client gone) stores nothing.
   */
  put(repoDir: string, oid: string, size: number, body: Readable): Promise<void>
}

/** Counts and hashes what passes; fails as soon as more than `limit` bytes came. */
class Measure extends Transform {
  readonly hash = createHash('sha256')
  bytes = 0
  constructor(private readonly limit: number) { super() }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length
    if (this.bytes > this.limit) return cb(new LfsObjectError(`the body is longer than the ${this.limit} bytes announced`, 'size'))
    this.hash.update(chunk)
    cb(null, chunk)
  }
}

/** The filesystem store: objects inside each repository. */
export class FsLfsStore implements LfsStore {
  pathOf(repoDir: string, oid: string): string {
    if (!isOid(oid)) throw new Error('not an LFS object id') // callers check first: this is the last guard
    return path.join(repoDir, 'lfs', 'objects', oid.slice(0, 2), oid.slice(2, 4), oid)
  }

  async size(repoDir: string, oid: string): Promise<number | undefined> {
    try {
      const s = await stat(this.pathOf(repoDir, oid))
      return s.isFile() ? s.size : undefined
    } catch {
      return undefined
    }
  }

  read(repoDir: string, oid: string, range?: { start: number; end: number }): ReadStream {
    return createReadStream(this.pathOf(repoDir, oid), { ...range, highWaterMark: 256 * 1024 })
  }

  async put(repoDir: string, oid: string, size: number, body: Readable): Promise<void> {
    const final = this.pathOf(repoDir, oid)
    const tmpDir = path.join(repoDir, 'lfs', 'tmp')
    await mkdir(tmpDir, { recursive: true })
    const tmp = path.join(tmpDir, `${oid}.${process.pid}.${randomBytes(6).toString('hex')}`)
    const measure = new Measure(size)
    try {
      await pipeline(body, measure, createWriteStream(tmp, { flags: 'wx' }))
      if (measure.bytes !== size) throw new LfsObjectError(`the body is ${measure.bytes} bytes, not the ${size} announced`, 'size')
      if (measure.hash.digest('hex') !== oid) throw new LfsObjectError('the body does not hash to its oid', 'hash')
      // on disk before it is named: a crash after the rename must not leave a hole under the name
      const fh = await open(tmp, 'r')
      try { await fh.sync() } finally { await fh.close() }
      await mkdir(path.dirname(final), { recursive: true })
      await rename(tmp, final)
    } catch (err) {
      await rm(tmp, { force: true })
      throw err
    }
  }

  /** Every stored object of a repo, re-hashed: the ones whose bytes are not their name. */
  async *check(repoDir: string): AsyncGenerator<{ oid: string; ok: boolean; size: number }> {
    const root = path.join(repoDir, 'lfs', 'objects')
    let firsts: string[]
    try { firsts = (await readdir(root)).sort() } catch { return }
    for (const a of firsts) {
      for (const b of (await readdir(path.join(root, a)).catch(() => [])).sort()) {
        for (const name of (await readdir(path.join(root, a, b)).catch(() => [])).sort()) {
          const file = path.join(root, a, b, name)
          const hash = createHash('sha256')
          let size = 0
          for await (const chunk of createReadStream(file, { highWaterMark: 256 * 1024 })) {
            size += (chunk as Buffer).length
            hash.update(chunk as Buffer)
          }
          yield { oid: name, ok: isOid(name) && name.startsWith(a + b) && hash.digest('hex') === name, size }
        }
      }
    }
  }
}
