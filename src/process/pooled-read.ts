/**
 * Bulk bytes through the worker without fresh memory per chunk. A stream that reads a socket
 * or a file allocates a new buffer for every read: 81 MB of pack is 1,300 buffers of 64 KiB,
 * which V8 counts as external memory, and each ~12-16 MB of it that lives past a scavenge (a
 * chunk waiting in a slow client's socket queue) starts a full mark-compact of the worker's
 * heap. perf on a large clone: major GC was a quarter of the worker's
 * CPU samples; a 31 MB clone bundle the same. Here reads land in buffers taken from a pool and
 * each goes back once the response has written it (its write callback), so a download in
 * steady state allocates nothing.
 */
import net from 'node:net'
import type { FileHandle } from 'node:fs/promises'
import type { Writable } from 'node:stream'

/** Reusable read buffers of one size. A buffer that is never given back is simply collected. */
export class BufferPool {
  private readonly free: Buffer[] = []
  /**
   * @param size bytes per buffer: one read's most
   * @param keep free buffers kept for later; past that, a returned buffer is let go
   */
  constructor(readonly size: number, private readonly keep: number) {}

  /** free buffers held now */
  get available(): number {
    return this.free.length
  }

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size)
  }

  /** `b` must not be used by the caller after this; each buffer is given back at most once */
  give(b: Buffer): void {
    if (b.length === this.size && this.free.length < this.keep) this.free.push(b)
  }
}

/**
 * The worker's one pool for bulk reads: 256 KiB takes several of git's 64 KiB side-band packets
 * in one read. A download holds one or two at a time (the response's backpressure pauses the
 * reads), so 16 kept cover a storm's steady state and bound what stays resident (4 MiB).
 */
export const READ_POOL = new BufferPool(256 * 1024, 16)

/**
 * Files read for downloads (clone bundles, LFS objects): a file gives as much as is asked, so
 * bigger reads mean fewer syscalls and writes; 1 MiB each, 8 kept (8 MiB resident at most).
 */
export const FILE_POOL = new BufferPool(1024 * 1024, 8)

/**
 * Uploads gathered for writing (Git LFS objects): 256 KiB takes four of a request body's 64 KiB
 * chunks per write; an upload holds at most two (one being written, one filling), so 16 kept cover 8 uploads at once without
 * a fresh buffer each time (4 MiB resident at most).
 */
export const WRITE_POOL = new BufferPool(256 * 1024, 16)

/** Where pooled chunks go. */
export interface ChunkSink {
  /** a chunk; `release()` once it is written (or dropped); false pauses the reads until `resume()` */
  data(chunk: Buffer, release: () => void): boolean
  /** no more chunks: the end, or `err` (a socket's writer reports its failure elsewhere: its exit status) */
  end(err?: Error): void
}

/** A source of pooled chunks: nothing flows until `start`. */
export interface ChunkSource {
  start(sink: ChunkSink): void
  resume(): void
  /** nobody reads any more (a response cut short): close it, so the writer sees EPIPE */
  destroy(): void
}

/** A `release` that gives `buf` back once, however often it is called. */
function releaser(pool: BufferPool, buf: Buffer): () => void {
  let done = false
  return () => {
    if (done) return
    done = true
    pool.give(buf)
  }
}

/**
 * Connects to a unix socket (`path`, abstract namespace allowed) and reads it into pooled
 * buffers. `onConnect` runs once connected (to write a tag); `onClose` when the socket closed.
 */
export function pooledSocket(path: string, pool: BufferPool, hooks: { onConnect(s: net.Socket): void; onClose(): void }): ChunkSource {
  let sink: ChunkSink | undefined
  let ended = false
  const finish = (): void => {
    if (ended) return
    ended = true
    sink?.end()
  }
  const socket = net.connect({
    path,
    onread: {
      buffer: () => pool.take(),
      callback: (n: number, buf: Buffer): boolean => {
        if (!sink) return false // cannot happen: paused until start
        return sink.data(buf.subarray(0, n), releaser(pool, buf))
      },
    },
  })
  socket.pause() // nothing is read before a sink is there
  socket.on('error', () => {}) // the other end's exit status tells the story
  socket.once('connect', () => hooks.onConnect(socket))
  socket.once('end', finish)
  socket.once('close', () => {
    finish()
    hooks.onClose()
  })
  return {
    start(s) {
      sink = s
      if (ended) s.end()
      else socket.resume()
    },
    resume: () => { if (!socket.destroyed) socket.resume() },
    destroy: () => socket.destroy(),
  }
}

/** Reads `length` bytes of `fh` from `position` into pooled buffers (a file download). */
export function pooledFile(fh: FileHandle, position: number, length: number, pool: BufferPool): ChunkSource {
  let wake: (() => void) | undefined
  let resumed = false
  let stopped = false
  const run = async (s: ChunkSink): Promise<void> => {
    let pos = position
    const end = position + length
    while (pos < end && !stopped) {
      const buf = pool.take()
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos)
      if (bytesRead === 0 || stopped) {
        pool.give(buf)
        if (bytesRead === 0) throw new Error('file shorter than expected')
        break
      }
      pos += bytesRead
      resumed = false
      // a sink may resume (or destroy) from inside `data`: then there is nothing to wait for
      if (!s.data(buf.subarray(0, bytesRead), releaser(pool, buf)) && !resumed && !stopped) await new Promise<void>((r) => { wake = r })
    }
  }
  return {
    start(s) {
      run(s).then(() => s.end(), (err: unknown) => s.end(err instanceof Error ? err : new Error(String(err))))
    },
    resume() {
      resumed = true
      const w = wake
      wake = undefined
      w?.()
    },
    destroy() {
      stopped = true
      this.resume()
    },
  }
}

/**
 * Ties a source to the response it feeds: reads resume when the response drains, and stop for
 * good when it closes (the client left). Returns what the sink's `data` does with each chunk:
 * written, its buffer given back once written; false while the response is full (the reads
 * pause; measured, that costs less than letting chunks queue in it) or gone.
 */
export function feedResponse(res: Writable, source: ChunkSource): (chunk: Buffer, release: () => void) => boolean {
  res.once('close', () => source.destroy())
  res.on('drain', () => source.resume())
  return (chunk, release) => {
    if (res.destroyed) {
      release()
      return false
    }
    return res.write(chunk, () => release())
  }
}
