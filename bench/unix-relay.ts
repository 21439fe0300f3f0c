/**
 * The tunnel benchmark's baseline: the cheapest relay Bun can do, unix socket to unix socket in
 * one process, with the same backpressure rules as the tunnel (keep what write() did not take,
 * pause the reading side, flush on drain). No TLS, no WebSocket framing.
 *
 *   bun bench/unix-relay.ts LISTEN_SOCKET TARGET_SOCKET
 */
import type { Socket } from "bun";

interface Leg {
  peer: Socket<Leg> | null;
  /** Bytes that arrived before the peer connection existed. */
  early: Uint8Array[];
  /** Bytes this leg's socket has yet to take. */
  backlog: Uint8Array[];
  ended: boolean;
}

const [listenPath, targetPath] = process.argv.slice(2);
if (!listenPath || !targetPath) throw new Error("usage: unix-relay.ts LISTEN_SOCKET TARGET_SOCKET");

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

Bun.listen<Leg>({
  unix: listenPath,
  socket: {
    ...handlers,
    async open(inbound) {
      inbound.data = newLeg();
      const outbound = await Bun.connect<Leg>({ unix: targetPath, data: newLeg(), socket: handlers });
      outbound.data.peer = inbound;
      inbound.data.peer = outbound;
      for (const chunk of inbound.data.early) forward(inbound, outbound, chunk);
      inbound.data.early.length = 0;
    },
  },
});
console.error(`relaying ${listenPath} -> ${targetPath}`);
process.on("SIGTERM", () => process.exit(0));
