/**
 * wssmig-receive: runs on the destination host. Tells the waiting QEMU (started with
 * -incoming defer) to accept the migration on the unix socket wssmig-server forwards into,
 * then follows it: exit 0 when the VM arrived, non-zero with QEMU's error otherwise.
 */
import { terminationSignal } from "./lib/shutdown.ts";
import { createProgram, integerOption, loggerFor, runMain, secondsOption, type LogOptions } from "./lib/cli.ts";
import { DEFAULT_INCOMING_SOCKET } from "./lib/defaults.ts";
import { receiveMigration } from "./lib/migration.ts";

const NAME = "wssmig-receive";

interface ReceiveOptions extends LogOptions {
  qmp: string;
  socket: string;
  multifd?: number;
  postcopy?: boolean;
  timeout?: number;
}

const program = createProgram(NAME, "Receive a migrating QEMU VM (destination side) on the socket wssmig-server forwards to.")
  .requiredOption("--qmp <path>", "QMP unix socket of the destination QEMU, started with -incoming defer")
  .option("--socket <path>", "unix socket for QEMU to listen on (wssmig-server's --socket)", DEFAULT_INCOMING_SOCKET)
  .option("--multifd <channels>", "expect this many parallel channels (same value as wssmig-send)", integerOption(1, 255))
  .option("--postcopy", "allow postcopy (same option as wssmig-send)")
  .option("--timeout <seconds>", "give up if the migration has not ended by then (default: wait)", secondsOption(1, 7 * 86_400));

runMain(NAME, async () => {
  const options = program.parse().opts<ReceiveOptions>();
  const logger = loggerFor(NAME, options);
  const interrupted = terminationSignal();
  return await receiveMigration({
    qmpPath: options.qmp,
    socketPath: options.socket,
    multifdChannels: options.multifd,
    postcopy: options.postcopy,
    timeoutSeconds: options.timeout,
    logger,
    interrupted,
  });
});
