/** The HTTP server under fastify: Node's, with the timeouts a VCS server needs. */
import http from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyServerFactory } from 'fastify'
import type { Config } from '../config/load.js'

/** Node's http server with the timeouts a VCS server needs (docs/configuration.md, "Timeouts"). */
export function serverFactory(config: Config): FastifyServerFactory {
  return (handler) => {
    const server = http.createServer({
      // Node 20 defaults would cut a push after 300 s (requestTimeout): a push or clone may take
      // an hour. Progress is bounded instead by the socket inactivity timeout below.
      requestTimeout: 0,
      headersTimeout: config.headersTimeoutMs,
      keepAliveTimeout: config.keepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(config.headersTimeoutMs, 30_000) / 2,
      // hg sends its arguments as X-HgArg-N headers (16 KiB each, as our children advertise);
      // a discovery with many heads exceeds Node's 16 KiB default by far.
      maxHeaderSize: 1024 * 1024,
    }, handler)
    // A client that half-closes its connection once its request is sent (a raw push that does not
    // wait, a proxy that forwards the FIN) still gets its answer, and its request is not aborted:
    // by default Node destroys a request whose client sent FIN, dropping body bytes not yet read,
    // so a push whose pack had fully arrived was cut before git read its tail (and could not run
    // to completion). A client that is really gone shows at the next write (EPIPE, reset), as ever.
    // `httpAllowHalfOpen` is Node's own switch for this (lib/_http_server.js socketOnEnd; Node 20-24).
    ;(server as http.Server & { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true
    server.setTimeout(config.idleTimeoutMs)
    // Node's headersTimeout only starts with a request's first byte; a connection that never
    // sends one (1,000 idle sockets) would live until idleTimeoutMs. Until its first request
    // a connection gets the headers timeout; from then on the inactivity timeout.
    server.on('connection', (socket: Socket) => socket.setTimeout(config.headersTimeoutMs))
    server.on('request', (req: http.IncomingMessage) => {
      req.socket.setTimeout(config.idleTimeoutMs)
      // half-open allowed: a client that sends FIN before its request body is whole can never
      // finish it, so its connection is closed as Node would without half-open (the request is
      // aborted, its response closes, and what serves it stops)
      const socket = req.socket
      const onEnd = (): void => { if (!req.complete) socket.destroy() }
      socket.once('end', onEnd)
      req.once('end', () => socket.off('end', onEnd))
      req.once('close', () => socket.off('end', onEnd))
    })
    return server
  }
}
