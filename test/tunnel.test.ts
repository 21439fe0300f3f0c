/**
 * The tunnel through the compiled wssmig-server and wssmig-client, with real TLS and real unix
 * sockets. A UnixSink stands in for the destination QEMU and a node:net socket for the source
 * QEMU, so every byte can be counted and hashed; test/migration-*.test.ts use real QEMU.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectUnix, receiveFrom, sha256Of, UnixSink, writeKeystream, type SinkConnection } from "./helpers/bytes.ts";
import { makeCertSet, makeExpiredClientSet, makeForeignCaSet, makeServerSetWithoutSan, type TestCertSet } from "./helpers/certs.ts";
import { createTestLink, namespacesAvailable, type TestLink } from "./helpers/netns.ts";
import { stopAll, type RoleProcess } from "./helpers/processes.ts";
import { spawnClient, startServer, startTunnel } from "./helpers/tunnel.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

let dir: string;
let good: TestCertSet;
let foreign: TestCertSet;
let expiredClient: TestCertSet;
let serverWithoutLoopbackIp: TestCertSet;
let counter = 0;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "wssmig-tunnel-"));
  good = await makeCertSet(join(dir, "good"));
  foreign = await makeForeignCaSet(join(dir, "foreign"), good);
  expiredClient = await makeExpiredClientSet(join(dir, "expired-client"), good);
  serverWithoutLoopbackIp = await makeServerSetWithoutSan(join(dir, "no-ip-san"), good, "127.0.0.1");
});

afterEach(async () => {
  for (const cleanUp of cleanups.splice(0).reverse()) await cleanUp();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Fresh socket paths, a sink on the destination socket and (optionally) a running tunnel. */
async function setUp(options: { sinkReplyBytes?: number; sinkReadBytesPerSecond?: number; serverArgs?: string[] } = {}) {
  const id = counter++;
  const destinationSocket = join(dir, `dest-${id}.sock`);
  const sourceSocket = join(dir, `src-${id}.sock`);
  const sink = await UnixSink.listen(destinationSocket, { replyBytes: options.sinkReplyBytes, readBytesPerSecond: options.sinkReadBytesPerSecond });
  cleanups.push(() => sink.close());
  return { destinationSocket, sourceSocket, sink };
}

async function setUpTunnel(options: Parameters<typeof setUp>[0] = {}) {
  const sockets = await setUp(options);
  const tunnel = await startTunnel({ serverCerts: good.dir, destinationSocket: sockets.destinationSocket, sourceSocket: sockets.sourceSocket, serverArgs: options.serverArgs });
  cleanups.push(() => tunnel.stop());
  return { ...sockets, tunnel };
}

/**
 * Starts a new wssmig-client (a new session) on the server at `port`, sends `size` bytes of the
 * `seed` keystream through it on one stream, and returns the destination connection once closed.
 */
async function sendThroughNewClient(port: number, sink: UnixSink, seed: string, size: number): Promise<SinkConnection> {
  const socket = join(dir, `src-${counter++}.sock`);
  const client = spawnClient(`wss://127.0.0.1:${port}`, good.dir, socket);
  cleanups.push(() => stopAll([client]));
  await client.waitForLine(/listening on/);
  const before = sink.connections.length;
  const source = await connectUnix(socket);
  await writeKeystream(source, seed, size);
  source.end();
  await sink.waitForConnections(before + 1);
  const arrived = sink.connections[before]!;
  await arrived.closed;
  return arrived;
}

/** The last line a role wrote to stderr. */
function lastLine(role: RoleProcess): string {
  return role.lines.filter((line) => line.trim() !== "").at(-1) ?? "";
}

describe("data path", () => {
  test("1 GiB source to destination and 256 MiB back at the same time arrive byte-exact", async () => {
    const { sourceSocket, sink, tunnel } = await setUpTunnel({ sinkReplyBytes: 256 * MiB });
    const source = await connectUnix(sourceSocket);
    const fromDestination = receiveFrom(source);
    await writeKeystream(source, "up", GiB);
    await fromDestination.received.waitFor(256 * MiB);
    source.end();
    await sink.waitForConnections(1);
    await sink.connections[0]!.closed;

    expect(sink.connections).toHaveLength(1);
    expect(sink.connections[0]!.received.bytes).toBe(GiB);
    expect(sink.connections[0]!.received.digest()).toBe(sha256Of("up", GiB));
    expect(fromDestination.received.bytes).toBe(256 * MiB);
    expect(fromDestination.received.digest()).toBe(sha256Of("reply-0", 256 * MiB));
    console.log(`1 GiB + 256 MiB: peak RSS client ${tunnel.client.peakRssMiB().toFixed(0)} MiB, server ${tunnel.server.peakRssMiB().toFixed(0)} MiB`);
    await tunnel.client.waitForLine(/stream closed .*sentMiB=1024 receivedMiB=256 /);
    await tunnel.server.waitForLine(/stream closed .*sentMiB=256 receivedMiB=1024 /);
  });

  test("a slow destination slows the source down; nothing is lost and memory stays bounded", async () => {
    const size = 256 * MiB;
    const { sourceSocket, sink, tunnel } = await setUpTunnel({ sinkReadBytesPerSecond: 48 * MiB });
    const source = await connectUnix(sourceSocket);
    const startedAt = performance.now();
    await writeKeystream(source, "slow-up", size);
    const writeSeconds = (performance.now() - startedAt) / 1000;
    source.end();
    await sink.waitForConnections(1);
    await sink.connections[0]!.closed;

    expect(sink.connections[0]!.received.bytes).toBe(size);
    expect(sink.connections[0]!.received.digest()).toBe(sha256Of("slow-up", size));
    // The writer could only finish once all but the buffered tail had been read at 48 MiB/s.
    expect(writeSeconds).toBeGreaterThan((size - 64 * MiB) / (48 * MiB));
    console.log(`slow destination: peak RSS client ${tunnel.client.peakRssMiB().toFixed(0)} MiB, server ${tunnel.server.peakRssMiB().toFixed(0)} MiB`);
    expect(tunnel.client.peakRssMiB()).toBeLessThan(150);
    expect(tunnel.server.peakRssMiB()).toBeLessThan(150);
  });

  test("a slow source reader slows the destination down; nothing is lost and memory stays bounded", async () => {
    const size = 256 * MiB;
    const { sourceSocket, sink, tunnel } = await setUpTunnel({ sinkReplyBytes: size });
    const source = await connectUnix(sourceSocket);
    const fromDestination = receiveFrom(source, { readBytesPerSecond: 48 * MiB });
    await fromDestination.received.waitFor(size);
    source.end();
    await sink.connections[0]!.closed;

    expect(fromDestination.received.bytes).toBe(size);
    expect(fromDestination.received.digest()).toBe(sha256Of("reply-0", size));
    console.log(`slow source reader: peak RSS client ${tunnel.client.peakRssMiB().toFixed(0)} MiB, server ${tunnel.server.peakRssMiB().toFixed(0)} MiB`);
    expect(tunnel.client.peakRssMiB()).toBeLessThan(150);
    expect(tunnel.server.peakRssMiB()).toBeLessThan(150);
  });

  test("over IPv6 loopback: the server logs a URL that works as --server, and a stream arrives byte-exact", async () => {
    const { destinationSocket, sourceSocket, sink } = await setUp();
    const tunnel = await startTunnel({ serverCerts: good.dir, destinationSocket, sourceSocket, serverHost: "::1", dialHost: "[::1]" });
    cleanups.push(() => tunnel.stop());
    expect(await tunnel.server.waitForLine(/listening on/)).toContain(`listening on ${tunnel.url}/wssmig/v1/stream`);
    const source = await connectUnix(sourceSocket);
    await writeKeystream(source, "ipv6", 16 * MiB);
    source.end();
    await sink.waitForConnections(1);
    await sink.connections[0]!.closed;
    expect(sink.connections[0]!.received.digest()).toBe(sha256Of("ipv6", 16 * MiB));
  });

  test("four concurrent streams arrive byte-exact and are accepted in the order the source connected", async () => {
    const size = 64 * MiB;
    const { sourceSocket, sink } = await setUpTunnel();
    const sources = [];
    for (let index = 0; index < 4; index++) sources.push(await connectUnix(sourceSocket));
    await Promise.all(sources.map(async (source, index) => {
      await writeKeystream(source, `stream-${index}`, size);
      source.end();
    }));
    await sink.waitForConnections(4);
    await Promise.all(sink.connections.map((connection) => connection.closed));

    // Connection k at the destination must carry what the source's k-th connection sent.
    const digests = sink.connections.map((connection) => connection.received.digest());
    expect(digests).toEqual([0, 1, 2, 3].map((index) => sha256Of(`stream-${index}`, size)));
  });
});

describe("refusals", () => {
  /** Starts a server with `serverCerts`; returns it, its URL and the sink behind it. */
  async function serverOnly(serverCerts: string, serverEnv: Record<string, string> = {}) {
    const { destinationSocket, sourceSocket, sink } = await setUp();
    const { server, port } = await startServer({ serverCerts, destinationSocket, serverEnv });
    cleanups.push(() => stopAll([server]));
    return { server, port, url: `wss://127.0.0.1:${port}`, sink, sourceSocket };
  }

  async function expectClientRefused(url: string, certs: string, expected: string, env: Record<string, string> = {}) {
    const sourceSocket = join(dir, `src-${counter++}.sock`);
    const client = spawnClient(url, certs, sourceSocket, [], env);
    cleanups.push(() => stopAll([client]));
    expect(await client.exitCode()).toBe(3);
    expect(lastLine(client)).toBe(`wssmig-client: error: ${expected}`);
    expect(existsSync(sourceSocket)).toBe(false);
  }

  test("a client certificate from another CA", async () => {
    const { url, sink, server } = await serverOnly(good.dir);
    await expectClientRefused(url, foreign.dir,
      `the server refused our client certificate ${foreign.clientCert} (Connection ended); it must be signed by the CA the server trusts, valid now, and made for clientAuth: check it with wssmig-gencerts check --role client`);
    expect(sink.connections).toHaveLength(0);
    expect(server.stderr).not.toContain("stream opened");
  });

  test("a server certificate from another CA, also with NODE_TLS_REJECT_UNAUTHORIZED=0", async () => {
    const { url, sink } = await serverOnly(foreign.dir);
    const expected = `the server certificate is not signed by the CA in ${good.ca} (TLS handshake failed: unable to verify the first certificate); use the ca.pem that wssmig-gencerts made together with the server's certificate`;
    await expectClientRefused(url, good.dir, expected);
    await expectClientRefused(url, good.dir, expected, { NODE_TLS_REJECT_UNAUTHORIZED: "0" });
    expect(sink.connections).toHaveLength(0);
  });

  test("CA files offered by the environment vouch for nobody: neither a server nor a client of another PKI", async () => {
    // A wholly separate PKI whose CA file the environment then offers as trusted.
    const otherDir = join(dir, `other-pki-${counter++}`);
    const other = await makeCertSet(otherDir);
    const trustOther: Record<string, string>[] = [{}, { NODE_EXTRA_CA_CERTS: other.ca }, { SSL_CERT_FILE: other.ca, SSL_CERT_DIR: otherDir, NODE_USE_SYSTEM_CA: "1" }];

    const otherServer = await serverOnly(other.dir);
    for (const env of trustOther) {
      await expectClientRefused(otherServer.url, good.dir,
        `the server certificate is not signed by the CA in ${good.ca} (TLS handshake failed: self signed certificate in certificate chain); use the ca.pem that wssmig-gencerts made together with the server's certificate`, env);
    }

    // Our CA to check the server, the other PKI's certificate to show it.
    const mixedDir = join(dir, `mixed-${counter++}`);
    mkdirSync(mixedDir, { mode: 0o700 });
    copyFileSync(good.ca, join(mixedDir, "ca.pem"));
    copyFileSync(other.clientCert, join(mixedDir, "client-cert.pem"));
    copyFileSync(other.clientKey, join(mixedDir, "client-key.pem"));
    for (const env of trustOther) {
      const { url, sink } = await serverOnly(good.dir, env);
      await expectClientRefused(url, mixedDir,
        `the server refused our client certificate ${join(mixedDir, "client-cert.pem")} (Connection ended); it must be signed by the CA the server trusts, valid now, and made for clientAuth: check it with wssmig-gencerts check --role client`);
      expect(sink.connections).toHaveLength(0);
    }
    expect(otherServer.sink.connections).toHaveLength(0);
  });

  test("a server certificate that does not name the host the client dials", async () => {
    const { url, sink } = await serverOnly(serverWithoutLoopbackIp.dir);
    await expectClientRefused(url, good.dir,
      `the server certificate does not name "127.0.0.1" (TLS handshake failed: Hostname/IP does not match certificate's altnames); dial a name it lists or pass --server-name, or make a new server certificate with wssmig-gencerts --san 127.0.0.1`);
    expect(sink.connections).toHaveLength(0);
  });

  /** Opens a WebSocket with our own TLS options (to present what wssmig-client never would). */
  function rawWebSocket(url: string, tls: Record<string, unknown>, headers: Record<string, string> = {}) {
    const ws = new WebSocket(url, { tls: { ca: Bun.file(good.ca), rejectUnauthorized: true, ...tls }, headers });
    const events: string[] = [];
    const closed = new Promise<{ code: number; reason: string }>((resolve) => {
      ws.onerror = (event) => events.push(`error: ${(event as ErrorEvent).message}`);
      ws.onopen = () => events.push("open");
      ws.onclose = (event) => resolve({ code: event.code, reason: event.reason });
    });
    return { ws, events, closed };
  }

  const STREAM_HEADERS = { "x-wssmig-session": "0123456789abcdef", "x-wssmig-stream": "0" };

  test("a client with no certificate, or an expired one, never reaches the destination socket", async () => {
    const { port, sink, server } = await serverOnly(good.dir);
    const url = `wss://127.0.0.1:${port}/wssmig/v1/stream`;
    const noCertificate = rawWebSocket(url, {}, STREAM_HEADERS);
    expect((await noCertificate.closed).code).toBe(1006);
    expect(noCertificate.events).toEqual([
      `error: WebSocket connection to '${url}' failed: TLS handshake failed: error:1000045c:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED`,
    ]);
    const expired = rawWebSocket(url, { cert: Bun.file(expiredClient.clientCert), key: Bun.file(expiredClient.clientKey) }, STREAM_HEADERS);
    expect((await expired.closed).code).toBe(1006);
    expect(expired.events).toEqual([`error: WebSocket connection to '${url}' failed: Connection ended`]);
    expect(sink.connections).toHaveLength(0);
    expect(server.stderr).not.toContain("stream opened");
  });

  test("plain HTTPS, unknown paths and missing headers get a refusal; a text frame closes the stream with 1003", async () => {
    const { port, sink } = await serverOnly(good.dir);
    const tls = { ca: Bun.file(good.ca), cert: Bun.file(good.clientCert), key: Bun.file(good.clientKey), rejectUnauthorized: true };
    const plain = await fetch(`https://127.0.0.1:${port}/wssmig/v1/stream`, { tls });
    expect(plain.status).toBe(426);
    expect(await plain.text()).toBe("wssmig-server: this endpoint takes a WebSocket upgrade; use wssmig-client\n");
    const unknown = await fetch(`https://127.0.0.1:${port}/admin`, { tls });
    expect(unknown.status).toBe(404);

    const noHeaders = rawWebSocket(`wss://127.0.0.1:${port}/wssmig/v1/stream`, { cert: tls.cert, key: tls.key });
    expect(await noHeaders.closed).toEqual({ code: 4002, reason: "missing or malformed session/stream headers; streams come from wssmig-client" });
    expect(sink.connections).toHaveLength(0);

    const textFrame = rawWebSocket(`wss://127.0.0.1:${port}/wssmig/v1/stream`, { cert: tls.cert, key: tls.key }, STREAM_HEADERS);
    textFrame.ws.onopen = () => textFrame.ws.send("hello");
    expect(await textFrame.closed).toEqual({ code: 1003, reason: "text frames are not part of the wssmig protocol" });
    await sink.waitForConnections(1);
    await sink.connections[0]!.closed;
    expect(sink.totalBytes).toBe(0);
  });

  test("while one migration streams, another session's stream is refused with 4009 and the first goes on intact", async () => {
    const size = 256 * MiB;
    const { sourceSocket, sink, tunnel } = await setUpTunnel();
    const source = await connectUnix(sourceSocket);
    const writing = writeKeystream(source, "first", size);
    await sink.waitForConnections(1);
    await sink.connections[0]!.received.waitFor(16 * MiB);

    const intruder = rawWebSocket(`wss://127.0.0.1:${tunnel.port}/wssmig/v1/stream`,
      { cert: Bun.file(good.clientCert), key: Bun.file(good.clientKey) }, { "x-wssmig-session": "another-session-0001", "x-wssmig-stream": "0" });
    expect(await intruder.closed).toEqual({ code: 4009, reason: `another migration (session ${(await tunnel.client.waitForLine(/stream opened/)).match(/stream=(\w+)\//)![1]}) is using ${sink.path}; wait for it to end` });
    await writing;
    source.end();
    await sink.connections[0]!.closed;
    expect(sink.connections).toHaveLength(1);
    expect(sink.connections[0]!.received.digest()).toBe(sha256Of("first", size));
  });

  test.skipIf(process.getuid?.() !== 0)("a destination socket owned by another user gets no stream", async () => {
    const { sourceSocket, sink, tunnel } = await setUpTunnel();
    chownSync(sink.path, 65534, 65534);
    const source = await connectUnix(sourceSocket);
    source.write("secret VM memory");
    await receiveFrom(source).closed;
    const line = await tunnel.client.waitForLine(/the server closed the stream/);
    expect(line).toContain(`the server closed the stream: ${sink.path} belongs to uid 65534, not to this user (uid 0); refusing to send VM memory`);
    expect(sink.connections).toHaveLength(0);
  });

  test("TLS 1.1 is refused and TLS 1.3 is negotiated", async () => {
    const { port } = await serverOnly(good.dir);
    const openssl = (args: string[]) =>
      Bun.spawnSync(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-CAfile", good.ca, "-cert", good.clientCert, "-key", good.clientKey, ...args], { stdin: new TextEncoder().encode("") });
    const old = openssl(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    expect(old.exitCode).not.toBe(0);
    expect(old.stdout.toString()).toContain("Cipher is (NONE)");
    const modern = openssl(["-brief"]);
    expect(modern.stderr.toString()).toContain("Protocol version: TLSv1.3");
    expect(modern.stderr.toString()).toContain("Verification: OK");
  });
});

describe("failures and shutdown", () => {
  test("the client's socket is 0600 and SIGTERM removes it", async () => {
    const { sourceSocket, tunnel } = await setUpTunnel();
    expect(statSync(sourceSocket).mode & 0o777).toBe(0o600);
    tunnel.client.kill("SIGTERM");
    expect(await tunnel.client.exitCode()).toBe(0);
    expect(existsSync(sourceSocket)).toBe(false);
  });

  test("a stale socket file is replaced; a file that is not a socket is refused", async () => {
    const { destinationSocket, sourceSocket } = await setUp();
    const { server, port } = await startServer({ serverCerts: good.dir, destinationSocket });
    cleanups.push(() => stopAll([server]));
    writeFileSync(sourceSocket, "not a socket");
    const refused = spawnClient(`wss://127.0.0.1:${port}`, good.dir, sourceSocket);
    expect(await refused.exitCode()).toBe(3);
    expect(lastLine(refused)).toBe(`wssmig-client: error: ${sourceSocket} exists and is not a unix socket; remove it or choose another --socket`);
    rmSync(sourceSocket);

    const killed = spawnClient(`wss://127.0.0.1:${port}`, good.dir, sourceSocket);
    await killed.waitForLine(/listening on/);
    killed.kill("SIGKILL");
    await killed.exited;
    expect(existsSync(sourceSocket)).toBe(true); // left behind by the killed client
    const next = spawnClient(`wss://127.0.0.1:${port}`, good.dir, sourceSocket);
    cleanups.push(() => stopAll([next]));
    await next.waitForLine(/listening on/);
    const source = await connectUnix(sourceSocket);
    source.end();
  });

  test("no destination listening: the stream is refused with the reason and the source leg closed", async () => {
    const destinationSocket = join(dir, `absent-${counter}.sock`);
    const sourceSocket = join(dir, `src-${counter++}.sock`);
    const tunnel = await startTunnel({ serverCerts: good.dir, destinationSocket, sourceSocket, serverArgs: ["--wait-for-destination", "1"] });
    cleanups.push(() => tunnel.stop());
    const source = await connectUnix(sourceSocket);
    const { closed } = receiveFrom(source);
    await closed;
    await tunnel.server.waitForLine(new RegExp(`waiting for the destination QEMU to listen on ${destinationSocket}`));
    const line = await tunnel.client.waitForLine(/the server closed the stream/);
    expect(line).toContain(`the server closed the stream: no destination QEMU listens on ${destinationSocket}; run wssmig-receive first`);
  });

  test("client killed while its stream waits for the destination: the server frees the place for the next session", async () => {
    const destinationSocket = join(dir, `late-${counter}.sock`);
    const sourceSocket = join(dir, `src-${counter++}.sock`);
    // One place only: a place the vanished stream kept would refuse the next session (4008 or 4009).
    const tunnel = await startTunnel({ serverCerts: good.dir, destinationSocket, sourceSocket, serverArgs: ["--max-streams", "1", "--wait-for-destination", "60"] });
    cleanups.push(() => tunnel.stop());
    const source = await connectUnix(sourceSocket);
    await tunnel.server.waitForLine(/waiting for the destination QEMU to listen/);
    tunnel.client.kill("SIGKILL");
    await tunnel.server.waitForLine(/the client went away while its stream waited for the destination QEMU/);
    source.destroy();

    const sink = await UnixSink.listen(destinationSocket);
    cleanups.push(() => sink.close());
    const arrived = await sendThroughNewClient(tunnel.port, sink, "next-session", 16 * MiB);
    expect(sink.connections).toHaveLength(1);
    expect(arrived.received.digest()).toBe(sha256Of("next-session", 16 * MiB));
    expect(tunnel.server.stderr).not.toMatch(/refused/);
  });

  test("client killed mid-stream: the server closes the destination leg and goes on serving", async () => {
    const { sourceSocket, destinationSocket, sink, tunnel } = await setUpTunnel();
    const socketsBefore = tunnel.server.openSocketCount();
    const source = await connectUnix(sourceSocket);
    const writing = writeKeystream(source, "doomed", 4 * GiB).catch(() => {});
    await sink.waitForConnections(1);
    await sink.connections[0]!.received.waitFor(64 * MiB);
    tunnel.client.kill("SIGKILL");
    await sink.connections[0]!.closed;
    await writing;
    expect(sink.connections[0]!.received.bytes).toBeLessThan(4 * GiB);
    await tunnel.server.waitForLine(/stream closed .*reason=.*tunnel closed \(1006/);

    // The same server carries a new client's stream intact.
    const arrived = await sendThroughNewClient(tunnel.port, sink, "after", 16 * MiB);
    expect(arrived.received.digest()).toBe(sha256Of("after", 16 * MiB));
    await tunnel.server.waitForLine(/stream closed .*receivedMiB=16 /);
    expect(tunnel.server.openSocketCount()).toBeLessThanOrEqual(socketsBefore);
    void destinationSocket;
  });

  test("server killed mid-stream: the client closes the source leg and goes on listening", async () => {
    const { sourceSocket, sink, tunnel } = await setUpTunnel();
    const socketsBefore = tunnel.client.openSocketCount();
    const source = await connectUnix(sourceSocket);
    const { closed } = receiveFrom(source);
    const writing = writeKeystream(source, "doomed", 4 * GiB).catch(() => {});
    await sink.waitForConnections(1);
    await sink.connections[0]!.received.waitFor(64 * MiB);
    tunnel.server.kill("SIGKILL");
    await closed;
    await writing;
    await tunnel.client.waitForLine(/stream closed .*reason=.*tunnel closed \(1006/);
    expect(tunnel.client.running).toBe(true);
    expect(tunnel.client.openSocketCount()).toBeLessThanOrEqual(socketsBefore);

    // A new stream now fails with the reason instead of hanging (the client may close it
    // before our connect() even returns).
    const next = await connectUnix(sourceSocket).catch(() => null);
    if (next) await receiveFrom(next).closed;
    const line = await tunnel.client.waitForLine(/stream refused/);
    expect(line).toContain(`nothing accepts connections at ${tunnel.url}`);
  });
});

describe.skipIf(!namespacesAvailable())("a wrong --server, from a test host with no DNS server and nothing listening", () => {
  let link: TestLink;
  beforeAll(() => {
    link = createTestLink(4);
  });
  afterAll(() => link.remove());

  async function clientFails(server: string): Promise<{ exitCode: number; lastLine: string }> {
    const client = spawnClient(server, good.dir, join(dir, `src-${counter++}.sock`), [], {}, link.exec(link.sourceNamespace));
    cleanups.push(() => stopAll([client]));
    return { exitCode: await client.exitCode(20_000), lastLine: lastLine(client) };
  }

  test("a host name that does not resolve is named as such, exit 4", async () => {
    const result = await clientFails("wss://wssmig-test.invalid:8766");
    expect(result.exitCode).toBe(4);
    // The resolver's code (EAI_AGAIN here, ENOTFOUND with a DNS server) varies by host.
    expect(result.lastLine).toMatch(/^wssmig-client: error: cannot resolve wssmig-test\.invalid, the host in --server \(getaddrinfo E[A-Z_]+\); fix --server or this host's DNS$/);
  });

  test("a URL without a port: the refusal says that wss:// means 443 and the server listens on 8766", async () => {
    const result = await clientFails(`wss://${link.sourceAddress}`);
    expect(result.exitCode).toBe(4);
    expect(result.lastLine).toBe(
      `wssmig-client: error: nothing accepts connections at wss://${link.sourceAddress}/ (Failed to connect); start wssmig-server there, or fix --server's host and port (without a port, wss:// means 443; wssmig-server listens on 8766 unless told otherwise)`,
    );
  });
});
