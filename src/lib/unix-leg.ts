/**
 * The unix-socket side of a stream (a connection to or from QEMU) and the Bun socket handlers
 * that feed it to its StreamPipe. Before the pipe exists (the WebSocket is still opening),
 * bytes are kept and an early close is remembered; attachPipe hands both over.
 */
import type { Socket, SocketHandler } from "bun";
import type { StreamPipe } from "./pipe.ts";

export interface UnixLeg {
  label: string;
  pipe: StreamPipe | null;
  /** Bytes QEMU sent before the pipe existed. */
  earlyChunks: Uint8Array[];
  closedEarly: boolean;
}

export function newUnixLeg(label: string): UnixLeg {
  return { label, pipe: null, earlyChunks: [], closedEarly: false };
}

function legClosed(leg: UnixLeg, error?: Error): void {
  if (leg.pipe) leg.pipe.onSocketClosed(error);
  else leg.closedEarly = true;
}

export const unixLegHandlers: SocketHandler<UnixLeg> = {
  data(socket, chunk) {
    const leg = socket.data;
    if (leg.pipe) leg.pipe.onSocketData(chunk);
    else leg.earlyChunks.push(chunk.slice());
  },
  drain(socket) {
    socket.data.pipe?.onSocketDrain();
  },
  end(socket) {
    legClosed(socket.data);
  },
  close(socket, error) {
    legClosed(socket.data, error);
  },
  error(socket, error) {
    legClosed(socket.data, error);
  },
};

/** Connects the leg to its pipe and replays what happened before. */
export function attachPipe(socket: Socket<UnixLeg>, pipe: StreamPipe): void {
  const leg = socket.data;
  leg.pipe = pipe;
  for (const chunk of leg.earlyChunks) pipe.onSocketData(chunk);
  leg.earlyChunks.length = 0;
  if (leg.closedEarly) pipe.onSocketClosed();
}
