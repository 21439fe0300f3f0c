/**
 * MessageChannel adapters for Bun's two WebSocket flavours. Their backpressure signals differ
 * (bun-field-notes.md), so each adapter turns its flavour's signal into the pipe's one rule:
 * send() returns false when the producer must wait for onDrain.
 */
import type { ServerWebSocket } from "bun";
import { DroppedMessageError, type MessageChannel } from "./pipe.ts";

/**
 * Stop reading the unix socket when this much is queued for the peer, and read again when the
 * queue is back under LOW_WATERMARK. Small on purpose: a deep send queue costs CPU in Bun
 * (most likely memmoves of the unsent bytes as the queue drains; perf shows memmove on top).
 * Measured with bench/tunnel.ts against 8 MiB / 2 MiB: 10% less CPU source->destination
 * (3.06 vs 3.38 s/GiB), throughput no lower, peak RSS 78-81 MiB instead of 92-110 MiB.
 * 1 MiB is still several milliseconds of data at tunnel speeds, far above the 1 ms poll.
 */
export const HIGH_WATERMARK = 1 * 1024 * 1024;
export const LOW_WATERMARK = 256 * 1024;
/** Headroom over the high watermark before the server WebSocket would drop a message. */
export const SERVER_BACKPRESSURE_LIMIT = 64 * 1024 * 1024;
/** The client WebSocket has no drain event: how often to look at bufferedAmount while waiting. */
const CLIENT_DRAIN_POLL_MS = 1;

/**
 * Server side: send() returns bytes sent, -1 when queued with backpressure, 0 when the message
 * was dropped. Bun calls the `websocket.drain` handler when the queue empties; the server
 * forwards that to the pipe.
 */
export function serverChannel(ws: ServerWebSocket<unknown>): MessageChannel {
  return {
    send(data) {
      const status = ws.send(data);
      if (status === 0) throw new DroppedMessageError();
      return status > 0 || ws.getBufferedAmount() < HIGH_WATERMARK;
    },
    pauseReceiving: () => ws.pause(),
    resumeReceiving: () => ws.resume(),
    close: (code, reason) => ws.close(code, reason),
  };
}

/**
 * Client side: send() queues everything and returns nothing, and there is no drain event, so
 * we watch bufferedAmount against the watermarks and call onDrain ourselves.
 */
export function clientChannel(ws: WebSocket, onDrain: () => void): MessageChannel {
  let drainTimer: ReturnType<typeof setTimeout> | null = null;
  const waitForDrain = () => {
    if (ws.readyState !== WebSocket.OPEN) {
      drainTimer = null;
      return;
    }
    if (ws.bufferedAmount <= LOW_WATERMARK) {
      drainTimer = null;
      onDrain();
      return;
    }
    drainTimer = setTimeout(waitForDrain, CLIENT_DRAIN_POLL_MS);
  };
  return {
    send(data) {
      ws.send(data);
      if (ws.bufferedAmount < HIGH_WATERMARK) return true;
      drainTimer ??= setTimeout(waitForDrain, CLIENT_DRAIN_POLL_MS);
      return false;
    },
    pauseReceiving: () => void ws.pause(),
    resumeReceiving: () => void ws.resume(),
    close(code, reason) {
      if (drainTimer) clearTimeout(drainTimer);
      drainTimer = null;
      ws.close(code, reason);
    },
  };
}
