#!/usr/bin/env bun
/** wssmig-client: the source end of the tunnel. */
import { Option } from "commander";
import { createProgram, loggerFor, runMain, secondsOption, type LogOptions } from "./lib/cli.ts";
import { loadCredentials } from "./lib/credentials.ts";
import { DEFAULT_CERTS_DIR, DEFAULT_OUTGOING_SOCKET } from "./lib/defaults.ts";
import { ExitCode, WssmigError } from "./lib/errors.ts";
import { terminationSignal } from "./lib/shutdown.ts";
import { KEEPALIVE_MISSES_ALLOWED } from "./lib/keepalive.ts";
import { loadProxySettings } from "./lib/proxy.ts";
import { startTunnelClient } from "./lib/tunnel-client.ts";

const NAME = "wssmig-client";

interface ClientOptions extends LogOptions {
  server: string;
  certs: string;
  socket: string;
  serverName?: string;
  proxy?: string;
  proxyCa?: string;
  proxyLoginFile?: string;
  openTimeout: number;
  keepalive: number;
  progressInterval: number;
}

function parseServerUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new WssmigError(`--server ${text} is not a URL; write it as wss://HOST:PORT`, ExitCode.Usage);
  }
  if (url.protocol !== "wss:") {
    throw new WssmigError(`--server ${text} must start with wss:// (the tunnel is always TLS)`, ExitCode.Usage);
  }
  return url.toString();
}

const program = createProgram(NAME, "Source end of the wssmig tunnel: verifies wssmig-server at start, then offers a unix socket that the source QEMU migrates to and carries each connection over its own wss:// WebSocket.")
  .requiredOption("--server <url>", "wssmig-server address, e.g. wss://dest.example:8766")
  .option("--certs <dir>", "directory with ca.pem, client-cert.pem and client-key.pem", DEFAULT_CERTS_DIR)
  .option("--socket <path>", "unix socket to offer the source QEMU (wssmig-send --socket)", DEFAULT_OUTGOING_SOCKET)
  .option("--server-name <name>", "name the server certificate must carry, when it differs from the host in --server")
  .option("--proxy <url>", "reach the server through this HTTP proxy (CONNECT), e.g. http://proxy.example:3128 or http://USER:PASSWORD@proxy.example:3128; proxy environment variables are not read")
  .option("--proxy-ca <file>", "PEM file of the CA that signed an https:// proxy's certificate (default: the roots built into Bun)")
  .option("--proxy-login-file <file>", "file (mode 0600) with one line USER:PASSWORD for the proxy, instead of the login in --proxy where other local users can read it")
  .addOption(new Option("--open-timeout <seconds>", "how long opening one stream may take").argParser(secondsOption(1, 3600)).default(90))
  .addOption(new Option("--keepalive <seconds>", `seconds between pings; the server counts as gone after ${KEEPALIVE_MISSES_ALLOWED} unanswered`).argParser(secondsOption(1, 300)).default(5))
  .addOption(new Option("--progress-interval <seconds>", "seconds between per-stream progress log lines; 0 turns them off").argParser(secondsOption(0, 3600)).default(5));

async function main(): Promise<number> {
  const options = program.parse().opts<ClientOptions>();
  const stopSignal = terminationSignal();
  const log = loggerFor(NAME, options);
  const serverUrl = parseServerUrl(options.server);
  if ((options.proxyCa || options.proxyLoginFile) && !options.proxy) throw new WssmigError("--proxy-ca and --proxy-login-file need --proxy", ExitCode.Usage);
  const proxy = options.proxy ? await loadProxySettings({ url: options.proxy, caFile: options.proxyCa, loginFile: options.proxyLoginFile }) : undefined;
  const credentials = await loadCredentials(options.certs, "client");
  for (const warning of [...(proxy?.warnings ?? []), ...credentials.warnings]) log.warn(warning);
  const client = await startTunnelClient({
    serverUrl,
    serverName: options.serverName,
    proxy,
    credentials,
    listenSocket: options.socket,
    openTimeoutSeconds: options.openTimeout,
    keepaliveSeconds: options.keepalive,
    progressIntervalSeconds: options.progressInterval,
    log,
  });
  const signal = await stopSignal;
  await client.stop(`wssmig-client stopped by ${signal}`);
  log.info(`stopped by ${signal}`);
  return ExitCode.Ok;
}

await runMain(NAME, main);
