/**
 * The HTTP floor of bench:git: the least any smart-HTTP server can do for a clone, as a
 * reference, never served to users. No auth, no checks, no logs: the ref advertisement from
 * `git upload-pack --advertise-refs`; for the fetch, the request body read whole, a status line
 * with `Connection: close`, then `git upload-pack --stateless-rpc` with the client's TCP socket
 * as its stdout, so the pack reaches the client without passing through this process at all.
 * What remains between it and `git clone --no-local` is the client's side of HTTP (curl,
 * git-remote-http and its pipe to fetch-pack) and the extra round trips.
 * Usage: node http-floor.js REPOS_DIR; prints the port it listens on.
 */
import http from 'node:http'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { gunzipSync } from 'node:zlib'

const REPOS = path.resolve(process.argv[2]!)

const server = http.createServer((req, res) => {
  const m = /^\/([A-Za-z0-9_-]+\.git)\/(info\/refs|git-upload-pack)(\?|$)/.exec(req.url ?? '')
  if (!m) {
    res.writeHead(404).end()
    return
  }
  const repo = path.join(REPOS, m[1]!)
  const protocol = req.headers['git-protocol']
  // git's config from the environment (GIT_CONFIG_COUNT...) passes through: bench:storm's pack hook
  const config = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('GIT_CONFIG_')))
  const env = { PATH: process.env.PATH, ...config, ...(typeof protocol === 'string' ? { GIT_PROTOCOL: protocol } : {}) }
  if (m[2] === 'info/refs') {
    const git = spawn('git', ['upload-pack', '--stateless-rpc', '--advertise-refs', repo], { env, stdio: ['ignore', 'pipe', 'inherit'] })
    res.writeHead(200, { 'content-type': 'application/x-git-upload-pack-advertisement', 'cache-control': 'no-cache' })
    if (!protocol) res.write('001e# service=git-upload-pack\n0000')
    git.stdout.pipe(res)
    return
  }
  const body: Buffer[] = []
  req.on('data', (c: Buffer) => body.push(c))
  req.on('end', () => {
    const socket = req.socket
    const head = 'HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n'
    socket.write(head, () => {
      const git = spawn('git', ['upload-pack', '--stateless-rpc', repo], { env, stdio: ['pipe', socket, 'inherit'] })
      const raw = Buffer.concat(body)
      git.stdin!.end(req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw)
      git.on('exit', () => socket.destroy())
    })
  })
})
server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as { port: number }).port}\n`))
