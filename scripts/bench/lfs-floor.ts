/**
 * The Node floor of bench:lfs: the least a Node.js HTTP server can do to serve and receive one
 * file, as a reference beside the worker, never served to users. No auth, no checks, no logs,
 * no admission: `GET /` streams FILE with a read stream (1 MiB reads), `PUT /` pipes the body
 * through SHA-256 into a temp file in DIR and removes it. What separates it from nginx is
 * Node itself: no sendfile (every byte is copied into user space and out again) and a fresh
 * buffer for every chunk of a request body (Node's HTTP parser copies each one).
 * Usage: node lfs-floor.js FILE DIR; prints the port it listens on.
 */
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, statSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'

const FILE = path.resolve(process.argv[2]!)
const DIR = path.resolve(process.argv[3]!)
const size = statSync(FILE).size
let n = 0

const server = http.createServer((req, res) => {
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
