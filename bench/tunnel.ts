/**
 * Raw tunnel benchmark, no QEMU: pushes N GiB through wssmig-client -> wssmig-server (the
 * compiled binaries, mutual TLS on loopback) between two unix sockets, in each direction and for
 * several write sizes, and the same through a plain unix-socket relay in Bun (the baseline),
 * interleaved within each round.
 *
 *   node_modules/.bin/bun bench/tunnel.ts [--gib 1] [--rounds 3]
 *
 * Writes bench/results/tunnel.md; see bench/README.md.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { makeCertSet } from "../test/helpers/certs.ts";
import { startTunnel, type Tunnel } from "../test/helpers/tunnel.ts";
import { CpuMeter, describeMachine, fixed, GiB, KiB, machineFacts, markdownTable, max, median, min, MiB, numberOptions } from "./common.ts";

const ROOT = join(import.meta.dir, "..");
const RESULTS = join(import.meta.dir, "results");
/** What the producer hands to one write() call: the unit the tunnel sees per read, at best. */
const WRITE_SIZES = [4 * KiB, 64 * KiB, 1 * MiB];
type Direction = "source->destination" | "destination->source";
const DIRECTIONS: Direction[] = ["source->destination", "destination->source"];
type Path = "unix relay (baseline)" | "wssmig tunnel";

/** Random, so that nothing on the way could profit from compression. */
const PAYLOAD = crypto.getRandomValues(new Uint8Array(1 * MiB));

interface Endpoint {
  kind: "send" | "count";
  total: number;
  writeSize: number;
  done: Promise<void>;
  finish(): void;
}

/** A side of the transfer: either writes `total` bytes in `writeSize` writes, or counts them. */
function endpoint(kind: Endpoint["kind"], total: number, writeSize: number): Endpoint {
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  return { kind, total, writeSize, done, finish };
}

interface SocketState {
  role: Endpoint;
  sent: number;
  pending: Uint8Array | null;
  received: number;
}

/** Writes until the kernel pushes back; resumes from drain. Bun's write() keeps nothing. */
function pump(socket: Socket<SocketState>): void {
  const state = socket.data;
  const { total, writeSize } = state.role;
  for (;;) {
    if (!state.pending) {
      if (state.sent >= total) {
        socket.end();
        state.role.finish();
        return;
      }
      state.pending = PAYLOAD.subarray(0, Math.min(writeSize, total - state.sent));
    }
    const written = Math.max(socket.write(state.pending), 0);
    state.sent += written;
    if (written < state.pending.byteLength) {
      state.pending = state.pending.subarray(written);
      return;
    }
    state.pending = null;
  }
}

const endpointHandlers = {
  open(socket: Socket<SocketState>) {
    if (socket.data.role.kind === "send") pump(socket);
  },
  data(socket: Socket<SocketState>, chunk: Uint8Array) {
    const state = socket.data;
    state.received += chunk.byteLength;
    if (state.role.kind === "count" && state.received >= state.role.total) state.role.finish();
  },
  drain(socket: Socket<SocketState>) {
    if (socket.data.role.kind === "send") pump(socket);
  },
  close() {},
  error() {},
};

/** The destination stand-in: plays whatever role the current run gives it. */
class Destination {
  role: Endpoint | null = null;
  private readonly listener: UnixSocketListener<SocketState>;
  constructor(readonly path: string) {
    const self = this;
    this.listener = Bun.listen<SocketState>({
      unix: path,
      socket: {
        ...endpointHandlers,
        open(socket) {
          socket.data = { role: self.role!, sent: 0, pending: null, received: 0 };
          endpointHandlers.open(socket);
        },
      },
    });
  }
  stop(): void {
    this.listener.stop(true);
  }
}

interface RunResult {
  path: Path;
  direction: Direction;
  writeSize: number;
  round: number;
  MBps: number;
  cpuPerGiB: number;
}

/** One transfer of `gib` GiB through `entry` (the relay's or wssmig-client's socket). */
async function transfer(entry: string, destination: Destination, direction: Direction, writeSize: number, gib: number, pids: Record<string, number>): Promise<{ MBps: number; cpuPerGiB: number }> {
  const total = gib * GiB;
  const sourceRole = endpoint(direction === "source->destination" ? "send" : "count", total, writeSize);
  const destinationRole = endpoint(direction === "source->destination" ? "count" : "send", total, writeSize);
  destination.role = destinationRole;
  const meter = new CpuMeter(pids).start();
  const startedAt = performance.now();
  const socket = await Bun.connect<SocketState>({ unix: entry, data: { role: sourceRole, sent: 0, pending: null, received: 0 }, socket: endpointHandlers });
  const receiver = direction === "source->destination" ? destinationRole : sourceRole;
  const timeout = Bun.sleep(Math.max(120_000, gib * 120_000)).then(() => {
    throw new Error(`${direction} through ${entry}: not all bytes arrived within the time limit`);
  });
  await Promise.race([receiver.done, timeout]);
  const seconds = (performance.now() - startedAt) / 1000;
  const cpu = Object.values(meter.stop()).reduce((sum, value) => sum + value, 0);
  socket.end();
  // Let both legs close before the next run starts.
  await Bun.sleep(200);
  return { MBps: total / 1e6 / seconds, cpuPerGiB: cpu / gib };
}

async function main(): Promise<void> {
  const { gib, rounds } = numberOptions(process.argv.slice(2), { gib: 1, rounds: 3 }) as { gib: number; rounds: number };
  const build = Bun.spawnSync(["bash", "scripts/build.sh"], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`scripts/build.sh failed: ${build.stderr.toString()}`);
  const facts = machineFacts();
  console.log(`tunnel bench: ${gib} GiB per run, ${rounds} rounds; ${describeMachine(facts)}`);

  const dir = mkdtempSync(join(tmpdir(), "wssmig-bench-tunnel-"));
  let tunnel: Tunnel | undefined;
  let relay: ReturnType<typeof Bun.spawn> | undefined;
  let destination: Destination | undefined;
  const results: RunResult[] = [];
  try {
    const certs = await makeCertSet(join(dir, "certs"));
    destination = new Destination(join(dir, "destination.sock"));
    const relaySocket = join(dir, "relay.sock");
    relay = Bun.spawn([process.execPath, join(import.meta.dir, "unix-relay.ts"), relaySocket, destination.path], { stdout: "ignore", stderr: "pipe" });
    tunnel = await startTunnel({ serverCerts: certs.dir, destinationSocket: destination.path, sourceSocket: join(dir, "client.sock"), serverArgs: ["--progress-interval", "0"], clientArgs: ["--progress-interval", "0"] });
    for (let waited = 0; !(await Bun.file(relaySocket).exists()) && waited < 100; waited++) await Bun.sleep(50);

    const paths: { path: Path; entry: string; pids: Record<string, number> }[] = [
      { path: "unix relay (baseline)", entry: relaySocket, pids: { relay: relay.pid } },
      { path: "wssmig tunnel", entry: join(dir, "client.sock"), pids: { client: tunnel.client.pid, server: tunnel.server.pid } },
    ];
    for (let round = 1; round <= rounds; round++) {
      for (const direction of DIRECTIONS) {
        for (const writeSize of WRITE_SIZES) {
          // Baseline and tunnel back to back, their order alternating by round.
          const order = round % 2 ? paths : [...paths].reverse();
          for (const { path, entry, pids } of order) {
            const { MBps, cpuPerGiB } = await transfer(entry, destination, direction, writeSize, gib, pids);
            results.push({ path, direction, writeSize, round, MBps, cpuPerGiB });
            console.log(`round ${round}: ${path}, ${direction}, writes of ${sizeLabel(writeSize)}: ${fixed(MBps)} MB/s, ${fixed(cpuPerGiB, 2)} CPU s/GiB`);
          }
        }
      }
    }
    const rss = { client: tunnel.client.peakRssMiB(), server: tunnel.server.peakRssMiB() };
    report(results, facts, gib, rounds, rss);
  } finally {
    await tunnel?.stop();
    if (relay) {
      relay.kill("SIGTERM");
      await relay.exited;
    }
    destination?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function sizeLabel(bytes: number): string {
  return bytes >= MiB ? `${bytes / MiB} MiB` : `${bytes / KiB} KiB`;
}

function report(results: RunResult[], facts: ReturnType<typeof machineFacts>, gib: number, rounds: number, rss: { client: number; server: number }): void {
  const rows: string[][] = [];
  for (const direction of DIRECTIONS) {
    for (const writeSize of WRITE_SIZES) {
      const pick = (path: Path) => results.filter((result) => result.path === path && result.direction === direction && result.writeSize === writeSize);
      const baseline = pick("unix relay (baseline)");
      const tunnel = pick("wssmig tunnel");
      const ratios = tunnel.map((run) => run.MBps / (baseline.find((base) => base.round === run.round)?.MBps ?? NaN));
      rows.push([
        direction,
        sizeLabel(writeSize),
        `${fixed(median(baseline.map((run) => run.MBps)))} (${fixed(min(baseline.map((run) => run.MBps)))}-${fixed(max(baseline.map((run) => run.MBps)))})`,
        fixed(median(baseline.map((run) => run.cpuPerGiB)), 2),
        `${fixed(median(tunnel.map((run) => run.MBps)))} (${fixed(min(tunnel.map((run) => run.MBps)))}-${fixed(max(tunnel.map((run) => run.MBps)))})`,
        fixed(median(tunnel.map((run) => run.cpuPerGiB)), 2),
        fixed(median(ratios), 2),
      ]);
    }
  }
  const table = markdownTable(["direction", "write size", "relay MB/s (min-max)", "relay CPU s/GiB", "wssmig MB/s (min-max)", "wssmig CPU s/GiB (client+server)", "wssmig / relay"], rows);
  const markdown = [
    `# Tunnel benchmark`,
    ``,
    `${gib} GiB per run, ${rounds} round(s); wssmig-client -> wssmig-server (compiled binaries, mutual TLS over loopback) between two unix sockets, against a plain unix-socket relay in Bun (bench/unix-relay.ts) in the same run. Machine: ${describeMachine(facts)}.`,
    `The producer writes in the given size; the tunnel sees at most that much per read. MB/s = 10^6 bytes per second, first write to last byte counted; CPU is user+system seconds of the relay, or of client + server, per GiB. Medians over rounds; "wssmig / relay" is the median of per-round ratios. Peak RSS after all runs: client ${fixed(rss.client)} MiB, server ${fixed(rss.server)} MiB.`,
    ``,
    table,
    ``,
  ].join("\n");
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(join(RESULTS, "tunnel.md"), markdown);
  console.log(`\n${table}\n\nPeak RSS: client ${fixed(rss.client)} MiB, server ${fixed(rss.server)} MiB\nwrote bench/results/tunnel.md`);
}

await main();
