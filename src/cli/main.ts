#!/usr/bin/env node
/**
 * `vcs-worker` commands. Exit codes (DESIGN.md): 0 ok, 2 bad usage or configuration (every
 * problem printed, each naming its key), 1 runtime failure.
 */
import { parseArgs } from 'node:util'
import { mkdirSync, statSync } from 'node:fs'
import { buildApp } from '../app.js'
import { loadConfig, flagSpec, type Config } from '../config/load.js'
import { ConfigError } from '../errors.js'
import { createLogger } from '../log.js'
import { createGitRunner } from '../git/spawn.js'
import { openStore } from '../auth/open.js'
import { storeCopy } from './store-copy.js'
import { lfsCommand, LfsUsageError } from './lfs.js'
import { runAdmin, UsageError, type AdminContext } from './admin.js'
import { checkPoolSpec, defaultPool, haproxyConfig, loadPoolSpec } from '../../tools/pool/haproxy-config.js'

const USAGE = `usage:
  vcs-worker serve [--config FILE] [--host H] [--port N] [--repos DIR] [--data DIR] [--hg-processes N] [...]
  vcs-worker repo create PATH --git|--hg [--public] [--default-branch NAME]
  vcs-worker repo visibility PATH public|private
  vcs-worker repo default-branch PATH BRANCH
  vcs-worker repo list [--json]
  vcs-worker user list [--json]
  vcs-worker token list NAME [--json]     (id, created, expires, last used; never the secret)
  vcs-worker grant list [--user NAME | --repo PATH] [--json]
  vcs-worker user add|passwd NAME          (password on standard input)
  vcs-worker user remove NAME
  vcs-worker user unlock NAME | --address ADDR   (clears a login lockout on every worker)
  vcs-worker token create NAME [--expires 30d|DATE]
  vcs-worker token revoke NAME ID
  vcs-worker grant NAME PATH read|write|admin
  vcs-worker revoke NAME PATH
  vcs-worker haproxy-config [--pool FILE.json] [--workers N]   (the default pool of \`npm run pool\` without --pool)
  vcs-worker protect PATH REF-PATTERN [--users a,b]
  vcs-worker unprotect PATH REF-PATTERN
  vcs-worker store copy --from FILE|URL --to URL|FILE   (SQLite to PostgreSQL or back, into an empty store)
  vcs-worker lfs fsck PATH                 (re-hash a repo's Git LFS objects; names bad ones, deletes nothing)
every command takes --data DIR and --repos DIR (or --config FILE) to find the store and repos,
and --auth-store sqlite|postgres://... for the accounts (default: DATA/auth.sqlite)`

function parse(argv: string[]) {
  const options = {
    ...flagSpec(),
    git: { type: 'boolean' as const }, hg: { type: 'boolean' as const }, public: { type: 'boolean' as const },
    expires: { type: 'string' as const }, users: { type: 'string' as const }, help: { type: 'boolean' as const },
    pool: { type: 'string' as const }, workers: { type: 'string' as const },
    json: { type: 'boolean' as const }, user: { type: 'string' as const }, repo: { type: 'string' as const },
    from: { type: 'string' as const }, to: { type: 'string' as const }, address: { type: 'string' as const },
  }
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true, allowNegative: true }) // --no-<flag> turns a boolean off
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

function configFrom(values: Record<string, string | boolean | undefined>): Config {
  return loadConfig({ flags: values, env: process.env })
}

/** Creates the data dir layout; the repos dir must exist unless it is the default one. */
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

async function serve(config: Config, explicitRepos: boolean): Promise<void> {
  prepareDirs(config, explicitRepos)
  const logger = createLogger(config.logLevel)
  const git = createGitRunner(config)
  let version: string
  try {
    version = (await git.exec(['--version'])).trim()
  } catch (err) {
    throw new Error(`git is not usable (gitBin=${config.gitBin}): ${(err as Error).message}`)
  }
  const app = await buildApp(config, { logger, git })
  let address: string
  try {
    address = await app.listen({ host: config.host, port: config.port, backlog: 2048 })
  } catch (err) {
    await app.close() // the hg children and timers it started would keep the process alive
    throw new Error(`cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`)
  }
  const port = (app.server.address() as { port: number }).port
  logger.info({ address, git: version, repos: config.reposDir }, 'vcs-worker listening')
  const host = config.host.includes(':') ? `[${config.host}]` : config.host
  // one write: whoever waits for the first line finds the others with it (the agent line last: `npm run pool` waits for it)
  const lines = [`vcs-worker listening on http://${host}:${port}/ (repos in ${config.reposDir})`, `try: git clone http://${host}:${port}/demo.git`]
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
    logger.info({ signal }, 'shutting down: draining')
    // SIGTERM drains (the deploy path); SIGINT (Ctrl-C at a terminal) closes without the grace.
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
  if (values.help || command === 'help' || !command) {
    process.stdout.write(`${USAGE}\n`)
    return command || values.help ? 0 : 2
  }
  if (command === 'haproxy-config') {
    if (args.length) throw new UsageError(`haproxy-config takes no arguments, got ${args.join(' ')}`)
    const v = values as Record<string, string | undefined>
    if (v.pool !== undefined && v.workers !== undefined) throw new UsageError('give --pool or --workers, not both')
    const workers = v.workers === undefined ? 2 : Number(v.workers)
    if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new UsageError(`--workers: expected 1..64, got ${v.workers}`)
    const spec = v.pool !== undefined ? loadPoolSpec(v.pool) : checkPoolSpec(defaultPool(workers))
    process.stdout.write(haproxyConfig(spec))
    return 0
  }
  const config = configFrom(values as Record<string, string | boolean | undefined>)
  switch (command) {
    case 'serve':
      if (args.length) throw new UsageError(`serve takes no arguments, got ${args.join(' ')}`)
      await serve(config, (values as Record<string, unknown>).repos !== undefined || process.env.VCS_WORKER_REPOS !== undefined)
      return -1 // keeps running
    case 'lfs':
      try {
        return await lfsCommand(args, config, (line) => process.stdout.write(`${line}\n`))
      } catch (err) {
        if (err instanceof LfsUsageError) throw new UsageError(err.message)
        throw err
      }
    case 'store':
      await storeCopy(args, values as { from?: string; to?: string }, config, (line) => process.stdout.write(`${line}\n`))
      return 0
    default: {
      prepareDirs(config, (values as Record<string, unknown>).repos !== undefined)
      const store = await openStore(config)
      try {
        await runAdmin(command, args, { config, store, flags: values as AdminContext['flags'], out: (line) => process.stdout.write(`${line}\n`) })
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
  if (err instanceof UsageError) {
    process.stderr.write(`vcs-worker: ${err.message}\n${USAGE}\n`)
    process.exitCode = 2
  } else if (err instanceof ConfigError) {
    for (const p of err.problems) process.stderr.write(`vcs-worker: bad configuration: ${p}\n`)
    process.exitCode = 2
  } else {
    process.stderr.write(`vcs-worker: ${(err as Error).message ?? String(err)}\n`)
    process.exitCode = 1
  }
})
