/**
 * README's commands as a user runs them: the shell blocks read out of README.md, run line by
 * line in one bash (so `alias` and `cd` carry on, as in a terminal) in a fresh clone's layout,
 * inside a network namespace of the test's own, where README's fixed ports (8080, 8000, ...) are
 * free and nothing reaches another machine.
 */
import { execFileSync } from 'node:child_process'
import { cp, mkdir, readFile, symlink } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { ROOT, type RunResult } from './worker.js'

/** The command lines of README's ```sh blocks, in order (comment-only and blank lines dropped). */
export async function readmeCommands(file = path.join(ROOT, 'README.md')): Promise<string[]> {
  const text = await readFile(file, 'utf8')
  const lines: string[] = []
  for (const block of text.matchAll(/^```sh\n([\s\S]*?)^```$/gm)) {
    for (const line of block[1]!.split('\n')) if (line.trim() && !line.trim().startsWith('#')) lines.push(line)
  }
  return lines
}

/**
 * A copy of the checkout as `git clone` makes it: the tracked files only (no dist/, no data/),
 * with this checkout's node_modules linked in (npm ci would need the network; setup.sh sees an
 * installed tree and skips it).
 */
export async function freshClone(dir: string): Promise<string> {
  const clone = path.join(dir, 'vcs-worker')
  const files = execFileSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean)
  for (const f of files) {
    const from = path.join(ROOT, f)
    if (!existsSync(from)) continue // deleted in the work tree, not yet committed
    await mkdir(path.dirname(path.join(clone, f)), { recursive: true })
    await cp(from, path.join(clone, f), { preserveTimestamps: true, verbatimSymlinks: true })
  }
  await symlink(path.join(ROOT, 'node_modules'), path.join(clone, 'node_modules'))
  return clone
}

/** Is a command one that runs until Ctrl-C, and what it prints once it is ready? */
export function longRunning(line: string): string | undefined {
  const cmd = line.replace(/\s+#.*$/, '').trim()
  if (cmd === 'npm start') return 'listening on http'
  if (/^npm run pool( |$)/.test(cmd)) return 'Ctrl-C stops everything'
  return undefined
}

/**
 * The bash program that runs `lines` in order: each as written, its output in the transcript
 * after a `@@ <n> <line>` marker; a long-running one in the background of its own session
 * (as in a second terminal), waited for until it prints that it is ready; a pool stopped (Ctrl-C)
 * before the next pool starts, as they share ports. `after` runs last, in the same shell.
 */
export function tourScript(lines: string[], logs: string, after: string): string {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`
  const out = [
    'set -u',
    'shopt -s expand_aliases',
    'ip link set lo up',
    `LOGS=${q(logs)}`,
    'declare -A PIDS',
    // Ctrl-C to a terminal's foreground job: SIGINT to its whole process group, then wait for it
    'stop_bg() { local p=${PIDS[$1]:-}; [ -n "$p" ] || return 0; kill -INT -- -"$p" 2>/dev/null; wait "$p"; echo "@@ stopped $1 (exit $?)"; unset "PIDS[$1]"; }',
    'stop_all() { for k in "${!PIDS[@]}"; do stop_bg "$k"; done; }',
    'fail() { echo "@@FAIL $1 (exit $2)"; stop_all; exit 1; }',
    // bounded: 3000 looks at the log, each a fifth of a second apart, or the process ending
    'start_bg() { local name=$1 pattern=$2 cmd=$3; setsid bash -c "$cmd" >"$LOGS/$name.log" 2>&1 </dev/null & PIDS[$name]=$!; echo "$!" >>"$LOGS/pids";' +
      ' for _ in $(seq 3000); do grep -q -- "$pattern" "$LOGS/$name.log" && { cat "$LOGS/$name.log"; return 0; }; kill -0 "${PIDS[$name]}" 2>/dev/null || { cat "$LOGS/$name.log"; wait "${PIDS[$name]}"; local rc=$?; unset "PIDS[$name]"; return $((rc ? rc : 1)); }; sleep 0.2; done; cat "$LOGS/$name.log"; return 1; }',
  ]
  lines.forEach((line, i) => {
    out.push(`echo ${q(`@@ ${i + 1} ${line}`)}`)
    const ready = longRunning(line)
    if (line.replace(/\s+#.*$/, '').trim() === 'npm test') {
      out.push('echo "(the suite itself: not run from inside it)"')
    } else if (ready) {
      const name = line.includes('pool') ? 'pool' : 'start'
      out.push(`stop_bg ${name}`, `start_bg ${name} ${q(ready)} ${q(line)} || fail ${i + 1} $?`)
    } else {
      // its own group, so a comment at the end of the line cannot swallow what follows
      out.push('{', line, `} 2>&1 </dev/null || fail ${i + 1} $?`)
    }
  })
  out.push('echo "@@ after"', after, 'stop_all', 'echo "@@ done"')
  return `${out.join('\n')}\n`
}

/** The transcript cut at its markers: the output of line n is `sections.get(n)`. */
export function sections(transcript: string): Map<string, string> {
  const map = new Map<string, string>()
  let key = ''
  for (const l of transcript.split('\n')) {
    const m = /^@@ (\S+)/.exec(l)
    if (m && m[1] !== 'stopped') {
      key = m[1]!
      map.set(key, '')
    } else map.set(key, `${map.get(key) ?? ''}${l}\n`)
  }
  return map
}

export type { RunResult }
