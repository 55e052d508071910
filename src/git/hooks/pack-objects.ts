/**
 * git's uploadpack.packObjectsHook (see ../pack-cache.ts): called by upload-pack as
 * `HOOK git [--shallow-file ""] pack-objects FLAGS...` with pack-objects' stdin, it asks the
 * worker what to do: run pack-objects itself (`direct`), copy a finished cache entry (`hit`), or
 * relay a run in progress (`stream`: frames of stdout, stderr and the exit code). Whatever goes
 * wrong on the way to the cache, the fetch is served by running pack-objects here.
 */
import { spawn } from 'node:child_process'
import { createReadStream, readFileSync } from 'node:fs'
import { request } from 'node:http'
import { pipeline } from 'node:stream/promises'

const FRAME_OUT = 1
const FRAME_ERR = 2
const FRAME_EXIT = 3

const args = process.argv.slice(2)
const input = readFileSync(0)

let ranHere = false
/** pack-objects run here, as git would have without the hook (once, whatever asked first). */
function direct(): void {
  if (ranHere) return
  ranHere = true
  const child = spawn(args[0]!, args.slice(1), { stdio: ['pipe', 'inherit', 'inherit'] })
  child.stdin.on('error', () => {})
  child.stdin.end(input)
  child.on('exit', (code, signal) => { process.exitCode = code ?? (signal ? 128 : 1) })
}

function ask(): void {
  const url = process.env.VCS_WORKER_PACK_URL
  const token = process.env.VCS_WORKER_PACK_TOKEN
  if (!url || !token) return direct()
  const req = request(url, { method: 'POST' }, (res) => {
    if (res.statusCode !== 200) {
      res.resume()
      return direct()
    }
    let head: { mode: string; file?: string; stderr?: string } | undefined
    let pending = Buffer.alloc(0)
    let started = false
    res.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      if (!head) {
        const nl = pending.indexOf(10)
        if (nl < 0) return
        head = JSON.parse(pending.subarray(0, nl).toString('utf8')) as typeof head
        pending = pending.subarray(nl + 1)
        if (head!.mode === 'direct') return direct()
        if (head!.mode === 'hit') {
          if (head!.stderr) process.stderr.write(Buffer.from(head!.stderr, 'base64'))
          // the entry may be evicted between the answer and this open: then run it here
          const file = createReadStream(head!.file!)
          file.once('open', () => { started = true })
          pipeline(file, process.stdout).catch(() => { if (!started) direct(); else process.exitCode = 1 })
          return
        }
      }
      if (head!.mode !== 'stream') return
      while (pending.length >= 5) {
        const len = pending.readUInt32BE(1)
        if (pending.length < 5 + len) break
        const type = pending[0]
        const payload = pending.subarray(5, 5 + len)
        pending = pending.subarray(5 + len)
        if (type === FRAME_OUT) {
          started = true
          if (!process.stdout.write(payload)) { res.pause(); process.stdout.once('drain', () => res.resume()) }
        } else if (type === FRAME_ERR) process.stderr.write(payload)
        else if (type === FRAME_EXIT) process.exitCode = payload.readUInt32BE(0)
      }
    })
    res.on('end', () => {
      // a stream cut before its exit frame is a failure, never a pack presented as whole
      if (head?.mode === 'stream' && process.exitCode === undefined) process.exitCode = 1
    })
    res.on('error', () => { if (!started && head?.mode !== 'hit') direct(); else process.exitCode = 1 })
  })
  req.on('error', () => direct())
  req.end(Buffer.concat([Buffer.from(`${JSON.stringify({ token, cwd: process.cwd(), args })}\n`), input]))
}

ask()
