/**
 * What every entry point shares: the commander program with --version, --log-level and
 * --log-format, option parsers that fail with a usage error, and runMain, which turns any
 * failure into one line on stderr and an exit code.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import packageJson from "../../package.json" with { type: "json" };
import { ExitCode, WssmigError, describeError } from "./errors.ts";
import { LOG_FORMATS, LOG_LEVELS, createLogger, type LogFormat, type LogLevel, type Logger } from "./log.ts";

export const VERSION: string = packageJson.version;

export interface LogOptions {
  logLevel: LogLevel;
  logFormat: LogFormat;
}

/** A commander program for one role, with the options every role has. */
export function createProgram(binaryName: string, description: string): Command {
  return new Command(binaryName)
    .description(description)
    .version(`${binaryName} ${VERSION}`, "-V, --version", "print the version and exit")
    .addOption(new Option("--log-level <level>", "log verbosity").choices(LOG_LEVELS).default("info"))
    .addOption(
      new Option("--log-format <format>", "text: readable lines; json: one JSON object per line")
        .choices(LOG_FORMATS)
        .default("text"),
    )
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput({ outputError: (text, write) => write(text) })
    .exitOverride((error) => {
      // --help and --version end with code 0; everything else commander rejects is a usage error.
      process.exit(error.exitCode === 0 ? 0 : ExitCode.Usage);
    });
}

export function loggerFor(binaryName: string, options: LogOptions): Logger {
  return createLogger({ name: binaryName, level: options.logLevel, format: options.logFormat });
}

/** Parser for options that take a whole number within bounds. */
export function integerOption(min: number, max: number) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    }
    return value;
  };
}

/** Parser for options that take a number of seconds (fractions allowed). */
export function secondsOption(min: number, max: number) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < min || value > max) {
      throw new InvalidArgumentError(`expected a number of seconds from ${min} to ${max}.`);
    }
    return value;
  };
}

/**
 * Runs a role's main function. A WssmigError prints its message as one line and exits with
 * its code; anything else is a bug or an unexpected condition and exits 1 with its text.
 * The main function's resolved value is the exit code.
 */
export async function runMain(binaryName: string, main: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main();
  } catch (error) {
    const exitCode = error instanceof WssmigError ? error.exitCode : ExitCode.Failure;
    const message = describeError(error).replace(/\s*\n\s*/g, " ");
    process.stderr.write(`${binaryName}: error: ${message}\n`);
    code = exitCode;
  }
  // Give pino's synchronous stderr writes and any final socket close a turn to finish.
  await new Promise((resolve) => setImmediate(resolve));
  process.exit(code);
}
