/**
 * wssmig-send: runs on the source host. Migrates the VM behind --qmp into the unix socket that
 * wssmig-client offers, shows progress, and ends with the outcome (exit 0 only on completed).
 */
import { Option } from "commander";
import { terminationSignal } from "./lib/shutdown.ts";
import { createProgram, integerOption, loggerFor, runMain, secondsOption, type LogOptions } from "./lib/cli.ts";
import { DEFAULT_OUTGOING_SOCKET } from "./lib/defaults.ts";
import { parseByteRate, sendMigration } from "./lib/migration.ts";
import { chooseProgressMode } from "./lib/progress.ts";

const NAME = "wssmig-send";

interface SendOptions extends LogOptions {
  qmp: string;
  socket: string;
  maxBandwidth?: number;
  downtimeLimit?: number;
  multifd?: number;
  postcopy?: boolean;
  postcopyAfter?: number;
}

const program = createProgram(NAME, "Migrate a running QEMU VM (source side) into wssmig-client's socket.")
  .requiredOption("--qmp <path>", "QMP unix socket of the source QEMU (-qmp unix:PATH,server=on,wait=off)")
  .option("--socket <path>", "unix socket wssmig-client listens on", DEFAULT_OUTGOING_SOCKET)
  .option(
    "--max-bandwidth <rate>",
    "bandwidth cap in bytes/s, e.g. 500M or 1G (default: no cap; QEMU's own default would be 128 MiB/s)",
    parseByteRate,
  )
  .option("--downtime-limit <ms>", "longest pause of the VM at switch-over (QEMU's default: 300)", integerOption(1, 2_000_000))
  .option("--multifd <channels>", "send RAM over this many parallel channels (same value on wssmig-receive)", integerOption(1, 255))
  .option("--postcopy", "allow postcopy (same option on wssmig-receive); switches after the first pass over RAM")
  .addOption(
    new Option("--postcopy-after <seconds>", "switch to postcopy this many seconds after the start")
      .argParser(secondsOption(0, 86_400))
      .implies({ postcopy: true }),
  );

runMain(NAME, async () => {
  const options = program.parse().opts<SendOptions>();
  const logger = loggerFor(NAME, options);
  const interrupted = terminationSignal();
  return await sendMigration({
    qmpPath: options.qmp,
    socketPath: options.socket,
    maxBandwidth: options.maxBandwidth,
    downtimeLimitMs: options.downtimeLimit,
    multifdChannels: options.multifd,
    postcopy: options.postcopy,
    postcopyAfterSeconds: options.postcopyAfter,
    logger,
    progressMode: chooseProgressMode(options.logFormat, Boolean(process.stderr.isTTY)),
    interrupted,
  });
});
