/**
 * A command at a real terminal: python3's pty module gives it a pseudo-terminal (isatty true,
 * echo as the line discipline does it), answers its prompts as a person would type, and returns
 * everything the terminal showed. Each step waits for its prompt text, bounded in time.
 */
import { CLI_ENV, run } from './worker.js'

const DRIVER = String.raw`
import json, os, pty, select, sys, time
spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(spec['argv'][0], spec['argv'], spec['env'])
seen = b''
eof = False
def read_until(pred, deadline):
    global seen, eof
    while not pred():
        left = deadline - time.time()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b''
        if not chunk:
            eof = True
            return pred()
        seen += chunk
    return True
ok = True
for step in spec['steps']:
    start = len(seen)
    want = step['expect'].encode()
    if not read_until(lambda: want in seen[start:], time.time() + spec['stepSeconds']):
        ok = False
        break
    os.write(fd, step['send'].encode())
read_until(lambda: False, time.time() + spec['stepSeconds'])
if not eof:
    ok = False
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({'output': seen.decode('utf-8', 'replace'), 'code': code, 'stepsDone': ok}))
`

export interface PtyResult {
  /** what the terminal showed (\r\n line ends, as a terminal has them) */
  output: string
  code: number
  /** false when a prompt never came */
  stepsDone: boolean
}

/** Runs argv at a terminal, typing each step's `send` once its `expect` text has appeared. */
export async function atTerminal(argv: string[], steps: { expect: string; send: string }[], env: NodeJS.ProcessEnv = CLI_ENV, stepSeconds = 60): Promise<PtyResult> {
  const r = await run('python3', ['-c', DRIVER, JSON.stringify({ argv, env: { TERM: 'dumb', ...env }, steps, stepSeconds })], { timeoutMs: (steps.length + 2) * stepSeconds * 1000 })
  if (r.code !== 0) throw new Error(`pty driver failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as PtyResult
}
