#!/usr/bin/env bun
/** wssmig-server: the destination end of the tunnel. */
import { Option } from "commander";
import { createProgram, integerOption, loggerFor, runMain, secondsOption, type LogOptions } from "./lib/cli.ts";
import { loadCredentials } from "./lib/credentials.ts";
import { DEFAULT_CERTS_DIR, DEFAULT_HOST, DEFAULT_INCOMING_SOCKET, DEFAULT_PORT } from "./lib/defaults.ts";
import { ExitCode, WssmigError, describeError } from "./lib/errors.ts";
import { terminationSignal } from "./lib/shutdown.ts";
import { KEEPALIVE_MISSES_ALLOWED, serverIdleTimeoutSeconds } from "./lib/keepalive.ts";
import { startTunnelServer } from "./lib/tunnel-server.ts";

const NAME = "wssmig-server";

interface ServerOptions extends LogOptions {
  host: string;
  port: number;
  certs: string;
  socket: string;
  waitForDestination: number;
  keepalive: number;
  maxStreams: number;
  progressInterval: number;
}

const program = createProgram(NAME, "Destination end of the wssmig tunnel: accepts wss:// streams from wssmig-client (client certificate required) and forwards each into the unix socket the destination QEMU listens on.")
  .option("--host <address>", "address to listen on", DEFAULT_HOST)
  .option("--port <port>", "TCP port to listen on (0: any free port, logged at start)", integerOption(0, 65535), DEFAULT_PORT)
  .option("--certs <dir>", "directory with ca.pem, server-cert.pem and server-key.pem", DEFAULT_CERTS_DIR)
  .option("--socket <path>", "unix socket the destination QEMU listens on (wssmig-receive --socket)", DEFAULT_INCOMING_SOCKET)
  .addOption(new Option("--wait-for-destination <seconds>", "how long a stream waits for the destination QEMU to listen").argParser(secondsOption(0, 3600)).default(60))
  .addOption(new Option("--keepalive <seconds>", `keepalive interval; a stream silent for ${KEEPALIVE_MISSES_ALLOWED} intervals (at least 8 s) is closed as dead`).argParser(secondsOption(1, 300)).default(5))
  .addOption(new Option("--max-streams <n>", "most streams open at once (multifd uses channels + 1)").argParser(integerOption(1, 1024)).default(64))
  .addOption(new Option("--progress-interval <seconds>", "seconds between per-stream progress log lines; 0 turns them off").argParser(secondsOption(0, 3600)).default(5));

async function main(): Promise<number> {
  const options = program.parse().opts<ServerOptions>();
  const stopSignal = terminationSignal();
  const log = loggerFor(NAME, options);
  const credentials = await loadCredentials(options.certs, "server");
  for (const warning of credentials.warnings) log.warn(warning);
  let server;
  try {
    server = startTunnelServer({
      host: options.host,
      port: options.port,
      credentials,
      destinationSocket: options.socket,
      destinationWaitSeconds: options.waitForDestination,
      idleTimeoutSeconds: serverIdleTimeoutSeconds(options.keepalive),
      maxStreams: options.maxStreams,
      progressIntervalSeconds: options.progressInterval,
      maxMessageBytes: 16 * 1024 * 1024,
      log,
    });
  } catch (error) {
    const text = describeError(error);
    if (/EADDRINUSE|in use/i.test(text)) {
      throw new WssmigError(`port ${options.port} on ${options.host} is already in use; stop the other process or choose --port`, ExitCode.Config);
    }
    throw new WssmigError(`cannot listen on ${options.host}:${options.port}: ${text}`, ExitCode.Config);
  }
  const signal = await stopSignal;
  await server.stop(`wssmig-server stopped by ${signal}`);
  log.info(`stopped by ${signal}`);
  return ExitCode.Ok;
}

await runMain(NAME, main);
