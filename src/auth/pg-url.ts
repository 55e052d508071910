/** PostgreSQL URLs as the worker shows them: never with their password. */

/** The URL with its password replaced, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    for (const key of [...u.searchParams.keys()]) if (/pass/i.test(key)) u.searchParams.set(key, '***')
    return u.toString()
  } catch {
    return 'postgres://(unparseable URL)'
  }
}
