/**
 * The tunnel benchmark's baselines: relays with the same backpressure rules as the tunnel (keep
 * what write() did not take, pause the reading side, flush on drain), and nothing else.
 *
 *   bun bench/relay.ts unix LISTEN_SOCKET TARGET_SOCKET             unix -> unix, one process
 *   bun bench/relay.ts tls-client LISTEN_SOCKET PORT CERTS_DIR       unix -> mutual TLS over TCP
 *   bun bench/relay.ts tls-server PORT TARGET_SOCKET CERTS_DIR       mutual TLS over TCP -> unix
 *
 * A tls-client and a tls-server in front of each other are wssmig's two ends without the
 * WebSocket: the same certificates and TLS options (src/lib/tls.ts), raw bytes on the TLS socket.
 * What wssmig costs above that pair is the price of WebSocket framing in Bun.
 */
import type { Socket } from "bun";
import { loadCredentials } from "../src/lib/credentials.ts";
import { clientTlsOptions, serverTlsOptions } from "../src/lib/tls.ts";

interface Leg {
  peer: Socket<Leg> | null;
  /** Bytes that arrived before the peer connection existed. */
  early: Uint8Array[];
  /** Bytes this leg's socket has yet to take. */
  backlog: Uint8Array[];
  ended: boolean;
}

const USAGE = "usage: relay.ts unix LISTEN_SOCKET TARGET_SOCKET | tls-client LISTEN_SOCKET PORT CERTS_DIR | tls-server PORT TARGET_SOCKET CERTS_DIR";
const [mode, listenAt, target, certsDir] = process.argv.slice(2);
if (!listenAt || !target || (mode !== "unix" && !certsDir)) throw new Error(USAGE);

function newLeg(): Leg {
  return { peer: null, early: [], backlog: [], ended: false };
}

/** Writes to `to`, keeping the rest and pausing `from` when the kernel takes less. */
function forward(from: Socket<Leg>, to: Socket<Leg>, chunk: Uint8Array): void {
  const leg = to.data;
  if (leg.backlog.length === 0) {
    const written = to.write(chunk);
    if (written === chunk.byteLength) return;
    leg.backlog.push(chunk.slice(Math.max(written, 0)));
  } else {
    leg.backlog.push(chunk.slice());
  }
  from.pause();
}

function flush(socket: Socket<Leg>): boolean {
  const leg = socket.data;
  while (leg.backlog.length > 0) {
    const head = leg.backlog[0]!;
    const written = socket.write(head);
    if (written < head.byteLength) {
      leg.backlog[0] = head.subarray(Math.max(written, 0));
      return false;
    }
    leg.backlog.shift();
  }
  return true;
}

/** The other side ended: end this one once its backlog is out. */
function endAfterFlush(socket: Socket<Leg>): void {
  socket.data.ended = true;
  if (flush(socket)) socket.end();
}

const handlers = {
  data(socket: Socket<Leg>, chunk: Uint8Array) {
    const peer = socket.data.peer;
    if (peer) forward(socket, peer, chunk);
    else socket.data.early.push(chunk.slice());
  },
  drain(socket: Socket<Leg>) {
    if (!flush(socket)) return;
    if (socket.data.ended) socket.end();
    else socket.data.peer?.resume();
  },
  end(socket: Socket<Leg>) {
    const peer = socket.data.peer;
    if (peer) endAfterFlush(peer);
  },
  close(socket: Socket<Leg>) {
    const peer = socket.data.peer;
    if (peer && !peer.data.ended) endAfterFlush(peer);
  },
  error() {},
};

/** Accepts on the listening leg and opens the target leg for each connection. */
function relay<Listener>(listen: (socket: typeof handlers & { open(inbound: Socket<Leg>): void }) => Listener, connect: () => Promise<Socket<Leg>>): Listener {
  return listen({
    ...handlers,
    async open(inbound) {
      inbound.data = newLeg();
      const outbound = await connect();
      outbound.data.peer = inbound;
      inbound.data.peer = outbound;
      for (const chunk of inbound.data.early) forward(inbound, outbound, chunk);
      inbound.data.early.length = 0;
    },
  });
}

const connectUnix = (path: string) => () => Bun.connect<Leg>({ unix: path, data: newLeg(), socket: handlers });

if (mode === "unix") {
  relay((socket) => Bun.listen<Leg>({ unix: listenAt, socket }), connectUnix(target));
} else if (mode === "tls-client") {
  const credentials = await loadCredentials(certsDir!, "client");
  const port = Number(target);
  relay(
    (socket) => Bun.listen<Leg>({ unix: listenAt, socket }),
    () => Bun.connect<Leg>({ hostname: "127.0.0.1", port, tls: clientTlsOptions(credentials, "localhost"), data: newLeg(), socket: handlers }),
  );
} else if (mode === "tls-server") {
  const credentials = await loadCredentials(certsDir!, "server");
  const listener = relay((socket) => Bun.listen<Leg>({ hostname: "127.0.0.1", port: Number(listenAt), tls: serverTlsOptions(credentials), socket }), connectUnix(target));
  // Port 0 takes any free port; the bench reads the real one from this line.
  console.error(`relaying (tls-server) 127.0.0.1:${listener.port} -> ${target}`);
} else {
  throw new Error(USAGE);
}
if (mode !== "tls-server") console.error(`relaying (${mode}) ${listenAt} -> ${target}`);
process.on("SIGTERM", () => process.exit(0));
