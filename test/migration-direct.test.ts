/**
 * wssmig-receive and wssmig-send against real QEMU, WITHOUT the tunnel: the destination QEMU
 * listens on a unix socket and the source migrates straight into that same path. Runs the
 * compiled binaries. Also the QMP client's error paths against fake QMP peers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { LineSplitter, QmpClient, QmpError } from "../src/lib/qmp.ts";
import { likelyFailureCause, parseByteRate } from "../src/lib/migration.ts";
import { formatProgressLine } from "../src/lib/progress.ts";
import { cleanupAllVms, sha256File, startVm, startVmPair, waitUntil, type Vm } from "./helpers/qemu.ts";
import { expectGuestMovedToDestination } from "./helpers/guest-checks.ts";

const ROOT = join(import.meta.dir, "..");
const GIB_MIB = 1024;
const LIVE_GUEST_MIB = 512;
/** Slow enough that a migration is still running when the test interferes with it. */
const SLOW_BANDWIDTH = "40M";

let workDir: string;

beforeAll(() => {
  const build = Bun.spawnSync(["bash", "scripts/build.sh"], { cwd: ROOT, stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`build failed: ${build.stderr.toString()}`);
}, 300_000);

afterEach(async () => {
  await cleanupAllVms();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

afterAll(async () => {
  await cleanupAllVms();
  // The standard: no RAM file outlives the tests, whatever happened.
  expect(readdirSync("/dev/shm").filter((name) => name.startsWith(`wssmig-test-${process.pid}`))).toEqual([]);
});

function freshWorkDir(): string {
  workDir = mkdtempSync(join(tmpdir(), "wssmig-direct-"));
  return workDir;
}

interface RunningBinary {
  process: ReturnType<typeof Bun.spawn>;
  /** Resolves with exit code, stdout and stderr once the binary has exited. */
  result: Promise<{ code: number; stdout: string; stderr: string }>;
}

function runBinary(role: "send" | "receive", args: string[]): RunningBinary {
  const child = Bun.spawn([join(ROOT, "dist", `wssmig-${role}`), ...args], { stdout: "pipe", stderr: "pipe" });
  const result = (async () => {
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    return { code, stdout, stderr };
  })();
  return { process: child, result };
}

/** The JSON log records a binary wrote with --log-format json. */
function logRecords(stderr: string): Record<string, unknown>[] {
  return stderr
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line));
}

function summaryOf(stderr: string): Record<string, unknown> | undefined {
  return logRecords(stderr).find((record) => typeof record.msg === "string" && record.msg.startsWith("migration ") && "averageMBps" in record);
}

interface Pair {
  source: Vm;
  destination: Vm;
  socket: string;
}

async function startPair(options: { memoryMiB: number; liveGuest?: boolean }): Promise<Pair> {
  return { ...(await startVmPair(options)), socket: join(freshWorkDir(), "migration.sock") };
}

/** Starts wssmig-receive and waits until the destination QEMU listens. */
async function startReceive(pair: Pair, extra: string[] = []): Promise<RunningBinary> {
  const receive = runBinary("receive", ["--qmp", pair.destination.qmpPath, "--socket", pair.socket, "--log-format", "json", ...extra]);
  await waitUntil("the destination to listen", () => existsSync(pair.socket) || receive.process.exitCode !== null, 20_000);
  return receive;
}

function sendArgs(pair: Pair, extra: string[] = []): string[] {
  return ["--qmp", pair.source.qmpPath, "--socket", pair.socket, "--log-format", "json", ...extra];
}

function report(label: string, summary: Record<string, unknown> | undefined): void {
  console.log(`${label}: ${summary?.transferred} in ${summary?.totalSeconds} s, ${summary?.averageMBps} MB/s, downtime ${summary?.downtimeMs} ms`);
}

async function migrateAndCheckHashes(pair: Pair, label: string, extra: string[] = []): Promise<void> {
  const receive = await startReceive(pair, extra);
  const send = await runBinary("send", sendArgs(pair, extra)).result;
  const received = await receive.result;
  expect({ send: send.code, receive: received.code }).toEqual({ send: 0, receive: 0 });
  expect(summaryOf(send.stderr)?.status).toBe("completed");
  report(label, summaryOf(send.stderr));
  expect(await pair.source.status()).toBe("postmigrate");
  expect(await pair.destination.status()).toBe("prelaunch");
  expect(await sha256File(pair.destination.ramPath)).toBe(await sha256File(pair.source.ramPath));
}

describe("migration straight over a unix socket (compiled binaries, real QEMU)", () => {
  test("1 GiB of random RAM arrives byte for byte", async () => {
    await migrateAndCheckHashes(await startPair({ memoryMiB: GIB_MIB }), "1 GiB direct");
  }, 180_000);

  test("1 GiB of random RAM with --multifd 4 arrives byte for byte", async () => {
    await migrateAndCheckHashes(await startPair({ memoryMiB: GIB_MIB }), "1 GiB direct multifd 4", ["--multifd", "4"]);
  }, 180_000);

  test("a live guest completes and keeps running on the destination after cont", async () => {
    const pair = await startPair({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const receive = await startReceive(pair);
    const send = await runBinary("send", sendArgs(pair)).result;
    expect({ send: send.code, receive: (await receive.result).code }).toEqual({ send: 0, receive: 0 });
    report("live guest 512 MiB", summaryOf(send.stderr));
    await expectGuestMovedToDestination(pair);
  }, 180_000);

  test("postcopy: a live guest switched to postcopy mid-migration completes", async () => {
    const pair = await startPair({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const receive = await startReceive(pair, ["--postcopy"]);
    // The cap keeps precopy busy long enough for the switch at 1 s; postcopy itself is uncapped.
    const send = await runBinary("send", sendArgs(pair, ["--postcopy-after", "1", "--max-bandwidth", SLOW_BANDWIDTH])).result;
    expect({ send: send.code, receive: (await receive.result).code }).toEqual({ send: 0, receive: 0 });
    const statuses = logRecords(send.stderr).map((record) => record.status);
    expect(statuses).toContain("postcopy-active");
    report("live guest postcopy", summaryOf(send.stderr));
    await expectGuestMovedToDestination(pair);
  }, 180_000);

  test("destination QEMU killed mid-migration: send fails with the cause, the source VM runs on", async () => {
    const pair = await startPair({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const receive = await startReceive(pair);
    const send = runBinary("send", sendArgs(pair, ["--max-bandwidth", SLOW_BANDWIDTH]));
    await waitUntil("the migration to be active", async () => (await pair.source.qmp<{ status?: string }>("query-migrate")).status === "active");
    await Bun.sleep(1000);
    await pair.destination.kill();
    const sent = await send.result;
    expect(sent.code).toBe(1);
    expect(sent.stderr).toMatch(/wssmig-send: error: migration failed: .+; likely cause: the stream to the destination broke: the tunnel \(wssmig-client or wssmig-server\) closed or the destination QEMU exited; see their logs\n$/);
    expect(sent.stderr).toContain("the source VM is running again");
    expect(await pair.source.status()).toBe("running");
    const received = await receive.result;
    expect(received.code).toBe(1);
    expect(received.stderr).toContain("wssmig-receive: error: the destination QEMU exited during the incoming migration");
  }, 180_000);

  test("SIGINT cancels the migration and waits until the source VM runs again", async () => {
    const pair = await startPair({ memoryMiB: LIVE_GUEST_MIB, liveGuest: true });
    const receive = await startReceive(pair);
    const send = runBinary("send", sendArgs(pair, ["--max-bandwidth", SLOW_BANDWIDTH]));
    await waitUntil("the migration to be active", async () => (await pair.source.qmp<{ status?: string }>("query-migrate")).status === "active");
    send.process.kill("SIGINT");
    const sent = await send.result;
    expect(sent.code).toBe(130);
    expect(logRecords(sent.stderr).map((record) => record.msg)).toEqual(
      expect.arrayContaining(["cancelling the migration", "migration cancelled", "the source VM is running again"]),
    );
    expect(await pair.source.status()).toBe("running");
    expect((await receive.result).code).not.toBe(0);
  }, 180_000);

  test("receive refuses a VM that was not started with -incoming defer", async () => {
    const vm = await startVm({ name: "plain", memoryMiB: 64 });
    const result = await runBinary("receive", ["--qmp", vm.qmpPath, "--socket", join(freshWorkDir(), "m.sock")]).result;
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(
      `wssmig-receive: error: the VM at ${vm.qmpPath} is prelaunch, not waiting for an incoming migration; start the destination QEMU with -incoming defer (and the same machine options as the source)\n`,
    );
  }, 60_000);

  test("send fails before touching QEMU when wssmig-client's socket is missing", async () => {
    const vm = await startVm({ name: "lonely", memoryMiB: 64 });
    const socket = join(freshWorkDir(), "missing.sock");
    const result = await runBinary("send", ["--qmp", vm.qmpPath, "--socket", socket]).result;
    expect(result.code).toBe(4);
    expect(result.stderr).toBe(
      `wssmig-send: error: no socket at ${socket}: start wssmig-client first (it creates ${socket} once it has verified the server), or pass --socket\n`,
    );
    const capabilities = await vm.qmp<{ capability: string; state: boolean }[]>("query-migrate-capabilities");
    expect(capabilities.find((entry) => entry.capability === "events")?.state).toBe(false);
  }, 60_000);
});


// ---------------------------------------------------------------------------------------------
// The QMP client against fake peers.

type PeerBehaviour = (socket: Socket<undefined>, line: string) => void;

/** A unix-socket server that greets (or not) and answers each line with `behaviour`. */
function fakePeer(path: string, options: { greeting?: string[]; behaviour?: PeerBehaviour }) {
  const splitter = new LineSplitter();
  return Bun.listen({
    unix: path,
    socket: {
      open(socket) {
        for (const part of options.greeting ?? []) socket.write(part);
      },
      data(socket, chunk) {
        for (const line of splitter.push(chunk)) options.behaviour?.(socket, line);
      },
    },
  });
}

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}\n';

/** Answers qmp_capabilities with {} and other commands as `answer` says. */
function qmpBehaviour(answer: (command: string, id: unknown, socket: Socket<undefined>) => void): PeerBehaviour {
  return (socket, line) => {
    const message = JSON.parse(line);
    if (message.execute === "qmp_capabilities") socket.write(JSON.stringify({ return: {}, id: message.id }) + "\n");
    else answer(message.execute, message.id, socket);
  };
}

describe("QMP client error paths", () => {
  test("a missing socket names the -qmp option to use", async () => {
    const path = join(freshWorkDir(), "none.sock");
    await expect(QmpClient.connect(path)).rejects.toThrow(`no QMP socket at ${path}; start QEMU with -qmp unix:${path},server=on,wait=off`);
  });

  test("a socket file nobody listens on is reported as such", async () => {
    const path = join(freshWorkDir(), "stale.sock");
    fakePeer(path, {}).stop(false);
    // stop() removes the file; put a dead socket back by binding without listening.
    Bun.spawnSync(["python3", "-c", `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`]);
    await expect(QmpClient.connect(path)).rejects.toThrow(`nothing accepts connections on the QMP socket ${path}`);
  });

  test("a peer that is not QMP is named as such", async () => {
    const path = join(freshWorkDir(), "http.sock");
    const server = fakePeer(path, { greeting: ["HTTP/1.1 400 Bad Request\r\n\r\n"] });
    try {
      await expect(QmpClient.connect(path)).rejects.toThrow(`the peer at ${path} does not speak QMP`);
    } finally {
      server.stop(true);
    }
  });

  test("a silent peer times out instead of hanging", async () => {
    const path = join(freshWorkDir(), "silent.sock");
    const server = fakePeer(path, {});
    try {
      await expect(QmpClient.connect(path, { greetingTimeoutMs: 200 })).rejects.toThrow("no QMP greeting within 200 ms");
    } finally {
      server.stop(true);
    }
  });

  test("QEMU's error class and description arrive as a QmpError", async () => {
    const path = join(freshWorkDir(), "error.sock");
    const server = fakePeer(path, {
      greeting: [GREETING],
      behaviour: qmpBehaviour((command, id, socket) => {
        socket.write(JSON.stringify({ error: { class: "CommandNotFound", desc: `The command ${command} has not been found` }, id }) + "\n");
      }),
    });
    const client = await QmpClient.connect(path);
    try {
      const error = (await client.execute("bogus").catch((caught: unknown) => caught)) as QmpError;
      expect(error).toBeInstanceOf(QmpError);
      expect({ errorClass: error.errorClass, desc: error.desc, command: error.command }).toEqual({
        errorClass: "CommandNotFound",
        desc: "The command bogus has not been found",
        command: "bogus",
      });
    } finally {
      client.close();
      server.stop(true);
    }
  });

  test("split greetings, several messages in one read, and events are all understood", async () => {
    const path = join(freshWorkDir(), "split.sock");
    const server = fakePeer(path, {
      greeting: [GREETING.slice(0, 10), GREETING.slice(10)],
      behaviour: qmpBehaviour((_command, id, socket) => {
        const event = JSON.stringify({ event: "MIGRATION", data: { status: "active" }, timestamp: { seconds: 1, microseconds: 2 } });
        const answer = JSON.stringify({ return: { status: "running" }, id });
        // Event and answer in one write, the answer cut across two writes.
        socket.write(`${event}\n${answer.slice(0, 7)}`);
        setTimeout(() => socket.write(`${answer.slice(7)}\n`), 20);
      }),
    });
    const client = await QmpClient.connect(path);
    try {
      const event = client.waitForEvent("MIGRATION", { timeoutMs: 2000 });
      expect(await client.execute("query-status")).toEqual({ status: "running" });
      expect((await event).data).toEqual({ status: "active" });
    } finally {
      client.close();
      server.stop(true);
    }
  });

  test("a command QEMU never answers times out; a peer that goes away fails pending commands", async () => {
    const path = join(freshWorkDir(), "mute.sock");
    const server = fakePeer(path, {
      greeting: [GREETING],
      behaviour: qmpBehaviour((command, _id, socket) => {
        if (command === "quit") socket.end();
      }),
    });
    const client = await QmpClient.connect(path, { commandTimeoutMs: 200 });
    try {
      await expect(client.execute("query-migrate")).rejects.toThrow("QEMU did not answer query-migrate within 0.2 s");
      await expect(client.execute("quit", undefined, { timeoutMs: 5000 })).rejects.toThrow(`QEMU closed the QMP connection at ${path}`);
    } finally {
      client.close();
      server.stop(true);
    }
  });
});

describe("option parsing and messages", () => {
  test("byte rates", () => {
    expect(parseByteRate("500M")).toBe(500 * 1024 ** 2);
    expect(parseByteRate("1G")).toBe(1024 ** 3);
    expect(parseByteRate("1.5g")).toBe(1.5 * 1024 ** 3);
    expect(parseByteRate("1048576")).toBe(1048576);
    expect(() => parseByteRate("fast")).toThrow("expected bytes per second such as 500M");
  });

  test("likely causes", () => {
    expect(likelyFailureCause("Unable to write to socket: Broken pipe")).toStartWith("the stream to the destination broke");
    expect(likelyFailureCause("Failed to connect to 'x': Connection refused")).toStartWith("nothing listens on the migration socket");
  });

  test("progress line", () => {
    const line = formatProgressLine(
      { status: "active", ram: { total: 4 * 1024 ** 3, remaining: 1024 ** 3, transferred: 3 * 1024 ** 3, mbps: 8000, "dirty-pages-rate": 12 }, "expected-downtime": 250 },
      12_345,
      10,
    );
    expect(line).toBe("[########..]   75.0%  3.0 GiB/4.0 GiB  1000 MB/s  left 1.0 GiB  dirty 12 pages/s  downtime~250 ms  12.3 s  active");
  });
});
