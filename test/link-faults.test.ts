/**
 * The tunnel across a real link between two network namespaces (test hosts made here), cut
 * or degraded mid-stream. The QEMU versions of these faults live in migration-faults.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectUnix, receiveFrom, sha256Of, UnixSink, writeKeystream } from "./helpers/bytes.ts";
import { makeCertSet, type TestCertSet } from "./helpers/certs.ts";
import { createTestLink, namespacesAvailable, type TestLink } from "./helpers/netns.ts";
import { startTunnel, type Tunnel } from "./helpers/tunnel.ts";

const MiB = 1024 * 1024;
const KEEPALIVE_SECONDS = 2;

let dir: string;
let link: TestLink;
let certs: TestCertSet;
let counter = 0;
const cleanups: (() => Promise<void> | void)[] = [];

describe.skipIf(!namespacesAvailable())("link faults between two test hosts", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "wssmig-link-"));
    link = createTestLink(1);
    certs = await makeCertSet(join(dir, "certs"), { sans: [link.destinationAddress] });
  });
  afterEach(async () => {
    link.restore();
    for (const cleanUp of cleanups.splice(0).reverse()) await cleanUp();
  });
  afterAll(() => {
    link.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  async function tunnelAcrossLink(): Promise<{ tunnel: Tunnel; sink: UnixSink; sourceSocket: string }> {
    const id = counter++;
    const sink = await UnixSink.listen(join(dir, `dest-${id}.sock`));
    cleanups.push(() => sink.close());
    const sourceSocket = join(dir, `src-${id}.sock`);
    const tunnel = await startTunnel({
      serverCerts: certs.dir,
      destinationSocket: sink.path,
      sourceSocket,
      serverHost: link.destinationAddress,
      dialHost: link.destinationAddress,
      serverPrefix: link.exec(link.destinationNamespace),
      clientPrefix: link.exec(link.sourceNamespace),
      serverArgs: ["--keepalive", String(KEEPALIVE_SECONDS)],
      clientArgs: ["--keepalive", String(KEEPALIVE_SECONDS)],
    });
    cleanups.push(() => tunnel.stop());
    return { tunnel, sink, sourceSocket };
  }

  test("a cut link is detected by keepalive on both ends; both legs close", async () => {
    const { tunnel, sink, sourceSocket } = await tunnelAcrossLink();
    const source = await connectUnix(sourceSocket);
    const sourceClosed = receiveFrom(source).closed;
    const writing = writeKeystream(source, "cut", 8 * 1024 * MiB).catch(() => {});
    await sink.waitForConnections(1);
    await sink.connections[0]!.received.waitFor(32 * MiB);
    link.cut();
    const cutAt = performance.now();
    await Promise.all([sourceClosed, sink.connections[0]!.closed]);
    const detectionSeconds = (performance.now() - cutAt) / 1000;
    await writing;
    console.log(`link cut: both legs closed ${detectionSeconds.toFixed(1)} s after the cut`);
    // Client: 3 silent intervals, checked each interval. Server: Bun's idleTimeout (min 8 s).
    expect(detectionSeconds).toBeLessThan(Math.max(8, 3 * KEEPALIVE_SECONDS) + 2 * KEEPALIVE_SECONDS + 1);
    await tunnel.client.waitForLine(/closing the stream: no answer from wssmig-server for/);
    await tunnel.server.waitForLine(/stream closed/);
    expect(tunnel.client.running).toBe(true);
    expect(tunnel.server.running).toBe(true);
  });

  test("a link down for 3 seconds and up again: the stream survives byte-exact", async () => {
    const size = 512 * MiB;
    const { sink, sourceSocket } = await tunnelAcrossLink();
    const source = await connectUnix(sourceSocket);
    const writing = writeKeystream(source, "blip", size);
    await sink.waitForConnections(1);
    await sink.connections[0]!.received.waitFor(64 * MiB);
    link.cut();
    await Bun.sleep(3000);
    link.restore();
    await writing;
    source.end();
    await sink.connections[0]!.closed;
    expect(sink.connections[0]!.received.bytes).toBe(size);
    expect(sink.connections[0]!.received.digest()).toBe(sha256Of("blip", size));
  });
});
