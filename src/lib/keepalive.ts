/**
 * Dead-peer detection for the client WebSocket: ping every interval; when nothing (message,
 * ping or pong) has been heard for `missesAllowed` intervals, the peer is gone (a cut link
 * gives no close, only silence). The server side gets the same bound from Bun's idleTimeout.
 * While the WebSocket is paused nothing can be heard (oven-sh/bun#42976), so no verdict then.
 */
export const KEEPALIVE_MISSES_ALLOWED = 3;

export interface PeerWatch {
  /** Call on every frame received. */
  heard(): void;
  stop(): void;
}

export function watchPeer(ws: WebSocket, intervalSeconds: number, onDead: (silentSeconds: number) => void): PeerWatch {
  let lastHeardAt = performance.now();
  const heard = () => {
    lastHeardAt = performance.now();
  };
  ws.addEventListener("pong", heard);
  ws.addEventListener("ping", heard);
  const timer = setInterval(() => {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (ws.isPaused) {
      lastHeardAt = performance.now();
      return;
    }
    const silentSeconds = (performance.now() - lastHeardAt) / 1000;
    if (silentSeconds >= intervalSeconds * KEEPALIVE_MISSES_ALLOWED) {
      clearInterval(timer);
      onDead(silentSeconds);
      return;
    }
    ws.ping();
  }, intervalSeconds * 1000);
  return {
    heard,
    stop() {
      clearInterval(timer);
      ws.removeEventListener("pong", heard);
      ws.removeEventListener("ping", heard);
    },
  };
}

/** The server's idle timeout for a keepalive interval: Bun accepts 8..960 seconds. */
export function serverIdleTimeoutSeconds(intervalSeconds: number): number {
  return Math.min(960, Math.max(8, Math.ceil(intervalSeconds * KEEPALIVE_MISSES_ALLOWED)));
}
