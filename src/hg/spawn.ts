/**
 * The only place that starts hg. argv arrays, an environment allowlist with HGPLAIN=1 (stable,
 * untranslated output) and a controlled HGRCPATH, so no user or system hgrc changes behaviour.
 */
import type { Config } from '../config/load.js'
import { describeExit, runToCompletion, spawnChild } from '../process/child.js'

/** Environment for every hg child. */
export function hgEnv(config: Config, extra: Record<string, string> = {}): Record<string, string> {
  // no bytecode written beside our extension (src/hg/__pycache__): the checkout stays as committed
  return { PATH: config.envPath, HOME: config.homeDir, HGPLAIN: '1', HGRCPATH: '', HGENCODING: 'utf-8', LC_ALL: 'C', PYTHONDONTWRITEBYTECODE: '1', ...extra }
}

/** `hg init DIR`. */
export async function hgInit(config: Config, dir: string): Promise<void> {
  const child = spawnChild(config.hgBin, ['init', '--', dir], { env: hgEnv(config), killGraceMs: config.killGraceMs })
  const { status } = await runToCompletion(child)
  if (status.error || status.code !== 0) throw new Error(`hg init failed (${describeExit(status)}): ${child.stderr()}`)
}

/** `hg recover` on a repo; resolves with hg's output, rejects when hg fails. */
export async function hgRecover(config: Config, dir: string): Promise<string> {
  const child = spawnChild(config.hgBin, ['-R', dir, '--config', 'ui.timeout=5', 'recover'], { env: hgEnv(config), killGraceMs: config.killGraceMs })
  const { status, stdout } = await runToCompletion(child, { maxOutput: 4000, keep: 'tail' })
  if (status.error || status.code !== 0) throw new Error(`hg recover failed (${describeExit(status)}): ${child.stderr()}`)
  return stdout.toString('utf8').trim()
}
