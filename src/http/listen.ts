/** Listening on a TCP port, as a promise. */
import type net from 'node:net'

/** Listens on host:port (0 = any free port); resolves with the port, rejects with the listen error. */
export function listenOn(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => {
      server.off('error', reject)
      resolve((server.address() as net.AddressInfo).port)
    })
  })
}
