/**
 * wssmig-client --proxy: hosts that reach each other only through an HTTP proxy. The proxy is
 * a real tinyproxy; a real QEMU migration crosses it between two test hosts (network
 * namespaces) where wssmig-server listens on the destination host's loopback only, so nothing
 * but the proxy can reach it. The refusals run on loopback, each with its exact message.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCertSet, makeForeignCaSet, type TestCertSet } from "./helpers/certs.ts";
import { createTestLink, namespacesAvailable } from "./helpers/netns.ts";
import { RoleProcess, stopAll } from "./helpers/processes.ts";
import { startHttpsFront, startTinyproxy, type Tinyproxy } from "./helpers/proxy.ts";
import { cleanupAllVms, sha256File, startVmPair } from "./helpers/qemu.ts";
import { freePort, spawnClient, startServer, startTunnel } from "./helpers/tunnel.ts";

const PROXY_PASSWORD = "s3cret-pw";

let dir: string;
let certs: TestCertSet;
/** Certificates of another CA, for the https:// proxy: never the tunnel's own. */
let proxyCerts: TestCertSet;
let counter = 0;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "wssmig-proxy-"));
  certs = await makeCertSet(join(dir, "certs"));
  proxyCerts = await makeCertSet(join(dir, "proxy-certs"), { serverCn: "proxy.test", sans: ["127.0.0.1"] });
});

afterEach(async () => {
  for (const cleanUp of cleanups.splice(0).reverse()) await cleanUp();
  await cleanupAllVms();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function proxy(extra: string[] = []): Promise<Tinyproxy> {
  const started = await startTinyproxy({ dir, port: freePort(), extra });
  cleanups.push(() => started.stop());
  return started;
}

/** A server on loopback whose destination socket nobody listens on (these tests stop at the probe). */
async function server(serverCerts = certs.dir): Promise<{ url: string; port: number }> {
  const { server, port } = await startServer({ serverCerts, destinationSocket: join(dir, `unused-${counter++}.sock`) });
  cleanups.push(() => stopAll([server]));
  return { url: `wss://localhost:${port}`, port };
}

/** Runs wssmig-client until it exits (a refusal) or listens (success, then stops it). */
async function runClient(url: string, args: string[]): Promise<{ exitCode: number | "listening"; lastLine: string; output: string; socket: string }> {
  const socket = join(dir, `client-${counter++}.sock`);
  const client = spawnClient(url, certs.dir, socket, args);
  const listening = client.waitForLine(/listening on .* for the source QEMU/, 20_000).then(() => "listening" as const, () => null);
  const exitCode = await Promise.race([client.exited, listening]);
  await stopAll([client]);
  return { exitCode: exitCode ?? (await client.exited), lastLine: client.lines.filter((line) => line.trim()).at(-1) ?? "", output: client.stderr, socket };
}

describe("wssmig-client --proxy: refusals name the proxy's answer and the fix", () => {
  test("through a plain proxy the server is verified and the client listens", async () => {
    const { url, port } = await server();
    const http = await proxy();
    const result = await runClient(url, ["--proxy", http.url]);
    expect(result.exitCode).toBe("listening");
    expect(result.output).toContain(`server verified: TLS and WebSocket handshake completed server=${url}/ proxy=${http.url}`);
    expect(http.log()).toContain(`CONNECT localhost:${port} HTTP/1.1`);
  });

  test("through the proxy the server certificate is checked as without it: another CA's is refused, exit 3", async () => {
    const foreign = await makeForeignCaSet(join(dir, `foreign-${counter++}`), certs);
    const { url } = await server(foreign.dir);
    const http = await proxy();
    const result = await runClient(url, ["--proxy", http.url]);
    expect(result.exitCode).toBe(3);
    expect(result.lastLine).toBe(
      `wssmig-client: error: the server certificate is not signed by the CA in ${certs.ca} (TLS handshake failed: unable to verify the first certificate); use the ca.pem that wssmig-gencerts made together with the server's certificate`,
    );
    expect(existsSync(result.socket)).toBe(false);
  });

  test("a proxy that does not allow CONNECT to the server's port: exit 4", async () => {
    const { url, port } = await server();
    const strict = await proxy(["ConnectPort 443"]);
    const result = await runClient(url, ["--proxy", strict.url]);
    expect(result.exitCode).toBe(4);
    expect(result.lastLine).toBe(
      `wssmig-client: error: the proxy ${strict.url} does not allow a tunnel to localhost:${port} (403 Access violation); ask its administrator to allow CONNECT to port ${port}`,
    );
    expect(existsSync(result.socket)).toBe(false);
  });

  test("a proxy that wants a login: exit 3 without one or with a wrong one, the password never printed; the right one works", async () => {
    const { url } = await server();
    const guarded = await proxy([`BasicAuth alice ${PROXY_PASSWORD}`]);
    const address = guarded.url.slice("http://".length);

    const anonymous = await runClient(url, ["--proxy", guarded.url]);
    expect(anonymous.exitCode).toBe(3);
    expect(anonymous.lastLine).toBe(
      `wssmig-client: error: the proxy ${guarded.url} requires a login (407 Proxy Authentication Required); put USER:PASSWORD in a file of mode 0600 and pass --proxy-login-file, or give it in --proxy as http://USER:PASSWORD@HOST:PORT`,
    );

    const wrong = await runClient(url, ["--proxy", `http://alice:wrong-${PROXY_PASSWORD}@${address}`]);
    expect(wrong.exitCode).toBe(3);
    expect(wrong.lastLine).toBe(`wssmig-client: error: the proxy http://alice:***@${address} did not accept the user and password in --proxy (401 Unauthorized); check them`);
    expect(wrong.output).not.toContain(PROXY_PASSWORD);

    const inUrl = await runClient(url, ["--proxy", `http://alice:${PROXY_PASSWORD}@${address}`]);
    expect(inUrl.exitCode).toBe("listening");
    expect(inUrl.output).toContain("the proxy password in --proxy can be read by other local users (ps, /proc)");
    expect(inUrl.output).not.toContain(PROXY_PASSWORD);
  });

  test("--proxy-login-file: used when only its owner can read it, refused with the chmod to run otherwise", async () => {
    const { url } = await server();
    const guarded = await proxy([`BasicAuth alice ${PROXY_PASSWORD}`]);
    const loginFile = join(dir, `login-${counter++}`);
    writeFileSync(loginFile, `alice:${PROXY_PASSWORD}\n`, { mode: 0o644 });
    chmodSync(loginFile, 0o644);

    const open = await runClient(url, ["--proxy", guarded.url, "--proxy-login-file", loginFile]);
    expect(open.exitCode).toBe(3);
    expect(open.lastLine).toBe(`wssmig-client: error: proxy login file ${loginFile} has mode 0644, so other users can read or change it; run chmod 600 ${loginFile}`);

    chmodSync(loginFile, 0o600);
    const right = await runClient(url, ["--proxy", guarded.url, "--proxy-login-file", loginFile]);
    expect(right.exitCode).toBe("listening");
    expect(right.output).not.toContain("can be read by other local users");
    expect(right.output).not.toContain(PROXY_PASSWORD);
  });

  test("the proxy cannot reach the server: exit 4 naming the server's address", async () => {
    const http = await proxy();
    const port = freePort();
    const result = await runClient(`wss://localhost:${port}`, ["--proxy", http.url]);
    expect(result.exitCode).toBe(4);
    expect(result.lastLine).toBe(
      `wssmig-client: error: the proxy ${http.url} could not connect to localhost:${port} (500 Unable to connect); check that wssmig-server runs there and that the proxy can reach that host and port`,
    );
  });

  test("nothing listens at the proxy's address: exit 4", async () => {
    const { url } = await server();
    const proxyUrl = `http://127.0.0.1:${freePort()}`;
    const result = await runClient(url, ["--proxy", proxyUrl]);
    expect(result.exitCode).toBe(4);
    expect(result.lastLine).toBe(`wssmig-client: error: cannot reach the proxy ${proxyUrl} (Failed to connect); check --proxy's host and port, and that the proxy runs`);
  });

  test("an https:// proxy is trusted through --proxy-ca only, and its certificate is told apart from the server's", async () => {
    const { url } = await server();
    const http = await proxy();
    const front = startHttpsFront({
      cert: readFileSync(proxyCerts.serverCert, "utf8"),
      key: readFileSync(proxyCerts.serverKey, "utf8"),
      proxyPort: Number(new URL(http.url).port),
    });
    cleanups.push(() => front.stop());

    const untrusted = await runClient(url, ["--proxy", front.url]);
    expect(untrusted.exitCode).toBe(3);
    expect(untrusted.lastLine).toBe(
      `wssmig-client: error: the proxy ${front.url} presented a certificate we do not trust (unable to verify the first certificate); pass --proxy-ca with the PEM file of the CA that signed it`,
    );

    // The tunnel's own CA must not vouch for the proxy: the two trusts stay apart.
    const tunnelCa = await runClient(url, ["--proxy", front.url, "--proxy-ca", certs.ca]);
    expect(tunnelCa.exitCode).toBe(3);
    expect(tunnelCa.lastLine).toContain(`the proxy ${front.url} presented a certificate we do not trust`);

    const trusted = await runClient(url, ["--proxy", front.url, "--proxy-ca", proxyCerts.ca]);
    expect(trusted.exitCode).toBe("listening");
  });

  test("--proxy takes http:// and https:// URLs only", async () => {
    const result = await runClient("wss://localhost:1", ["--proxy", "socks5://127.0.0.1:1080"]);
    expect(result.exitCode).toBe(2);
    expect(result.lastLine).toBe("wssmig-client: error: --proxy socks5://127.0.0.1:1080 must start with http:// or https:// (an HTTP proxy that allows CONNECT)");
  });
});

describe.skipIf(!namespacesAvailable())("a migration through a proxy between two test hosts", () => {
  test("512 MiB of random RAM crosses a proxy to a server only the proxy can reach, byte for byte", async () => {
    const link = createTestLink(3);
    cleanups.push(() => link.remove());
    const work = mkdtempSync(join(tmpdir(), "wssmig-proxy-migration-"));
    cleanups.push(() => rmSync(work, { recursive: true, force: true }));
    const pair = await startVmPair({ memoryMiB: 512 });
    const destinationSocket = join(work, "incoming.sock");
    const sourceSocket = join(work, "outgoing.sock");

    const gateway = await startTinyproxy({
      dir: work,
      listen: link.destinationAddress,
      port: 3128,
      allow: link.sourceAddress,
      prefix: link.exec(link.destinationNamespace),
    });
    cleanups.push(() => gateway.stop());
    // The server listens on the destination host's loopback: the source host cannot dial it.
    const tunnel = await startTunnel({
      serverCerts: certs.dir,
      destinationSocket,
      sourceSocket,
      serverHost: "127.0.0.1",
      dialHost: "localhost",
      serverPrefix: link.exec(link.destinationNamespace),
      clientPrefix: link.exec(link.sourceNamespace),
      clientArgs: ["--proxy", gateway.url],
    });
    cleanups.push(() => tunnel.stop());

    const receive = RoleProcess.spawn("receive", ["--qmp", pair.destination.qmpPath, "--socket", destinationSocket]);
    await receive.waitForLine(/waiting for the incoming migration/);
    const send = RoleProcess.spawn("send", ["--qmp", pair.source.qmpPath, "--socket", sourceSocket]);
    cleanups.push(() => stopAll([send, receive]));
    const codes = { send: await send.exitCode(180_000), receive: await receive.exitCode(30_000) };
    if (codes.send !== 0 || codes.receive !== 0) console.error(`send:\n${send.stderr}\nreceive:\n${receive.stderr}`);
    expect(codes).toEqual({ send: 0, receive: 0 });
    console.log(`through the proxy: ${send.lines.filter((line) => /completed/.test(line)).at(-1)}`);

    expect(await sha256File(pair.destination.ramPath)).toBe(await sha256File(pair.source.ramPath));
    expect(gateway.log()).toContain(`CONNECT localhost:${tunnel.port} HTTP/1.1`);
    // Without the proxy the source host has no way to the server.
    const direct = spawnClient(`wss://${link.destinationAddress}:${tunnel.port}`, certs.dir, join(work, "direct.sock"), ["--open-timeout", "3"], {}, link.exec(link.sourceNamespace));
    expect(await direct.exitCode(20_000)).toBe(4);
  }, 300_000);
});

afterAll(() => {
  expect(readdirSync("/dev/shm").filter((name) => name.startsWith(`wssmig-test-${process.pid}`))).toEqual([]);
});
