/**
 * Headers of one hop (RFC 9110 section 7.6.1), and the framing ones Node sets itself: never
 * passed on from an upstream answer (fastify-reply-from strips the same).
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'transfer-encoding', 'upgrade', 'trailer', 'content-length', 'date'])
