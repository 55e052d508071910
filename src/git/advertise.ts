/**
 * The protocol v2 capability advertisement. Under v2, info/refs lists no refs (they come later
 * through `ls-refs`), only capabilities that depend on git's version, the repository's config
 * (object format, lsrefs.unborn, uploadpack.*) and ours. So the worker asks git once per
 * repository and config version, and answers later probes from memory: an info/refs under v2
 * costs no process (git's protocol-v2.txt: "Capability Advertisement").
 *
 * `object-info` is taken out of it: git 2.39 advertises it unconditionally and answers any
 * number of oids in one request (1.3 M oids in a 185 KB gzip body cost git 92 CPU-seconds);
 * git 2.45 made it opt-in for that reason. The upload-pack endpoint refuses the command too.
 */
import { stat } from 'node:fs/promises'
import path from 'node:path'
import { LRUCache } from 'lru-cache'
import type { GitRunner } from './spawn.js'
import { describeExit, runToCompletion } from '../process/child.js'
import { splitPackets } from './pktline.js'
import { ServiceUnavailableError } from '../errors.js'

const MAX_ENTRIES = 2048
const MAX_BYTES = 64 * 1024

interface Entry {
  key: string
  body: Promise<Buffer>
}

/** A cache of v2 advertisements keyed by repo dir and the mtime of its config file; full, the least recently used goes. */
export class V2AdvertisementCache {
  private readonly entries = new LRUCache<string, Entry>({ max: MAX_ENTRIES })
  constructor(private readonly git: GitRunner) {}

  async get(repoDir: string): Promise<Buffer> {
    const st = await stat(path.join(repoDir, 'config')).catch(() => undefined)
    const key = `${st?.mtimeMs ?? 0}:${st?.size ?? 0}`
    const hit = this.entries.get(repoDir)
    if (hit && hit.key === key) return hit.body
    const body = this.fetch(repoDir)
    const entry = { key, body }
    this.entries.set(repoDir, entry)
    body.catch(() => { if (this.entries.get(repoDir) === entry) this.entries.delete(repoDir) })
    return body
  }

  private async fetch(repoDir: string): Promise<Buffer> {
    const child = this.git.serve('upload-pack', repoDir, { advertise: true, gitProtocol: 'version=2' })
    const { status, stdout: body } = await runToCompletion(child, { maxOutput: MAX_BYTES })
    if (status.error) throw new ServiceUnavailableError('git is not available on this worker')
    if (status.code !== 0) throw new Error(`git upload-pack --advertise-refs: ${describeExit(status)}: ${child.stderr()}`)
    if (!body.subarray(0, 32).toString('latin1').includes('version 2')) throw new Error('git did not answer with a v2 advertisement')
    return withoutCapability(body, 'object-info')
  }
}

/** The advertisement without the packet announcing `name` (`name` or `name=...`). */
export function withoutCapability(advertisement: Buffer, name: string): Buffer {
  const kept = splitPackets(advertisement).filter((p) => {
    const text = p.subarray(4).toString('latin1').replace(/\n$/, '')
    return text !== name && !text.startsWith(`${name}=`)
  })
  return Buffer.concat(kept)
}
