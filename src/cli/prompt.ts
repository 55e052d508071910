/**
 * Questions asked at a terminal: a password without echo (asked twice, as passwd(1) does) and
 * a typed confirmation. Scripts that pipe standard input are read as they always were; only a
 * TTY gets a prompt.
 */
import { readFileSync } from 'node:fs'

/** The user pressed Ctrl-C or Ctrl-D at a prompt: nothing was changed. */
export class PromptAbortedError extends Error {}

/** Whether standard input is a terminal (then questions are asked; else it is read whole). */
export const interactive = (): boolean => Boolean(process.stdin.isTTY)

/** Reads one line from the terminal; without echo when `secret`. The prompt goes to stderr, so stdout stays the command's answer. */
export function askLine(prompt: string, secret: boolean): Promise<string> {
  const stdin = process.stdin
  return new Promise((resolve, reject) => {
    let line = ''
    const wasRaw = stdin.isRaw
    // raw before the prompt shows: what is typed once it is seen is never echoed by the terminal,
    // and Ctrl-C reaches us as a character, not as a signal
    stdin.setRawMode(true)
    process.stderr.write(prompt)
    stdin.setEncoding('utf8')
    const finish = (err?: Error): void => {
      stdin.off('data', onData)
      stdin.setRawMode(wasRaw)
      stdin.pause()
      process.stderr.write('\n')
      if (err) reject(err)
      else resolve(line)
    }
    const onData = (chunk: string): void => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') return finish()
        if (ch === '\u0003' || (ch === '\u0004' && line === '')) return finish(new PromptAbortedError('cancelled at the prompt: nothing was changed'))
        if (ch === '\u007f' || ch === '\b') {
          if (line) {
            line = [...line].slice(0, -1).join('')
            if (!secret) process.stderr.write('\b \b')
          }
        } else if (ch >= ' ') {
          line += ch
          if (!secret) process.stderr.write(ch)
        }
      }
    }
    stdin.on('data', onData)
    stdin.resume()
  })
}

/** The password for `user add` / `user passwd`: asked twice at a terminal, else standard input's one line. */
export async function readNewPassword(check: (password: string) => string): Promise<string> {
  if (!interactive()) {
    let text: string
    try {
      text = readFileSync(0, 'utf8')
    } catch {
      throw new PromptNeededError('give the password on standard input')
    }
    return check(text.replace(/\r?\n$/, ''))
  }
  const first = check(await askLine('Password: ', true))
  const again = await askLine('Password (again): ', true)
  if (again !== first) throw new PromptNeededError('the two passwords differ: nothing was changed')
  return first
}

/** A question that could not be answered as asked (a usage mistake: exit 2). */
export class PromptNeededError extends Error {}
