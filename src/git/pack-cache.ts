/**
 * The pack-objects cache: identical pack-objects runs computed once. git upload-pack
 * hands its pack-objects call to `uploadpack.packObjectsHook` (honoured from `-c`, never from
 * a repo's own config); the worker's hook program (src/git/hook.c; a Node hook cost more CPU to
 * start than the pack it saved, bench:storm) posts the call to the hook service on loopback
 * (hook-service.ts), under the session of one upload-pack run; this cache answers it:
 *
 * - 204: run pack-objects yourself (a key seen for the first time: most packs are asked for
 *   once, and are not worth the disk; the cache stepping aside);
 * - 200 and the pack: a finished entry from disk (`hit`), or a production in progress followed
 *   as it is written (`miss` for the request that started it, `follow` for the others): one
 *   pack-objects run per key at a time. A reader that leaves does not stop it; a run that fails
 *   removes its entry and every reader's connection is cut before the last chunk, so the hook fails and upload-pack reports
 *   git's error: never a truncated pack presented as whole.
 *
 * The key covers what decides the bytes: the repository, pack-objects' arguments and the whole of
 * its stdin (wants, haves, shallow lines); nothing per user. Objects are immutable, so an entry
 * is correct forever; `maxAgeMs` and `maxBytes` bound the disk, not correctness.
 */
import type http from 'node:http'
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs'
import { open, readFile, rename, rm, stat, statfs, writeFile, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { LRUCache } from 'lru-cache'
import type { FastifyBaseLogger } from 'fastify'
import { spawnChild } from '../process/child.js'
import { readHookBody, type HookService } from './hook-service.js'

export type PackCacheOutcome = 'hit' | 'miss' | 'follow' | 'off'

export interface PackCacheOptions {
  dir: string
  /** the service the hook program calls (hook-service.ts): the cache answers its pack-objects calls */
  hooks: HookService
  gitBin: string
  env: Record<string, string>
  maxAgeMs: number
  maxBytes: number
  /** a key is written to disk on this occurrence (2: the second time it is asked for) */
  writeOnOccurrence: number
  /** free bytes the cache never writes below */
  diskFloorBytes: number
  /**
   * pack-objects runs for the cache at once; past it, requests run their own (bound to their
   * client and admission slot). A run outlives a client that leaves, so without this bound a
   * client could start runs and go, outside admission.
   */
  maxProductions: number
  /** largest pack-objects stdin accepted from the hook */
  maxInputBytes: number
  killGraceMs: number
  nice: number
  /** start pack-objects through the spawn helper (config spawnHelper) */
  viaHelper: boolean
  log: FastifyBaseLogger
}

/** progress text kept with an entry (its tail): it travels in a header */
const MAX_PROGRESS = 6 * 1024

/** The flags upload-pack passes to pack-objects (git 2.39, upload-pack.c); anything else is refused. */
const FLAGS = new Set(['--revs', '--thin', '--stdout', '--progress', '--delta-base-offset', '--include-tag', '--shallow', '--keep-true-parents', '--no-reuse-delta'])
const VALUED = /^--(filter|uri-protocol)=[A-Za-z0-9:+._-]+$/

interface Session {
  onOutcome: (outcome: PackCacheOutcome) => void
}

/** what an overflowed production holds in memory for its readers at most before pack-objects waits for them */
const MEMORY_WINDOW = 4 * 1024 * 1024

class Production {
  /** bytes pack-objects produced so far */
  size = 0
  /** of those, the bytes in the temp file; the rest are in `memory` (an overflowed production) */
  onDisk = 0
  readonly stderr: Buffer[] = []
  done = false
  failed = false
  /**
   * The cache had no room left for it: it is no entry any more, takes no new reader, and what
   * pack-objects writes from now on goes to its readers from memory (at most MEMORY_WINDOW ahead
   * of the slowest), never to disk.
   */
  overflowed = false
  private readonly memory: Buffer[] = []
  /** the offset of memory[0] in the pack */
  private memoryStart = 0
  private memoryBytes = 0
  /** each reader's offset */
  private readonly readers = new Map<symbol, number>()
  /** pack-objects' output paused until the readers take what memory holds */
  onRoom: (() => void) | undefined
  private waiters: (() => void)[] = []
  constructor(readonly tmp: string, readonly final: string) {}

  join(): symbol {
    const id = Symbol('reader')
    this.readers.set(id, 0)
    return id
  }

  leave(id: symbol): void {
    if (!this.readers.delete(id)) return
    this.trim()
    this.notify()
  }

  /** resolves once no reader is left */
  async finishedReading(): Promise<void> {
    while (this.readers.size) await this.changed()
  }

  /** keeps a chunk for the readers; false when memory is full (pack-objects should wait) */
  keep(c: Buffer): boolean {
    if (!this.memory.length) this.memoryStart = this.size // the next byte's offset
    this.memory.push(c)
    this.memoryBytes += c.length
    this.size += c.length
    return this.memoryBytes < MEMORY_WINDOW
  }

  /** the bytes a reader at `offset` (past the disk's part) gets next, and notes where it is */
  fromMemory(id: symbol, offset: number): Buffer | undefined {
    let at = this.memoryStart
    for (const c of this.memory) {
      if (offset < at + c.length) {
        this.readers.set(id, at + c.length)
        this.trim()
        return c.subarray(offset - at)
      }
      at += c.length
    }
    return undefined
  }

  /** drops what every reader has taken; lets pack-objects go on once there is room */
  private trim(): void {
    const slowest = Math.min(...this.readers.values(), this.size)
    while (this.memory.length && this.memoryStart + this.memory[0]!.length <= slowest) {
      const c = this.memory.shift()!
      this.memoryStart += c.length
      this.memoryBytes -= c.length
    }
    if (this.memoryBytes < MEMORY_WINDOW && this.onRoom) {
      const go = this.onRoom
      this.onRoom = undefined
      go()
    }
  }

  /** where memory starts: bytes below it are on disk */
  get memoryFrom(): number {
    return this.overflowed ? this.onDisk : this.size
  }
  notify(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }
  /** resolves on the next change; callers check the state first, in the same tick */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve))
  }
}

export interface PackCacheStats {
  hits: number
  misses: number
  follows: number
  bytesServed: number
  evictions: number
  failures: number
  /** productions that found the cache full and were served from memory, not kept */
  overflows: number
}

export class PackObjectsCache {
  private readonly producing = new Map<string, Production>()
  private readonly seen: LRUCache<string, number>
  readonly stats: PackCacheStats = { hits: 0, misses: 0, follows: 0, bytesServed: 0, evictions: 0, failures: 0, overflows: 0 }
  /** why the cache is stepping aside (an unwritable dir), for the health report; undefined when fine */
  degraded: string | undefined
  private sweptAt = 0
  /** bytes of the finished entries on disk (as last counted) and of the productions' temp files: never past maxBytes together */
  private finishedBytes = 0
  private writingBytes = 0

  constructor(private readonly opts: PackCacheOptions) {
    // 100,000 at most, counted through maxSize: `max` would preallocate every slot (throttle.ts)
    this.seen = new LRUCache({ maxSize: 100_000, sizeCalculation: () => 1, ttl: opts.maxAgeMs, ttlResolution: 0 })
    try {
      mkdirSync(opts.dir, { recursive: true, mode: 0o700 })
    } catch (err) {
      this.degraded = `cache dir unusable: ${(err as Error).message}`
    }
    this.finishedBytes = this.entryCount().bytes
  }

  /** Answers the hook program's pack-objects calls from now on. */
  start(): void {
    this.opts.hooks.route<Session & { repoDir: string }>('pack-objects', (req, res, session) => this.handle(req, res, session))
  }

  /**
   * Tries the cache dir (create, write, remove a probe file): clears or sets `degraded`. The
   * health checks call it, so a dir that comes back (space freed, permissions fixed) is used again.
   */
  async probe(): Promise<string> {
    const file = path.join(this.opts.dir, `.probe-${process.pid}`)
    try {
      mkdirSync(this.opts.dir, { recursive: true, mode: 0o700 })
      await writeFile(file, 'probe\n')
      await rm(file, { force: true })
      this.degraded = undefined
    } catch (err) {
      this.degraded = `cache dir not writable: ${(err as Error).message.split('\n')[0]}`
    }
    const { entries, bytes } = this.entryCount()
    return this.degraded ? `degraded (clones served directly): ${this.degraded}` : `${entries} entries, ${Math.round(bytes / 1048576)} MiB`
  }

  /** A session for one upload-pack in `repoDir`: the environment and `-c` setting its child needs. */
  open(repoDir: string, onOutcome: (o: PackCacheOutcome) => void): { env: Record<string, string>; config: string[]; close: () => void } {
    const session = this.opts.hooks.open('fetch', repoDir, { repoDir, onOutcome })
    return { env: session.env, config: [`uploadpack.packObjectsHook=${this.opts.hooks.hookPath('pack-objects')}`], close: session.close }
  }

  entryCount(): { entries: number; bytes: number } {
    let entries = 0
    let bytes = 0
    try {
      for (const name of readdirSync(this.opts.dir)) {
        if (!name.endsWith('.pack')) continue
        entries++
        bytes += statSync(path.join(this.opts.dir, name), { throwIfNoEntry: false })?.size ?? 0
      }
    } catch { /* unreadable: counted as empty */ }
    return { entries, bytes }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, session: Session & { repoDir: string }): Promise<void> {
    // the hook sends "$*": git's arguments joined by spaces (flags have none; the one empty
    // argument, after --shallow-file, shows as two spaces)
    const args = checkArgs(String(req.headers['x-vcs-args'] ?? '').split(' '))
    if (!args) {
      res.writeHead(400, { connection: 'close' }).end('unexpected pack-objects arguments\n')
      return
    }
    const input = await readHookBody(req, this.opts.maxInputBytes)
    if (!input) {
      res.writeHead(400, { connection: 'close' }).end('pack-objects input too large\n')
      return
    }
    const direct = (outcome: PackCacheOutcome): void => {
      session.onOutcome(outcome)
      res.writeHead(204).end()
    }
    if (this.degraded) return direct('off')
    const key = createHash('sha256').update(JSON.stringify([session.repoDir, args])).update('\0').update(input).digest('hex')
    const final = path.join(this.opts.dir, `${key}.pack`)

    const hit = await this.finished(key, final)
    if (hit) {
      this.stats.hits++
      this.stats.bytesServed += hit.size
      session.onOutcome('hit')
      // the hook reads the entry itself: the worker stays out of the data path
      res.writeHead(200, { 'x-vcs-file': final, 'x-vcs-progress': Buffer.from(hit.progress, 'base64').toString('hex'), 'content-length': 0 }).end()
      return
    }
    // the last await before the decision: from here to produce() nothing interleaves, so
    // concurrent identical requests find the one production and follow it
    const room = await this.roomToWrite()
    let production = this.producing.get(key)
    if (production?.overflowed) return direct('miss') // no entry any more: its readers are its own
    if (production) {
      this.stats.follows++
      session.onOutcome('follow')
      return this.follow(production, res)
    }
    this.stats.misses++
    const occurrence = (this.seen.get(key) ?? 0) + 1
    this.seen.set(key, occurrence)
    if (occurrence < this.opts.writeOnOccurrence || !room || this.producing.size >= this.opts.maxProductions) return direct('miss')
    production = this.produce(key, session.repoDir, args, input, final)
    session.onOutcome('miss')
    return this.follow(production, res)
  }

  /** A complete, fresh, whole entry: its size and the progress text pack-objects wrote (base64). */
  private async finished(key: string, final: string): Promise<{ size: number; progress: string } | undefined> {
    const metaFile = final.replace(/\.pack$/, '.json')
    try {
      const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { size: number; createdAt: number; progress?: string }
      const st = await stat(final)
      if (Date.now() - meta.createdAt > this.opts.maxAgeMs) return undefined
      if (st.size !== meta.size) {
        // truncated or replaced by hand: never served
        this.opts.log.warn({ key, size: st.size, expected: meta.size }, 'pack cache entry has the wrong size: removed')
        await Promise.all([rm(final, { force: true }), rm(metaFile, { force: true })])
        return undefined
      }
      return { size: meta.size, progress: meta.progress ?? '' }
    } catch {
      return undefined
    }
  }

  private async roomToWrite(): Promise<boolean> {
    try {
      const s = await statfs(this.opts.dir)
      if (s.bavail * s.bsize < this.opts.diskFloorBytes) return false
    } catch {
      return false
    }
    return true
  }

  /** Starts the one pack-objects run of `key`; its output goes to a temp file that becomes the entry. */
  private produce(key: string, repoDir: string, args: string[], input: Buffer, final: string): Production {
    const p = new Production(`${final}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`, final)
    this.producing.set(key, p)
    const dropTemp = async (): Promise<void> => {
      await rm(p.tmp, { force: true })
      this.writingBytes -= p.onDisk
    }
    const fail = async (why: string, err?: unknown): Promise<void> => {
      if (p.done) return
      p.failed = true
      p.done = true
      this.stats.failures++
      this.producing.delete(key)
      p.notify()
      await dropTemp()
      this.opts.log.warn({ key, err, why }, 'pack-objects for the cache failed: entry removed')
    }
    void (async () => {
      let fh: FileHandle | undefined
      try {
        fh = await open(p.tmp, 'wx', 0o600)
      } catch (err) {
        this.degraded = `cache dir not writable: ${(err as Error).message}`
        return fail('cannot write the cache', err)
      }
      const child = spawnChild(this.opts.gitBin, args, { env: this.opts.env, cwd: repoDir, killGraceMs: this.opts.killGraceMs, nice: this.opts.nice, viaHelper: this.opts.viaHelper })
      child.proc.stdin.on('error', () => {})
      child.proc.stdin.end(input)
      child.proc.stderr.on('data', (c: Buffer | string) => { p.stderr.push(Buffer.from(c)); p.notify() })
      let writing = Promise.resolve()
      const stdout = child.proc.stdout
      stdout.on('data', (c: Buffer) => {
        // the cap holds before a byte is written, counting every production's temp file: no
        // room left even after evicting the oldest entries, and this production stops being one
        if (!p.overflowed && !this.roomFor(c.length)) {
          p.overflowed = true
          this.producing.delete(key) // no new reader joins; a later request may start its own
          this.stats.overflows++
          this.opts.log.info({ key, bytes_on_disk: p.onDisk, max_bytes: this.opts.maxBytes }, 'pack cache full: this pack is not kept, its readers are served from memory')
        }
        if (p.overflowed) {
          // after what is queued for the file, so the readers see the bytes in order
          writing = writing.then(() => {
            if (!p.keep(c)) {
              stdout.pause()
              p.onRoom = () => stdout.resume()
            }
            p.notify()
          })
          return
        }
        this.writingBytes += c.length
        // appended in order; readers are told only once the bytes are in the file
        writing = writing.then(async () => {
          await fh!.write(c)
          p.size += c.length
          p.onDisk += c.length
          p.notify()
        })
      })
      const status = await child.exited
      try {
        await writing
        await fh.close()
      } catch (err) {
        return fail('writing the cache failed', err)
      }
      if (status.code !== 0) return fail(`pack-objects exited ${status.code ?? status.signal}`)
      if (p.overflowed) {
        // whole for its readers, but no entry: the temp file goes once they are done with it
        p.done = true
        p.notify()
        await p.finishedReading()
        await dropTemp()
        return
      }
      try {
        await rename(p.tmp, final)
        this.writingBytes -= p.onDisk
        this.finishedBytes += p.onDisk
        await writeFile(final.replace(/\.pack$/, '.json'), JSON.stringify({ size: p.size, createdAt: Date.now(), progress: Buffer.concat(p.stderr).subarray(-MAX_PROGRESS).toString('base64') }))
      } catch (err) {
        await rm(final, { force: true }) // a pack without its record is never served, nor kept
        return fail('storing the entry failed', err)
      }
      p.done = true
      this.producing.delete(key)
      p.notify()
      this.sweep()
    })()
    return p
  }

  /**
   * True when `bytes` more fit under maxBytes with what is on disk and being written, after
   * evicting the oldest finished entries if need be.
   */
  private roomFor(bytes: number): boolean {
    if (this.finishedBytes + this.writingBytes + bytes <= this.opts.maxBytes) return true
    this.evict(bytes)
    return this.finishedBytes + this.writingBytes + bytes <= this.opts.maxBytes
  }

  /** Removes the oldest finished entries until `bytes` more fit (or none is left); recounts what is on disk. */
  private evict(bytes: number): void {
    try {
      const entries = this.finishedEntries()
      let total = entries.reduce((s, e) => s + e.size, 0)
      for (const e of entries) {
        if (total + this.writingBytes + bytes <= this.opts.maxBytes) break
        this.remove(e.file)
        total -= e.size
      }
      this.finishedBytes = total
    } catch (err) {
      this.opts.log.warn({ err }, 'pack cache eviction failed')
    }
  }

  /** The finished entries, oldest first. */
  private finishedEntries(): { file: string; size: number; mtime: number }[] {
    return readdirSync(this.opts.dir).filter((n) => n.endsWith('.pack')).map((n) => {
      const file = path.join(this.opts.dir, n)
      const st = statSync(file, { throwIfNoEntry: false })
      return { file, size: st?.size ?? 0, mtime: st?.mtimeMs ?? 0 }
    }).sort((a, b) => a.mtime - b.mtime)
  }

  private remove(file: string): void {
    rmSync(file, { force: true })
    rmSync(file.replace(/\.pack$/, '.json'), { force: true })
    this.stats.evictions++
  }

  /** Streams a production to one reader as it is written; the reader leaving stops only its own copy. */
  private async follow(p: Production, res: http.ServerResponse): Promise<void> {
    let gone = false
    const reader = p.join()
    res.on('close', () => { gone = true; p.leave(reader); p.notify() })
    // progress: what pack-objects showed so far now, the rest in a trailer after the last chunk
    const shown = Buffer.concat(p.stderr)
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-vcs-progress': shown.subarray(-MAX_PROGRESS).toString('hex'), trailer: 'x-vcs-progress-rest' })
    let fh: FileHandle | undefined
    let offset = 0
    try {
      for (;;) {
        if (gone) return
        if (p.failed) throw new Error('the pack-objects run failed')
        if (offset >= p.memoryFrom && offset < p.size) {
          const chunk = p.fromMemory(reader, offset)
          if (!chunk) throw new Error('cache memory window lost its place')
          offset += chunk.length
          this.stats.bytesServed += chunk.length
          if (!res.write(chunk)) await drained(res)
          continue
        }
        if (offset < p.size) {
          fh ??= await open(p.tmp, 'r').catch(() => open(p.final, 'r'))
          const buf = Buffer.alloc(Math.min(256 * 1024, Math.min(p.size, p.memoryFrom) - offset))
          const { bytesRead } = await fh.read(buf, 0, buf.length, offset)
          if (bytesRead === 0) throw new Error('cache entry shorter than written')
          offset += bytesRead
          this.stats.bytesServed += bytesRead
          if (!res.write(buf.subarray(0, bytesRead))) await drained(res)
          continue
        }
        if (p.done) {
          res.addTrailers({ 'x-vcs-progress-rest': Buffer.concat(p.stderr).subarray(shown.length).subarray(-MAX_PROGRESS).toString('hex') })
          res.end()
          return
        }
        await p.changed()
      }
    } catch (err) {
      // cut, not ended: no last chunk, the hook exits non-zero, upload-pack reports the error
      if (!gone) this.opts.log.warn({ err }, 'following a pack-objects run failed')
      res.destroy()
    } finally {
      p.leave(reader)
      await fh?.close().catch(() => {})
    }
  }

  /** Removes entries past their age, then the oldest while over the size cap; at most once a second. */
  private sweep(): void {
    if (Date.now() - this.sweptAt < 1000) return
    this.sweptAt = Date.now()
    try {
      const entries = this.finishedEntries()
      // temp files a killed worker left: a production in progress writes as its bytes come
      for (const n of readdirSync(this.opts.dir)) {
        const file = path.join(this.opts.dir, n)
        if (n.includes('.pack.tmp-') && Date.now() - (statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) > this.opts.maxAgeMs) rmSync(file, { force: true })
      }
      let total = entries.reduce((s, e) => s + e.size, 0)
      for (const e of entries) {
        if (Date.now() - e.mtime <= this.opts.maxAgeMs && total + this.writingBytes <= this.opts.maxBytes) break
        this.remove(e.file)
        total -= e.size
      }
      this.finishedBytes = total
    } catch (err) {
      this.opts.log.warn({ err }, 'pack cache sweep failed')
    }
  }
}

/** Resolves when `res` can take more, or is gone; leaves no listener behind. */
function drained(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done)
      res.off('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
  })
}

/**
 * The arguments to run pack-objects with, rebuilt from what upload-pack asked: `git
 * [--shallow-file ""] pack-objects FLAGS...`, flags only; undefined for anything else.
 */
export function checkArgs(args: string[]): string[] | undefined {
  if (args[0] !== 'git') return undefined
  const rest = args.slice(1)
  const out: string[] = []
  let i = 0
  if (rest[0] === '--shallow-file') {
    if (rest[1] !== '') return undefined // upload-pack sends shallow lines on stdin, never a file
    out.push('--shallow-file', '')
    i = 2
  }
  if (rest[i] !== 'pack-objects') return undefined
  out.push('pack-objects')
  for (const a of rest.slice(i + 1)) {
    if (!FLAGS.has(a) && !VALUED.test(a)) return undefined
    out.push(a)
  }
  return out
}
