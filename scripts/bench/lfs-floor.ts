/**
 * The Node floor of bench:lfs: the least a Node.js HTTP server can do to serve and receive one
 * file, as a reference beside the worker, never served to users. No auth, no checks, no logs,
 * no admission: `GET /` streams FILE with a read stream (1 MiB reads), `PUT /` pipes the body
 * through SHA-256 into a temp file in DIR and removes it. What separates it from nginx is
 * Node itself: no sendfile (every byte is copied into user space and out again) and a fresh
 * buffer for every chunk of a request body (Node's HTTP parser copies each one).
 * `GET /relay` is the relay floor: the worker's own relay (`pack-relay --file`) spawned for the
 * request with the connection as its stdout, and nothing else: what serving through a process
 * started per download costs, beside nginx, which needs no process (the worker starts its
 * relays ahead of the download).
 * Usage: node lfs-floor.js FILE DIR; prints the port it listens on.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, statSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { PACK_RELAY } from '../../src/process/relay.js'

const FILE = path.resolve(process.argv[2]!)
const DIR = path.resolve(process.argv[3]!)
const { size, ino } = statSync(FILE)
const RELAY_HEAD = `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${size}\r\nConnection: close\r\n\r\n`
let n = 0

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/relay') {
    const relay = spawn(PACK_RELAY, ['60000', RELAY_HEAD, '--file', FILE, String(ino), '0', String(size)], { stdio: ['ignore', req.socket, 'inherit', 'ignore'] })
    relay.once('close', () => req.socket.destroy())
    return
  }
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size })
    createReadStream(FILE, { highWaterMark: 1024 * 1024 }).pipe(res)
    return
  }
  const tmp = path.join(DIR, `floor-upload-${n++}`)
  const hash = createHash('sha256')
  const measure = new Transform({ transform(chunk: Buffer, _enc, cb) { hash.update(chunk); cb(null, chunk) } })
  pipeline(req, measure, createWriteStream(tmp)).then(async () => {
    await rm(tmp, { force: true })
    res.writeHead(200).end(hash.digest('hex'))
  }, async () => {
    await rm(tmp, { force: true })
    res.writeHead(500).end()
  })
})
server.listen(0, '127.0.0.1', () => console.log((server.address() as { port: number }).port))
