/**
 * Where this copy of vcs-worker is installed, and its version: the directory holding its
 * package.json, found from this file's own location (src/ or dist/src/), so every command
 * finds the same install whatever the current directory is.
 */
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json')
    if (existsSync(file) && (JSON.parse(readFileSync(file, 'utf8')) as { name?: string }).name === 'vcs-worker') return dir
    if (path.dirname(dir) === dir) throw new Error(`no vcs-worker package.json above ${from}`)
  }
}

/** the install's root: package.json, repos-fixture/, data/ (the default data dir) */
export const INSTALL_ROOT = findRoot(path.dirname(fileURLToPath(import.meta.url)))

/** the package's version, as `--version`, the start-up line and `GET /` show it */
export const VERSION = (JSON.parse(readFileSync(path.join(INSTALL_ROOT, 'package.json'), 'utf8')) as { version: string }).version
