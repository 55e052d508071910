import { isIP } from 'node:net'
import proxyAddr from '@fastify/proxy-addr'
import type { FastifyRequest } from 'fastify'

/**
 * Headers of one hop (RFC 9110 section 7.6.1), and the framing ones Node sets itself: never
 * passed on from an upstream answer (fastify-reply-from strips the same).
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'transfer-encoding', 'upgrade', 'trailer', 'content-length', 'date'])

/** A Host header fit to build a URL from (name or IPv4 or [IPv6], optional port): the clone bundle and LFS hrefs. */
export const SANE_HOST = /^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:\d{1,5})?$/

/**
 * Addresses the worker believes forwarding headers from (trustedProxies: addresses, CIDRs, or
 * `loopback`), compiled by the same proxy-addr as fastify's trustProxy, which app.ts gives this
 * very function: req.ip, req.host and req.protocol and the URLs built here trust the same peers.
 */
export function trustedPeers(list: readonly string[]): (address: string | undefined, hop?: number) => boolean {
  if (!list.length) return () => false
  const trust = proxyAddr.compile([...list])
  return (address, hop = 0) => address !== undefined && trust(address, hop)
}

/**
 * The base URL (scheme, host, optional path, no trailing slash) a URL the worker hands out
 * starts with: `publicUrl` when set; else the Host (and the scheme of X-Forwarded-Proto) of a
 * request that came through a trusted proxy; else the address and port the connection reached,
 * never a Host header anyone could have written. Undefined when the proxy's Host is unusable.
 */
export function publicBase(req: FastifyRequest, publicUrl: string, trusted: (address: string | undefined) => boolean): string | undefined {
  if (publicUrl) return publicUrl.replace(/\/+$/, '')
  const socket = req.raw.socket
  if (trusted(socket.remoteAddress)) return SANE_HOST.test(req.host) ? `${req.protocol}://${req.host}` : undefined
  const local = socket.localAddress ?? '127.0.0.1'
  const host = isIP(local) === 6 && !local.startsWith('::ffff:') ? `[${local}]` : local.replace(/^::ffff:/, '')
  return `${(socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'}://${host}:${socket.localPort}`
}
