/**
 * Raw tunnel benchmark, no QEMU: pushes N GiB through wssmig-client -> wssmig-server (the
 * compiled binaries, mutual TLS on loopback) between two unix sockets, in each direction and for
 * several write sizes, and the same through two relays in Bun (bench/relay.ts), interleaved
 * within each round: a plain unix-socket relay (the baseline of every ratio) and a pair of TLS
 * relays (wssmig's two ends with the same certificates, without the WebSocket).
 *
 *   node_modules/.bin/bun bench/tunnel.ts [--gib 1] [--rounds 3] [--write-kib N]
 *
 * Writes bench/results/tunnel.md; see bench/README.md.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { makeCertSet } from "../test/helpers/certs.ts";
import { startTunnel, type Tunnel } from "../test/helpers/tunnel.ts";
import { cleanUpOnSignal, CpuMeter, describeMachine, fixed, GiB, KiB, machineFacts, markdownTable, max, median, min, MiB, numberOptions } from "./common.ts";

const ROOT = join(import.meta.dir, "..");
const RESULTS = join(import.meta.dir, "results");
/** What the producer hands to one write() call: the unit the tunnel sees per read, at best. */
const WRITE_SIZES = [4 * KiB, 64 * KiB, 1 * MiB];
type Direction = "source->destination" | "destination->source";
const DIRECTIONS: Direction[] = ["source->destination", "destination->source"];
type Path = string;
const RELAY: Path = "unix relay (baseline)";
const TLS_RELAY: Path = "TLS relay pair, no WebSocket";
const WSSMIG: Path = "wssmig tunnel";
/**
 * With COMPARE_DIST=DIR, a second tunnel built from DIR's wssmig-server and wssmig-client runs in
 * the same rounds: a before/after comparison of a data-path change on equal terms.
 */
const COMPARE_DIST = process.env.COMPARE_DIST;
const COMPARED: Path = `wssmig from ${COMPARE_DIST}`;

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
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${direction} through ${entry}: not all bytes arrived within the time limit`)), Math.max(120_000, gib * 120_000));
  });
  await Promise.race([receiver.done, timeout]).finally(() => clearTimeout(timer));
  const seconds = (performance.now() - startedAt) / 1000;
  const cpu = Object.values(meter.stop()).reduce((sum, value) => sum + value, 0);
  socket.end();
  // Let both legs close before the next run starts.
  await Bun.sleep(200);
  return { MBps: total / 1e6 / seconds, cpuPerGiB: cpu / gib };
}

function tunnelOptions(certsDir: string, destinationSocket: string, sourceSocket: string) {
  // No progress lines: they would only add noise to the CPU figures.
  return { serverCerts: certsDir, destinationSocket, sourceSocket, serverArgs: ["--progress-interval", "0"], clientArgs: ["--progress-interval", "0"] };
}

async function main(): Promise<void> {
  const options = numberOptions(process.argv.slice(2), { gib: 1, rounds: 3, "write-kib": 0 });
  const { gib, rounds } = options as { gib: number; rounds: number };
  // --write-kib N measures one write size only (quick profiling); by default all of WRITE_SIZES.
  const writeSizes = options["write-kib"]! > 0 ? [options["write-kib"]! * KiB] : WRITE_SIZES;
  const build = Bun.spawnSync(["bash", "scripts/build.sh"], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`scripts/build.sh failed: ${build.stderr.toString()}`);
  const facts = machineFacts();
  console.log(`tunnel bench: ${gib} GiB per run, ${rounds} rounds; ${describeMachine(facts)}`);

  const dir = mkdtempSync(join(tmpdir(), "wssmig-bench-tunnel-"));
  let tunnel: Tunnel | undefined;
  let compared: Tunnel | undefined;
  const relays: Relay[] = [];
  let destination: Destination | undefined;
  const results: RunResult[] = [];
  const cleanup = async () => {
    await tunnel?.stop();
    await compared?.stop();
    for (const relay of relays) {
      relay.process.kill("SIGTERM");
      await relay.process.exited;
    }
    destination?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  cleanUpOnSignal(cleanup);
  try {
    const certs = await makeCertSet(join(dir, "certs"));
    destination = new Destination(join(dir, "destination.sock"));
    const relaySocket = join(dir, "relay.sock");
    const unixRelay = await startRelay(relays, ["unix", relaySocket, destination.path]);
    const tlsServer = await startRelay(relays, ["tls-server", "0", destination.path, certs.dir]);
    const tlsPort = /127\.0\.0\.1:(\d+)/.exec(tlsServer.announcement)![1]!;
    const tlsRelaySocket = join(dir, "tls-relay.sock");
    const tlsClient = await startRelay(relays, ["tls-client", tlsRelaySocket, tlsPort, certs.dir]);
    tunnel = await startTunnel(tunnelOptions(certs.dir, destination.path, join(dir, "client.sock")));

    const paths: { path: Path; entry: string; pids: Record<string, number> }[] = [
      { path: RELAY, entry: relaySocket, pids: { relay: unixRelay.process.pid } },
      { path: TLS_RELAY, entry: tlsRelaySocket, pids: { client: tlsClient.process.pid, server: tlsServer.process.pid } },
      { path: WSSMIG, entry: join(dir, "client.sock"), pids: { client: tunnel.client.pid, server: tunnel.server.pid } },
    ];
    if (COMPARE_DIST) {
      // The helpers always run dist/; this prefix swaps in the binary of the same name from COMPARE_DIST.
      const swap = ["bash", "-c", `exec "${COMPARE_DIST}/$(basename "$0")" "$@"`];
      // Runs are sequential, so both tunnels can forward into the same destination.
      compared = await startTunnel({ ...tunnelOptions(certs.dir, destination.path, join(dir, "client2.sock")), serverPrefix: swap, clientPrefix: swap });
      paths.push({ path: COMPARED, entry: join(dir, "client2.sock"), pids: { client: compared.client.pid, server: compared.server.pid } });
    }
    for (let round = 1; round <= rounds; round++) {
      for (const direction of DIRECTIONS) {
        for (const writeSize of writeSizes) {
          // Baseline and tunnel(s) back to back, their order alternating by round.
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
    report(results, writeSizes, facts, gib, rounds, rss);
  } finally {
    await cleanup();
  }
}

interface Relay {
  process: ReturnType<typeof Bun.spawn<"ignore", "ignore", "pipe">>;
  /** The relay's first stderr line, sent once it listens: "relaying (MODE) FROM -> TO". */
  announcement: string;
}

/** Starts bench/relay.ts with `args` (added to `relays` for clean-up) and waits until it listens. */
async function startRelay(relays: Relay[], args: string[]): Promise<Relay> {
  const child = Bun.spawn([process.execPath, join(import.meta.dir, "relay.ts"), ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const relay: Relay = { process: child, announcement: "" };
  relays.push(relay);
  const decoder = new TextDecoder();
  for await (const chunk of child.stderr) {
    relay.announcement += decoder.decode(chunk, { stream: true });
    if (relay.announcement.includes("\n")) break;
  }
  if (!relay.announcement.startsWith("relaying")) throw new Error(`bench/relay.ts ${args.join(" ")} did not start: ${relay.announcement}`);
  return relay;
}

function sizeLabel(bytes: number): string {
  return bytes >= MiB ? `${bytes / MiB} MiB` : `${bytes / KiB} KiB`;
}

function spread(runs: RunResult[]): string {
  const speeds = runs.map((run) => run.MBps);
  return `${fixed(median(speeds))} (${fixed(min(speeds))}-${fixed(max(speeds))})`;
}

function report(results: RunResult[], writeSizes: number[], facts: ReturnType<typeof machineFacts>, gib: number, rounds: number, rss: { client: number; server: number }): void {
  const rows: string[][] = [];
  const tunnelPaths = [...new Set(results.map((result) => result.path))].filter((path) => path !== RELAY);
  for (const direction of DIRECTIONS) {
    for (const writeSize of writeSizes) {
      const pick = (path: Path) => results.filter((result) => result.path === path && result.direction === direction && result.writeSize === writeSize);
      const baseline = pick(RELAY);
      for (const path of tunnelPaths) {
        const tunnel = pick(path);
        const ratios = tunnel.map((run) => run.MBps / (baseline.find((base) => base.round === run.round)?.MBps ?? NaN));
        rows.push([
          direction,
          sizeLabel(writeSize),
          spread(baseline),
          fixed(median(baseline.map((run) => run.cpuPerGiB)), 2),
          path,
          spread(tunnel),
          fixed(median(tunnel.map((run) => run.cpuPerGiB)), 2),
          fixed(median(ratios), 2),
        ]);
      }
    }
  }
  const header = ["direction", "write size", "unix relay MB/s (min-max)", "unix relay CPU s/GiB", "path", "MB/s (min-max)", "CPU s/GiB (both ends)", "MB/s / unix relay"];
  const table = markdownTable(header, rows);
  const markdown = [
    `# Tunnel benchmark`,
    ``,
    `${gib} GiB per run, ${rounds} round(s); wssmig-client -> wssmig-server (compiled binaries, mutual TLS over loopback) between two unix sockets, against relays in Bun (bench/relay.ts) in the same rounds: a plain unix-socket relay (the baseline), and a pair of relays joined by mutual TLS over loopback with wssmig's certificates and TLS options but no WebSocket (what wssmig costs above that pair is Bun's WebSocket layer). Machine: ${describeMachine(facts)}.`,
    `The producer writes in the given size; the tunnel sees at most that much per read. MB/s = 10^6 bytes per second, first write to last byte counted; CPU is user+system seconds of the unix relay, or of both ends of a path, per GiB. Medians over rounds; "MB/s / unix relay" is the median of per-round ratios. Peak RSS of wssmig after all runs: client ${fixed(rss.client)} MiB, server ${fixed(rss.server)} MiB.`,
    ``,
    table,
    ``,
  ].join("\n");
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(join(RESULTS, "tunnel.md"), markdown);
  console.log(`\n${table}\n\nPeak RSS: client ${fixed(rss.client)} MiB, server ${fixed(rss.server)} MiB\nwrote bench/results/tunnel.md`);
}

await main();
process.exit(0);
