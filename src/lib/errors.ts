/**
 * Exit codes and the one error type every role turns into "one line, one exit code".
 * A WssmigError's message is written for the admin: what went wrong, then what to do.
 */
export const ExitCode = {
  Ok: 0,
  /** The job ran and failed: migration failed, stream broken. */
  Failure: 1,
  /** Bad command line. */
  Usage: 2,
  /** Certificates, keys or files are wrong; fix them and run again. */
  Config: 3,
  /** The peer (server, QEMU) could not be reached or went away. */
  Unreachable: 4,
  /** Stopped by SIGINT/SIGTERM (or a migration cancelled on request). */
  Interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class WssmigError extends Error {
  readonly exitCode: ExitCode;
  constructor(message: string, exitCode: ExitCode = ExitCode.Failure, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "WssmigError";
    this.exitCode = exitCode;
  }
}

/** The text of any thrown value, for messages. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
