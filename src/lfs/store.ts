/**
 * Git LFS objects: the content store. Objects live in their repository, under
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
import { createHash, randomBytes, type Hash } from 'node:crypto'
import { createReadStream, type ReadStream } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import type { Readable } from 'node:stream'
import { WRITE_POOL } from '../process/pooled-read.js'
import type { SweptKind } from '../git/quarantine.js'

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

/** Bytes written between two early `fdatasync`s of an upload: the disk works while the body arrives. */
const SYNC_EVERY = 32 * 1024 * 1024
/** buffers of an upload being written at once; past that, reading the body waits */
const WRITES_IN_FLIGHT = 1

/**
 * Receives `body` into `fh`: hashed as it arrives, gathered into 256 KiB pooled buffers written
 * at their offsets (a quarter of the writes of one per 64 KiB chunk), at most WRITES_IN_FLIGHT
 * of them at once (reading waits: backpressure), an early `fdatasync` every SYNC_EVERY bytes
 * so the last one has little left. Fails as soon as more than `limit` bytes came. Resolves with
 * the byte count once everything is written and synced.
 */
async function receive(body: Readable, fh: FileHandle, limit: number, hash: Hash): Promise<number> {
  let received = 0
  let buf: Buffer | undefined
  let fill = 0
  let offset = 0
  let unsynced = 0
  const pending: Promise<void>[] = []
  const syncs: Promise<void>[] = []
  const write = (b: Buffer, len: number, at: number): Promise<void> => (async () => {
    try {
      for (let done = 0; done < len;) done += (await fh.write(b, done, len - done, at + done)).bytesWritten
    } finally {
      WRITE_POOL.give(b)
    }
  })()
  const flush = async (): Promise<void> => {
    if (!buf || fill === 0) return
    const p = write(buf, fill, offset)
    p.catch(() => {}) // awaited below; never unhandled
    pending.push(p)
    offset += fill
    unsynced += fill
    buf = undefined
    fill = 0
    if (unsynced >= SYNC_EVERY) {
      unsynced = 0
      const s = p.then(() => fh.datasync())
      s.catch(() => {})
      syncs.push(s)
    }
    while (pending.length >= WRITES_IN_FLIGHT) await pending.shift()
  }
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      received += chunk.length
      if (received > limit) throw new LfsObjectError(`the body is longer than the ${limit} bytes announced`, 'size')
      hash.update(chunk)
      for (let at = 0; at < chunk.length;) {
        buf ??= WRITE_POOL.take()
        const n = chunk.copy(buf, fill, at)
        fill += n
        at += n
        if (fill === buf.length) await flush()
      }
    }
    await flush()
    await Promise.all(pending)
    await Promise.all(syncs)
    await fh.datasync()
    return received
  } finally {
    if (buf) WRITE_POOL.give(buf)
    await Promise.allSettled([...pending, ...syncs])
  }
}

/** An upload's temp files, `<repo>/lfs/tmp/*`: what the sweeper may remove once stale (an upload killed with -9 leaves its own). */
export const LFS_UPLOAD_TEMPS: SweptKind = {
  candidates: async (repoDir) => {
    const dir = path.join(repoDir, 'lfs', 'tmp')
    return (await readdir(dir).catch(() => [] as string[])).map((n) => path.join(dir, n))
  },
  removed: 'removed a stale Git LFS upload temp file',
  field: 'temp_file',
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
    const hash = createHash('sha256')
    try {
      const fh = await open(tmp, 'wx')
      let received: number
      try {
        received = await receive(body, fh, size, hash)
      } finally {
        await fh.close()
      }
      if (received !== size) throw new LfsObjectError(`the body is ${received} bytes, not the ${size} announced`, 'size')
      if (hash.digest('hex') !== oid) throw new LfsObjectError('the body does not hash to its oid', 'hash')
      // on disk (receive synced it) before it is named: a crash after the rename leaves no hole under the name
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
