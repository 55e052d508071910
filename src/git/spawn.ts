/**
 * The only place that starts git. argv arrays (never a shell), `--` before the repository
 * operand, an environment allowlist instead of `process.env`, and the serving options the
 * worker needs passed with `-c` so repositories need no special config.
 */
import type { Socket } from 'node:net'
import type { Config } from '../config/load.js'
import { spawnChild, describeExit, runToCompletion, type Child } from '../process/child.js'
import { READ_POOL } from '../process/pooled-read.js'

export type GitService = 'upload-pack' | 'receive-pack'

/**
 * `-c` options for serving: partial clone needs allowFilter; lazy fetches of a partial clone
 * over protocol v0 need to ask for reachable objects by id; push options must be advertised
 * or `git push -o` fails with "the receiving end does not support push options".
 */
const SERVE_CONFIG = [
  'uploadpack.allowFilter=true',
  'uploadpack.allowReachableSHA1InWant=true',
  'receive.advertisePushOptions=true',
]

/**
 * `Git-Protocol` header → GIT_PROTOCOL, only when it is a well-formed `key[=value](:key[=value])*`
 * list (git's Documentation/technical/protocol-v2.txt, "HTTP Transport"); anything else is dropped.
 */
const GIT_PROTOCOL = /^[A-Za-z0-9._-]+(=[A-Za-z0-9._-]+)?(:[A-Za-z0-9._-]+(=[A-Za-z0-9._-]+)?)*$/

export function checkGitProtocol(header: string | string[] | undefined): string | undefined {
  if (typeof header !== 'string' || header.length > 256 || !GIT_PROTOCOL.test(header)) return undefined
  return header
}

/** 'v2', 'v1' or 'v0' for logs and metrics. */
export function protocolVersion(gitProtocol: string | undefined): 'v0' | 'v1' | 'v2' {
  const keys = gitProtocol?.split(':') ?? []
  if (keys.includes('version=2')) return 'v2'
  if (keys.includes('version=1')) return 'v1'
  return 'v0'
}

export interface RunOptions {
  /** `--advertise-refs`: the info/refs answer */
  advertise?: boolean
  gitProtocol?: string
  /** extra variables for hooks (REMOTE_USER …); names are fixed by callers, values checked */
  env?: Record<string, string>
  /** extra `-c key=value` settings (core.hooksPath for pushes) */
  config?: string[]
  /** stdout as pooled chunks (`Child.stdoutChunks`) when git starts through the spawn helper */
  pooledStdout?: boolean
  /** run git under the pack relay (relay.ts), which writes its output to this connection */
  relay?: { socket: Socket; head: string; idleMs: number; bin: string }
}

export interface GitRunner {
  /** Starts `git <service> --stateless-rpc [--advertise-refs] -- <dir>`. */
  serve(service: GitService, repoDir: string, opts?: RunOptions): Child
  /** Runs a short administrative git command to completion and returns its stdout. */
  exec(args: string[], opts?: { cwd?: string; maxOutput?: number; input?: string; env?: Record<string, string>; timeoutMs?: number }): Promise<string>
  /** True when at least one of `oids` names an object in the repository (one `cat-file --batch-check`). */
  anyObjectExists(repoDir: string, oids: string[]): Promise<boolean>
}

const OID = /^[0-9a-f]{40}([0-9a-f]{24})?$/

/** Creates the git runner for one app. */
export function createGitRunner(config: Config): GitRunner {
  const baseEnv: Record<string, string> = {
    PATH: config.envPath,
    HOME: config.homeDir,
    GIT_TERMINAL_PROMPT: '0',
    GIT_CONFIG_NOSYSTEM: '1',
    LC_ALL: 'C',
  }
  const childEnv = (extra?: Record<string, string>, gitProtocol?: string): Record<string, string> => {
    const env = { ...baseEnv, ...extra }
    for (const v of Object.values(env)) if (v.includes('\0')) throw new Error('NUL byte in child environment')
    if (gitProtocol) env.GIT_PROTOCOL = gitProtocol
    return env
  }
  const cfgArgs = SERVE_CONFIG.flatMap((c) => ['-c', c])
  return {
    serve(service, repoDir, opts = {}) {
      const args = [...cfgArgs, ...(opts.config ?? []).flatMap((c) => ['-c', c]), service, '--stateless-rpc']
      if (opts.advertise) args.push('--advertise-refs')
      args.push('--', repoDir)
      const env = childEnv(opts.env, opts.gitProtocol)
      const common = { env, killGraceMs: config.killGraceMs, nice: config.childNice, viaHelper: config.spawnHelper }
      const { relay } = opts
      if (relay) {
        if (relay.head.includes('\0')) throw new Error('NUL byte in the response head')
        return spawnChild(relay.bin, [String(relay.idleMs), relay.head, '--', config.gitBin, ...args], { ...common, stdout: { socket: relay.socket } })
      }
      if (opts.pooledStdout && config.spawnHelper) return spawnChild(config.gitBin, args, { ...common, viaHelper: true, stdout: { pool: READ_POOL } })
      return spawnChild(config.gitBin, args, common)
    },
    async exec(args, opts = {}) {
      if (args.some((a) => a.includes('\0'))) throw new Error('NUL byte in git argument')
      const child = spawnChild(config.gitBin, args, { env: childEnv(opts.env), cwd: opts.cwd, killGraceMs: config.killGraceMs, viaHelper: config.spawnHelper })
      const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => child.kill(), opts.timeoutMs)
      const { status, stdout } = await runToCompletion(child, { input: opts.input, maxOutput: opts.maxOutput }).finally(() => clearTimeout(timer))
      if (status.error || status.code !== 0) {
        throw new Error(`git ${args[0]} failed (${describeExit(status)}): ${child.stderr().split('\n').pop() ?? ''}`)
      }
      return stdout.toString('utf8')
    },
    async anyObjectExists(repoDir, oids) {
      const valid = oids.filter((o) => OID.test(o))
      if (!valid.length) return false
      const out = await this.exec(['--git-dir', repoDir, 'cat-file', '--batch-check=%(objectname)'], { input: `${valid.join('\n')}\n` })
      return out.split('\n').some((line) => line !== '' && !line.endsWith(' missing'))
    },
  }
}
