#!/usr/bin/env node
/**
 * `vcs-worker` commands. Exit codes (docs/design.md): 0 ok, 2 bad usage or configuration (every
 * problem printed, each naming its key), 1 runtime failure.
 */
import path from 'node:path'
import { parseArgs } from 'node:util'
import { existsSync, mkdirSync, statSync } from 'node:fs'
import { loadConfig, flagSpec, type Config } from '../config/load.js'
import { ConfigError } from '../errors.js'
import { INSTALL_ROOT, VERSION } from '../install.js'
import { nearest } from '../config/nearest.js'
import { StoreConflictError, StoreNotFoundError } from '../auth/store.js'
import { isPostgresUrl } from '../auth/open.js'
import { redactUrl } from '../auth/pg-url.js'
import { UsageError } from './errors.js'
import { PromptAbortedError, PromptNeededError } from './prompt.js'
import { helpOf, nearestCommand, subcommandsOf, TOP_WORDS, usage, usageLineOf } from './usage.js'

const OPTIONS = {
  ...flagSpec(),
  git: { type: 'boolean' as const }, hg: { type: 'boolean' as const }, public: { type: 'boolean' as const },
  expires: { type: 'string' as const }, users: { type: 'string' as const }, help: { type: 'boolean' as const, short: 'h' },
  version: { type: 'boolean' as const, short: 'V' }, init: { type: 'boolean' as const }, yes: { type: 'boolean' as const },
  pool: { type: 'string' as const }, workers: { type: 'string' as const },
  json: { type: 'boolean' as const }, user: { type: 'string' as const }, repo: { type: 'string' as const },
  from: { type: 'string' as const }, to: { type: 'string' as const }, address: { type: 'string' as const },
}

function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true, allowNegative: true }) // --no-<flag> turns a boolean off
  } catch (err) {
    const words = argv.filter((a) => !a.startsWith('-')).slice(0, 2)
    const unknown = /^Unknown option '(-{1,2}[^']+)'/.exec((err as Error).message)
    if (unknown) {
      const name = unknown[1]!.replace(/^-+/, '').split('=')[0]!
      const near = nearest(name.replace(/^no-/, ''), Object.keys(OPTIONS))
      const shown = near ? `--${name.startsWith('no-') && OPTIONS[near as keyof typeof OPTIONS]?.type === 'boolean' ? 'no-' : ''}${near}` : undefined
      throw new UsageError(`unknown option ${unknown[1]}${shown ? `; did you mean ${shown}?` : ''}`, usageLineOf(words) ?? 'see: vcs-worker --help')
    }
    // node's messages run on with advice for positionals: the first sentence is the reason
    throw new UsageError((err as Error).message.split(/\.\s/)[0]!.replace(/\.$/, ''), usageLineOf(words) ?? 'see: vcs-worker --help')
  }
}

function configFrom(values: Record<string, string | boolean | undefined>): Config {
  return loadConfig({ flags: values, env: process.env })
}

/** Creates the data dir layout (owner-only: the store holds password hashes); the repos dir must exist unless it is the default one. */
function prepareDirs(config: Config, explicitRepos: boolean): void {
  for (const dir of [config.dataDir, config.homeDir, config.tmpDir]) mkdirSync(dir, { recursive: true, mode: 0o700 })
  try {
    if (!statSync(config.reposDir).isDirectory()) throw new ConfigError([`reposDir: ${config.reposDir} is not a directory`])
  } catch (err) {
    if (err instanceof ConfigError) throw err
    if (explicitRepos) throw new ConfigError([`reposDir: ${config.reposDir} does not exist`])
    mkdirSync(config.reposDir, { recursive: true })
  }
}

/** Where the accounts are, as messages name it (never a password). */
const storeLabel = (config: Config): string => (isPostgresUrl(config.authStore) ? redactUrl(config.authStore) : config.authDb)

/**
 * An admin command finds an existing store or says it did not: a typo in --data, or a command
 * run from elsewhere with a relative one, would otherwise write into a new, empty store.
 */
function requireStore(config: Config, words: string[], init: boolean): void {
  if (init || isPostgresUrl(config.authStore) || existsSync(config.authDb)) return
  if (words[0] === 'repo' && words[1] === 'create') return // the first repo of a new install
  const dflt = `${INSTALL_ROOT}/data`
  throw new ConfigError([`dataDir: ${config.dataDir} holds no account store (auth.sqlite)${config.dataDir === dflt ? '' : `; this install's default data dir is ${dflt}`}: give the right --data, or --init to create a new store there`])
}

/** Warns when the data dir or the store can be read by others than their owner (hashes, tokens). */
function looseModes(config: Config): string[] {
  const loose: string[] = []
  for (const [file, want] of [[config.dataDir, 0o700], [config.authDb, 0o600]] as const) {
    try {
      const mode = statSync(file).mode & 0o777
      if (mode & 0o077) loose.push(`${file} is mode ${mode.toString(8)}: others can read it (chmod ${want.toString(8)} ${file})`)
    } catch { /* not there (a PostgreSQL store) */ }
  }
  return loose
}

async function serve(config: Config, explicitRepos: boolean): Promise<void> {
  prepareDirs(config, explicitRepos)
  const [{ buildApp }, { createLogger }, { createGitRunner }] = await Promise.all([import('../app.js'), import('../log.js'), import('../git/spawn.js')])
  const logger = createLogger(config.logLevel)
  const git = createGitRunner(config)
  let gitVersion: string
  try {
    gitVersion = (await git.exec(['--version'])).trim()
  } catch (err) {
    throw new Error(`git is not usable (gitBin=${config.gitBin}): ${(err as Error).message}`)
  }
  const app = await buildApp(config, { logger, git })
  for (const line of looseModes(config)) logger.warn(line)
  const { sweepTrash } = await import('./lifecycle.js')
  const swept = await sweepTrash(path.resolve(config.reposDir))
  if (swept) logger.info({ removed: swept }, 'removed what repo deletes cut short had left in the repos dir')
  let address: string
  try {
    address = await app.listen({ host: config.host, port: config.port, backlog: 2048 })
  } catch (err) {
    await app.close() // the hg children and timers it started would keep the process alive
    const code = (err as { code?: string }).code
    if (code === 'EADDRINUSE') throw new Error(`cannot listen on ${config.host}:${config.port}: the port is in use (another vcs-worker?); stop that one or give another --port N (0: any free port)`)
    if (code === 'EADDRNOTAVAIL') throw new Error(`cannot listen on ${config.host}:${config.port}: no such address on this machine; give another --host`)
    throw new Error(`cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`)
  }
  const port = (app.server.address() as { port: number }).port
  logger.info({ address, version: VERSION, git: gitVersion, repos: config.reposDir }, 'vcs-worker listening')
  const host = config.host.includes(':') ? `[${config.host}]` : config.host
  // one write: whoever waits for the first line finds the others with it (the agent line last: `npm run pool` waits for it)
  const lines = [`vcs-worker ${VERSION} listening on http://${host}:${port}/ (repos in ${config.reposDir}; try: git clone http://${host}:${port}/demo.git)`]
  if (app.probes?.healthPort !== undefined) lines.push(`health checks on http://${host}:${app.probes.healthPort}/health/ready`)
  if (app.probes?.agentPort !== undefined) lines.push(`haproxy agent-check on ${host}:${app.probes.agentPort}`)
  process.stdout.write(`${lines.join('\n')}\n`)
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    // SIGTERM drains (the deploy path); SIGINT (Ctrl-C at a terminal) closes without the grace.
    if (signal === 'SIGTERM') logger.info({ signal }, 'shutting down: draining (new work refused once the balancer saw it; in-flight work finishes)')
    else logger.info({ signal }, 'stopping now (in-flight requests are cut; SIGTERM drains instead)')
    const done = signal === 'SIGTERM' ? app.drain() : app.close().then(() => true)
    done.then((clean) => process.exit(clean ? 0 : 1), (err: unknown) => {
      logger.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv)
  const [command, ...args] = positionals
  const v = values as Record<string, string | boolean | undefined>
  if (values.version) {
    process.stdout.write(`vcs-worker ${VERSION}\n`)
    return 0
  }
  if (command === 'help' || !command) {
    const help = args[0] !== undefined ? helpOf(args[0]) : undefined
    // asked for (help, --help): the answer, on stdout; no command at all: a usage mistake
    const asked = Boolean(command || values.help)
    ;(asked ? process.stdout : process.stderr).write(`${help ?? usage()}\n`)
    return asked ? 0 : 2
  }
  if (!TOP_WORDS.includes(command)) {
    const near = nearestCommand(positionals)
    throw new UsageError(`unknown command: ${command}${near ? `; did you mean ${near}?` : ''}`, 'see: vcs-worker --help')
  }
  if (values.help) {
    process.stdout.write(`${helpOf(command)}\n`)
    return 0
  }
  const subs = subcommandsOf(command)
  // a word whose every form has a subcommand (`user`, `repo`, `token`, `store`, `lfs`)
  const needsSub = subs.length > 0 && !['grant', 'protect'].includes(command)
  if (needsSub && (args[0] === undefined || !subs.includes(args[0]))) {
    const near = args[0] !== undefined ? nearestCommand(positionals) : undefined
    throw new UsageError(args[0] === undefined
      ? `${command} needs a subcommand: ${subs.join(', ')}`
      : `unknown command: ${command} ${args[0]}${near ? `; did you mean ${near}?` : `; ${command} has ${subs.join(', ')}`}`, `see: vcs-worker ${command} --help`)
  }
  if (command === 'haproxy-config') {
    if (args.length) throw new UsageError(`haproxy-config takes no arguments, got ${args.join(' ')}`, usageLineOf([command]))
    if (v.pool !== undefined && v.workers !== undefined) throw new UsageError('give --pool or --workers, not both', usageLineOf([command]))
    const workers = v.workers === undefined ? 2 : Number(v.workers)
    if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new UsageError(`--workers: expected 1..64, got ${v.workers}`, usageLineOf([command]))
    const { checkPoolSpec, defaultPool, haproxyConfig, loadPoolSpec } = await import('../../tools/pool/haproxy-config.js')
    const spec = typeof v.pool === 'string' ? loadPoolSpec(v.pool) : checkPoolSpec(defaultPool(workers))
    process.stdout.write(haproxyConfig(spec))
    return 0
  }
  const config = configFrom(v)
  switch (command) {
    case 'serve':
      if (args.length) throw new UsageError(`serve takes no arguments, got ${args.join(' ')}`, usageLineOf([command]))
      await serve(config, v.repos !== undefined || process.env.VCS_WORKER_REPOS !== undefined)
      return -1 // keeps running
    case 'lfs': {
      const { lfsCommand, LfsUsageError } = await import('./lfs.js')
      try {
        return await lfsCommand(args, config, (line) => process.stdout.write(`${line}\n`))
      } catch (err) {
        if (err instanceof LfsUsageError) throw new UsageError(err.message.replace(/^usage: .*/, 'lfs: bad arguments'), usageLineOf(['lfs', 'fsck']))
        throw err
      }
    }
    case 'store': {
      const { storeCopy } = await import('./store-copy.js')
      await storeCopy(args, v as { from?: string; to?: string }, config, (line) => process.stdout.write(`${line}\n`))
      return 0
    }
    default: {
      requireStore(config, positionals, v.init === true)
      prepareDirs(config, v.repos !== undefined)
      const [{ openStore }, { runAdmin }] = await Promise.all([import('../auth/open.js'), import('./admin.js')])
      const store = await openStore(config)
      try {
        await runAdmin(command, args, {
          config, store, flags: v as Parameters<typeof runAdmin>[2]['flags'],
          out: (line) => process.stdout.write(`${line}\n`), warn: (line) => process.stderr.write(`vcs-worker: ${line}\n`),
        })
      } catch (err) {
        // a missing or clashing name is told with the store it was looked up in
        if (err instanceof StoreNotFoundError || err instanceof StoreConflictError) throw new Error(`${err.message} (in ${storeLabel(config)})`)
        throw err
      } finally {
        await store.close()
      }
      return 0
    }
  }
}

main(process.argv.slice(2)).then((code) => {
  if (code >= 0) process.exitCode = code
}, (err: unknown) => {
  if (err instanceof UsageError || err instanceof PromptNeededError) {
    // the reason and one hint: the whole usage would scroll the reason away
    const words = process.argv.slice(2).filter((a) => !a.startsWith('-')).slice(0, 2)
    const hint = err instanceof UsageError && err.hint ? err.hint : usageLineOf(words) ?? 'see: vcs-worker --help'
    process.stderr.write(`vcs-worker: ${err.message}\n${hint}\n`)
    process.exitCode = 2
  } else if (err instanceof PromptAbortedError) {
    process.stderr.write(`vcs-worker: ${err.message}\n`)
    process.exitCode = 130
  } else if (err instanceof ConfigError) {
    for (const p of err.problems) process.stderr.write(`vcs-worker: bad configuration: ${p}\n`)
    process.exitCode = 2
  } else {
    process.stderr.write(`vcs-worker: ${(err as Error).message ?? String(err)}\n`)
    process.exitCode = 1
  }
})
