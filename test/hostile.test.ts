/**
 * Hostile input against wssmig-server while it carries a valid stream: bad certificates by
 * the thousand, stalled handshakes, random bytes, malformed frames. The valid stream must
 * arrive byte-exact, memory must stay bounded, and nothing hostile may reach the destination.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect as connectTcp } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectUnix, sha256Of, UnixSink, writeKeystream } from "./helpers/bytes.ts";
import { makeCertSet, makeExpiredClientSet, makeForeignCaSet, type TestCertSet } from "./helpers/certs.ts";
import { closeCodeFrom, frame, rawUpgrade, type RawTlsCredentials } from "./helpers/raw-websocket.ts";
import { startServer, startTunnel } from "./helpers/tunnel.ts";
import { stopAll } from "./helpers/processes.ts";

const MiB = 1024 * 1024;
let dir: string;
let good: TestCertSet;
let foreign: TestCertSet;
let expired: TestCertSet;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "wssmig-hostile-"));
  good = await makeCertSet(join(dir, "good"));
  foreign = await makeForeignCaSet(join(dir, "foreign"), good);
  expired = await makeExpiredClientSet(join(dir, "expired"), good);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function credentialsOf(set: TestCertSet, withClientCertificate = true): Promise<RawTlsCredentials> {
  const ca = await Bun.file(good.ca).text();
  if (!withClientCertificate) return { ca };
  return { ca, cert: await Bun.file(set.clientCert).text(), key: await Bun.file(set.clientKey).text() };
}

/** Opens a WebSocket with bad credentials; resolves true if it ever opened (it must not). */
function badHandshake(port: number, tls: RawTlsCredentials): Promise<boolean> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/wssmig/v1/stream`, {
      tls: { ...tls, rejectUnauthorized: true },
      headers: { "x-wssmig-session": "hostile-session-01", "x-wssmig-stream": "0" },
    });
    let opened = false;
    ws.onopen = () => (opened = true);
    ws.onclose = () => resolve(opened);
  });
}

/** Connects over plain TCP, sends `bytes`, and resolves with the time the server closed it. */
function rawTcp(port: number, bytes: Buffer): Promise<number> {
  const socket = connectTcp(port, "127.0.0.1");
  socket.on("error", () => {});
  socket.on("connect", () => socket.write(bytes));
  socket.resume(); // consume the server's alert, or node never sees the end of the stream
  return new Promise((resolve) => socket.once("close", () => resolve(performance.now())));
}

async function inBatches<T>(count: number, concurrency: number, task: (index: number) => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  for (let start = 0; start < count; start += concurrency) {
    const batch = Array.from({ length: Math.min(concurrency, count - start) }, (_, offset) => task(start + offset));
    results.push(...(await Promise.all(batch)));
  }
  return results;
}

describe("hostile input", () => {
  test("1,000 bad-certificate handshakes, 100 stalled handshakes and random bytes beside a valid 1 GiB stream", async () => {
    const size = 1024 * MiB;
    const sink = await UnixSink.listen(join(dir, "dest-flood.sock"));
    const sourceSocket = join(dir, "src-flood.sock");
    const tunnel = await startTunnel({ serverCerts: good.dir, destinationSocket: sink.path, sourceSocket });
    try {
      const source = await connectUnix(sourceSocket);
      const valid = writeKeystream(source, "valid", size).then(() => source.end());

      // Handshakes that stop after the first bytes of a ClientHello, and connections that send
      // random bytes instead of TLS (most are refused at once; some look like the start of a
      // record and wait, like the stalled ones, for the server's idle timeout).
      const startedAt = performance.now();
      const stalled = Array.from({ length: 100 }, () => rawTcp(tunnel.port, Buffer.from("16030100c8010000c40303", "hex")));
      const randomBytes = Array.from({ length: 50 }, () => rawTcp(tunnel.port, Buffer.from(crypto.getRandomValues(new Uint8Array(2048)))));

      const validTls = { ...(await credentialsOf(good)), rejectUnauthorized: true };
      const unknownPaths = inBatches(200, 20, async () => {
        const response = await fetch(`https://127.0.0.1:${tunnel.port}/admin`, { tls: validTls });
        expect(response.status).toBe(404);
      });

      const kinds = [await credentialsOf(good, false), await credentialsOf(foreign), await credentialsOf(expired)];
      const opened = await inBatches(1000, 25, (index) => badHandshake(tunnel.port, kinds[index % kinds.length]!));
      const closedAt = await Promise.all([...stalled, ...randomBytes]);

      await valid;
      await sink.waitForConnections(1);
      await sink.connections[0]!.closed;

      expect(opened.filter(Boolean)).toHaveLength(0);
      expect(sink.connections).toHaveLength(1);
      expect(sink.connections[0]!.received.digest()).toBe(sha256Of("valid", size));
      // Bun's HTTP idle timeout (10 s) ends stalled handshakes.
      expect(Math.max(...closedAt) - startedAt).toBeLessThan(15_000);
      expect(tunnel.server.peakRssMiB()).toBeLessThan(150);
      expect(tunnel.server.running).toBe(true);
      // 200 requests for a path we do not serve: one line at once, one summary line later.
      await unknownPaths;
      await tunnel.server.waitForLine(/refused 199 more: no such path/, 15_000);
      expect(tunnel.server.lines.filter((line) => line.includes("no such path"))).toHaveLength(2);
    } finally {
      await tunnel.stop();
      await sink.close();
    }
  });

  test("malformed frames after a valid handshake close the stream; no byte reaches the destination", async () => {
    const sink = await UnixSink.listen(join(dir, "dest-frames.sock"));
    const { server, port } = await startServer({ serverCerts: good.dir, destinationSocket: sink.path });
    try {
      const credentials = await credentialsOf(good);
      const cases: [string, Buffer, number][] = [
        ["a reserved opcode", frame(0x3, new Uint8Array(10)), 1002],
        ["an unmasked client frame", frame(0x2, new Uint8Array(10), { mask: false }), 1002],
        ["a length of 2^62", frame(0x2, new Uint8Array(10), { declaredLength: 1n << 62n }), 1009],
        ["a text frame", frame(0x1, new TextEncoder().encode("hello")), 1003],
      ];
      const codes: Record<string, number | null> = {};
      for (const [index, [name, bytes]] of cases.entries()) {
        const socket = await rawUpgrade(port, "/wssmig/v1/stream", credentials, { "x-wssmig-session": "malformed-session", "x-wssmig-stream": String(index) });
        socket.write(bytes);
        codes[name] = await closeCodeFrom(socket);
      }
      expect(codes).toEqual(Object.fromEntries(cases.map(([name, , code]) => [name, code])));
      await Promise.all(sink.connections.map((connection) => connection.closed));
      expect(sink.totalBytes).toBe(0);
      expect(server.running).toBe(true);
    } finally {
      await stopAll([server]);
      await sink.close();
    }
  });
});
