/**
 * Real QEMU migrations THROUGH the tunnel, all four compiled binaries in the seed's order:
 * wssmig-server, wssmig-client, wssmig-receive, wssmig-send. The same cases as
 * migration-direct.test.ts, plus wssmig-client killed mid-migration.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCertSet } from "./helpers/certs.ts";
import { RoleProcess, stopAll } from "./helpers/processes.ts";
import { cleanupAllVms, sha256File, startVmPair, type VmPair } from "./helpers/qemu.ts";
import { expectGuestMovedToDestination } from "./helpers/guest-checks.ts";
import { startTunnel, type Tunnel } from "./helpers/tunnel.ts";

const ROOT = join(import.meta.dir, "..");
const GIB_MIB = 1024;
const LIVE_GUEST_MIB = 512;
/** Slow enough that a migration is still running when the test interferes with it. */
const SLOW_BANDWIDTH = "40M";

let workDir: string;
let certsDir: string;
let running: RoleProcess[] = [];
let tunnel: Tunnel | undefined;

beforeAll(async () => {
  const build = Bun.spawnSync(["bash", "scripts/build.sh"], { cwd: ROOT, stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`build failed: ${build.stderr.toString()}`);
  certsDir = (await makeCertSet(mkdtempSync(join(tmpdir(), "wssmig-migration-certs-")))).dir;
  // certsDir IS the temporary directory: remove it, never its parent (that is /tmp itself).
}, 300_000);

afterEach(async () => {
  await stopAll(running);
  running = [];
  await tunnel?.stop();
  tunnel = undefined;
  await cleanupAllVms();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

afterAll(async () => {
  await cleanupAllVms();
  rmSync(certsDir, { recursive: true, force: true });
  expect(readdirSync("/dev/shm").filter((name) => name.startsWith(`wssmig-test-${process.pid}`))).toEqual([]);
});

interface Setup extends VmPair {
  tunnel: Tunnel;
  receive: RoleProcess;
  sourceSocket: string;
}

/** VMs, then server, client and receive in the seed's order; the caller starts send. */
async function setUp(options: { memoryMiB: number; liveGuest?: boolean; features?: string[] }): Promise<Setup> {
  const pair = await startVmPair(options);
  workDir = mkdtempSync(join(tmpdir(), "wssmig-tunnel-migration-"));
  const destinationSocket = join(workDir, "incoming.sock");
  const sourceSocket = join(workDir, "outgoing.sock");
  tunnel = await startTunnel({ serverCerts: certsDir, destinationSocket, sourceSocket });
  const receive = spawn("receive", ["--qmp", pair.destination.qmpPath, "--socket", destinationSocket, ...(options.features ?? [])]);
  await receive.waitForLine(/waiting for the incoming migration/);
  return { ...pair, tunnel, receive, sourceSocket };
}

function spawn(role: "receive" | "send", args: string[]): RoleProcess {
  const process = RoleProcess.spawn(role, [...args, "--log-format", "json"]);
  running.push(process);
  return process;
}

function startSend(setup: Setup, extra: string[] = []): RoleProcess {
  return spawn("send", ["--qmp", setup.source.qmpPath, "--socket", setup.sourceSocket, ...extra]);
}

function logRecords(role: RoleProcess): Record<string, unknown>[] {
  return role.lines.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line));
}

function summaryOf(role: RoleProcess): Record<string, unknown> | undefined {
  return logRecords(role).find((record) => "averageMBps" in record);
}

function report(label: string, role: RoleProcess): void {
  const summary = summaryOf(role);
  console.log(`${label}: ${summary?.transferred} in ${summary?.totalSeconds} s, ${summary?.averageMBps} MB/s, downtime ${summary?.downtimeMs} ms`);
}

async function expectBothSucceed(send: RoleProcess, receive: RoleProcess): Promise<void> {
  const codes = { send: await send.exitCode(120_000), receive: await receive.exitCode(30_000) };
  if (codes.send !== 0 || codes.receive !== 0) console.error(`send:\n${send.stderr}\nreceive:\n${receive.stderr}`);
  expect(codes).toEqual({ send: 0, receive: 0 });
  expect(summaryOf(send)?.status).toBe("completed");
}

async function migrateRandomRam(label: string, features: string[] = []): Promise<void> {
  const setup = await setUp({ memoryMiB: GIB_MIB, features });
  const send = startSend(setup, features);
  await expectBothSucceed(send, setup.receive);
  report(label, send);
  expect(await setup.source.status()).toBe("postmigrate");
  expect(await setup.destination.status()).toBe("prelaunch");
  expect(await sha256File(setup.destination.ramPath)).toBe(await sha256File(setup.source.ramPath));
}


describe("migration through the tunnel (server, client, receive, send; real QEMU)", () => {
  test("1 GiB of random RAM arrives byte for byte", async () => {
    await migrateRandomRam("1 GiB tunnel");
  }, 240_000);

  test("1 GiB of random RAM with --multifd 4 arrives byte for byte", async () => {
    await migrateRandomRam("1 GiB tunnel multifd 4", ["--multifd", "4"]);
  }, 240_000);

  test("a live guest completes and keeps running on the destination after cont", async () => {
    const setup = await setUp({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const send = startSend(setup);
    await expectBothSucceed(send, setup.receive);
    report("live guest 512 MiB tunnel", send);
    await expectGuestMovedToDestination(setup);
  }, 240_000);

  test("postcopy: a live guest switched to postcopy mid-migration completes (return path through the tunnel)", async () => {
    const setup = await setUp({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true, features: ["--postcopy"] });
    const send = startSend(setup, ["--postcopy-after", "1", "--max-bandwidth", SLOW_BANDWIDTH]);
    await expectBothSucceed(send, setup.receive);
    expect(logRecords(send).map((record) => record.status)).toContain("postcopy-active");
    report("live guest postcopy tunnel", send);
    await expectGuestMovedToDestination(setup);
  }, 240_000);

  test("wssmig-client killed mid-migration: send fails with the cause, the source VM runs on, receive reports it", async () => {
    const setup = await setUp({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const send = startSend(setup, ["--max-bandwidth", SLOW_BANDWIDTH]);
    await send.waitForLine(/"migration active"/);
    await Bun.sleep(1000);
    setup.tunnel.client.kill("SIGKILL");
    expect(await send.exitCode(60_000)).toBe(1);
    expect(send.lines.at(-1)).toMatch(
      /^wssmig-send: error: migration failed: .+; likely cause: the stream to the destination broke: the tunnel \(wssmig-client or wssmig-server\) closed or the destination QEMU exited; see their logs$/,
    );
    expect(logRecords(send).map((record) => record.msg)).toContain("the source VM is running again");
    expect(await setup.source.status()).toBe("running");
    expect(await setup.receive.exitCode(60_000)).toBe(1);
    expect(setup.receive.lines.at(-1)).toStartWith("wssmig-receive: error: the destination QEMU exited during the incoming migration");
  }, 240_000);
});
