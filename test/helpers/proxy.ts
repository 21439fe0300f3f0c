/**
 * HTTP proxies for tests: a real tinyproxy (Debian's package, installed by scripts/setup.sh) with
 * a configuration of the test's making, and an HTTPS front for it (TLS terminated by Bun with a
 * certificate of the test's own CA, the bytes passed on to tinyproxy) for https:// proxy cases.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket, TCPSocketListener } from "bun";

export interface TinyproxyOptions {
  /** Directory for the configuration and the log. */
  dir: string;
  /** Address to listen on (default 127.0.0.1). */
  listen?: string;
  port: number;
  /** Client address allowed to use the proxy (default 127.0.0.1). */
  allow?: string;
  /** Extra configuration lines, e.g. "ConnectPort 443" or "BasicAuth USER PASSWORD". */
  extra?: string[];
  /** argv prefix that runs it elsewhere (a network namespace). */
  prefix?: string[];
}

export interface Tinyproxy {
  url: string;
  /** What tinyproxy logged so far. */
  log(): string;
  stop(): Promise<void>;
}

export function tinyproxyAvailable(): boolean {
  return spawnSync("tinyproxy", ["-v"]).status === 0;
}

export async function startTinyproxy(options: TinyproxyOptions): Promise<Tinyproxy> {
  if (!tinyproxyAvailable()) throw new Error("tinyproxy is missing: run scripts/setup.sh (apt-get install tinyproxy)");
  const listen = options.listen ?? "127.0.0.1";
  const name = `tinyproxy-${options.port}`;
  const logPath = join(options.dir, `${name}.log`);
  const configPath = join(options.dir, `${name}.conf`);
  writeFileSync(logPath, "");
  writeFileSync(
    configPath,
    [
      `Port ${options.port}`,
      `Listen ${listen}`,
      `Allow ${options.allow ?? "127.0.0.1"}`,
      "Timeout 600",
      "MaxClients 100",
      "LogLevel Info",
      `LogFile "${logPath}"`,
      `PidFile "${join(options.dir, `${name}.pid`)}"`,
      ...(options.extra ?? []),
    ].join("\n") + "\n",
  );
  // -d: stay in the foreground, so that killing the child stops the proxy.
  const child = Bun.spawn([...(options.prefix ?? []), "tinyproxy", "-d", "-c", configPath], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const log = () => readFileSync(logPath, "utf8");
  const deadline = Date.now() + 10_000;
  while (!/Accepting connections|listening on/i.test(log())) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill();
      throw new Error(`tinyproxy did not start: ${log()}${await new Response(child.stderr).text()}`);
    }
    await Bun.sleep(50);
  }
  return {
    url: `http://${listen}:${options.port}`,
    log,
    async stop() {
      child.kill("SIGTERM");
      await child.exited;
    },
  };
}

interface FrontLeg {
  peer: Socket<FrontLeg> | null;
  early: Uint8Array[];
}

/**
 * An https:// proxy: accepts TLS with `cert`/`key` on 127.0.0.1 and passes the plain bytes to
 * the HTTP proxy at `proxyPort`. Small writes only (CONNECT lines and a test's probe), so a
 * write the kernel does not take in full is an error here rather than a backlog to keep.
 */
export function startHttpsFront(options: { cert: string; key: string; proxyPort: number }): { url: string; stop(): void } {
  const forward = (to: Socket<FrontLeg>, chunk: Uint8Array) => {
    if (to.write(chunk) !== chunk.byteLength) to.end();
  };
  const listener: TCPSocketListener<FrontLeg> = Bun.listen<FrontLeg>({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: options.cert, key: options.key },
    socket: {
      async open(client) {
        client.data = { peer: null, early: [] };
        const upstream = await Bun.connect<FrontLeg>({
          hostname: "127.0.0.1",
          port: options.proxyPort,
          data: { peer: client, early: [] },
          socket: {
            data: (_socket, chunk) => forward(client, chunk),
            close: () => void client.end(),
            error: () => void client.end(),
          },
        });
        client.data.peer = upstream;
        for (const chunk of client.data.early) forward(upstream, chunk);
      },
      data(client, chunk) {
        if (client.data.peer) forward(client.data.peer, chunk);
        else client.data.early.push(chunk.slice());
      },
      close: (client) => void client.data.peer?.end(),
      error: (client) => void client.data.peer?.end(),
    },
  });
  return { url: `https://127.0.0.1:${listener.port}`, stop: () => listener.stop(true) };
}
