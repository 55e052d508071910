/**
 * Headers of one hop (RFC 9110 section 7.6.1), and the framing ones Node sets itself: never
 * passed on from an upstream answer (fastify-reply-from strips the same).
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'transfer-encoding', 'upgrade', 'trailer', 'content-length', 'date'])

/** A Host header fit to build a URL from (name or IPv4 or [IPv6], optional port): the clone bundle and LFS hrefs. */
export const SANE_HOST = /^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:\d{1,5})?$/
