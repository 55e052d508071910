/** A mistake in how a command was called: exit 2, its one-line reason and a one-line hint. */
export class UsageError extends Error {
  /** the usage line of the command that was meant, shown under the reason */
  constructor(message: string, readonly hint?: string) {
    super(message)
  }
}
