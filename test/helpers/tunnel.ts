/** Starts the two tunnel ends (compiled binaries) on loopback for a test. */
import { existsSync } from "node:fs";
import { RoleProcess, stopAll } from "./processes.ts";

export interface TunnelOptions {
  /** Certificates directory for the server (ca.pem, server-cert.pem, server-key.pem). */
  serverCerts: string;
  /** Certificates directory for the client; defaults to serverCerts. */
  clientCerts?: string;
  /** Unix socket the destination (QEMU or a sink) listens on. */
  destinationSocket: string;
  /** Unix socket the client offers to the source. */
  sourceSocket: string;
  serverArgs?: string[];
  clientArgs?: string[];
  /** Host name the client dials (default 127.0.0.1). */
  dialHost?: string;
  clientEnv?: Record<string, string | undefined>;
  /** Address the server listens on (default 127.0.0.1). */
  serverHost?: string;
  /** Command prefixes that run each end elsewhere (a network namespace). */
  serverPrefix?: string[];
  clientPrefix?: string[];
  /** Extra environment for the server, e.g. CA variables it must ignore. */
  serverEnv?: Record<string, string | undefined>;
}

export interface Tunnel {
  server: RoleProcess;
  client: RoleProcess;
  port: number;
  url: string;
  stop(): Promise<void>;
}

export async function startServer(
  options: Pick<TunnelOptions, "serverCerts" | "destinationSocket" | "serverArgs" | "serverHost" | "serverPrefix" | "serverEnv"> & {
    /** TCP port (default 0: any free port), e.g. to restart a server where its clients dial. */
    port?: number;
  },
): Promise<{ server: RoleProcess; port: number }> {
  const server = RoleProcess.spawn("server", [
    "--host", options.serverHost ?? "127.0.0.1", "--port", String(options.port ?? 0),
    "--certs", options.serverCerts,
    "--socket", options.destinationSocket,
    ...(options.serverArgs ?? []),
  ], options.serverEnv ?? {}, options.serverPrefix);
  const line = await server.waitForLine(/listening on wss:\/\//);
  const port = Number(/:(\d+)\/wssmig/.exec(line)![1]);
  return { server, port };
}

export function spawnClient(url: string, certs: string, socket: string, args: string[] = [], env: Record<string, string | undefined> = {}, prefix: string[] = []): RoleProcess {
  return RoleProcess.spawn("client", ["--server", url, "--certs", certs, "--socket", socket, ...args], env, prefix);
}

export async function startTunnel(options: TunnelOptions): Promise<Tunnel> {
  const { server, port } = await startServer(options);
  const url = `wss://${options.dialHost ?? "127.0.0.1"}:${port}`;
  const client = spawnClient(url, options.clientCerts ?? options.serverCerts, options.sourceSocket, options.clientArgs, options.clientEnv, options.clientPrefix);
  try {
    await client.waitForLine(/listening on .* for the source QEMU/);
  } catch (error) {
    await stopAll([server, client]);
    throw error;
  }
  if (!existsSync(options.sourceSocket)) throw new Error(`client logged listening but ${options.sourceSocket} is missing`);
  return { server, client, port, url, stop: () => stopAll([client, server]) };
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}
