/**
 * The destination end of the tunnel: a wss:// server that requires a client certificate from
 * our CA and joins each stream WebSocket to a new connection on the destination QEMU's unix
 * socket. A stream is upgraded only once that connection exists, which is what lets the client
 * keep the source's connection order (see protocol.ts).
 */
import type { Server, ServerWebSocket, Socket, SocketHandler } from "bun";
import { serverChannel, SERVER_BACKPRESSURE_LIMIT } from "./channels.ts";
import type { Credentials } from "./credentials.ts";
import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { StreamPipe } from "./pipe.ts";
import { CloseCode, closeReason, PROBE_PATH, STREAM_PATH, parseStreamTag, type StreamTag } from "./protocol.ts";
import { serverTlsOptions } from "./tls.ts";
import { connectWhenListening } from "./unix-socket.ts";
import { VERSION } from "./cli.ts";

export interface TunnelServerConfig {
  host: string;
  port: number;
  credentials: Credentials;
  /** The unix socket the destination QEMU listens on. */
  destinationSocket: string;
  /** How long a stream waits for the destination QEMU to listen. */
  destinationWaitSeconds: number;
  /** Seconds of silence after which a WebSocket is pinged and then closed. */
  idleTimeoutSeconds: number;
  progressIntervalSeconds: number;
  /** The largest WebSocket message accepted from a client. */
  maxMessageBytes: number;
  log: Logger;
}

export interface TunnelServer {
  readonly port: number;
  /** Closes every stream (both legs) and stops listening. */
  stop(reason: string): Promise<void>;
}

/** Per unix connection to the destination QEMU. */
interface DestinationLeg {
  label: string;
  pipe: StreamPipe | null;
  /** Bytes QEMU sent before the WebSocket opened. */
  earlyChunks: Uint8Array[];
  closedEarly: boolean;
}

type WebSocketData =
  | { kind: "probe" }
  | { kind: "stream"; tag: StreamTag; socket: Socket<DestinationLeg> }
  /** Refusals decided before the upgrade travel as a close code and reason the client can
   *  read; a plain HTTP error reaches a WebSocket client only as "Expected 101 status code". */
  | { kind: "refused"; code: number; reason: string };

const destinationHandlers: SocketHandler<DestinationLeg> = {
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

function legClosed(leg: DestinationLeg, error?: Error): void {
  if (leg.pipe) leg.pipe.onSocketClosed(error);
  else leg.closedEarly = true;
}

export function startTunnelServer(config: TunnelServerConfig): TunnelServer {
  const { log } = config;
  const pipes = new Set<StreamPipe>();

  function refuse(request: Request, server: Server<WebSocketData>, status: number, reason: string): Response {
    log.warn({ remote: server.requestIP(request)?.address, path: new URL(request.url).pathname, status }, `refused: ${reason}`);
    return new Response(`wssmig-server: ${reason}\n`, { status, headers: { "content-type": "text/plain" } });
  }

  async function upgradeStream(request: Request, server: Server<WebSocketData>, tag: StreamTag): Promise<Response | undefined> {
    const label = `${tag.session.slice(0, 8)}/${tag.sequence}`;
    const leg: DestinationLeg = { label, pipe: null, earlyChunks: [], closedEarly: false };
    let socket: Socket<DestinationLeg> | null;
    try {
      socket = await connectWhenListening(config.destinationSocket, leg, destinationHandlers, {
        timeoutMs: config.destinationWaitSeconds * 1000,
        onWaiting: () =>
          log.info({ stream: label, socket: config.destinationSocket }, `waiting for the destination QEMU to listen on ${config.destinationSocket}`),
        isCancelled: () => request.signal.aborted,
      });
    } catch (error) {
      socket = null;
      log.error({ stream: label, socket: config.destinationSocket }, `cannot connect to ${config.destinationSocket}: ${describeError(error)}`);
    }
    if (!socket) log.error({ stream: label }, `stream refused: no destination QEMU listens on ${config.destinationSocket}`);
    const data: WebSocketData = socket
      ? { kind: "stream", tag, socket }
      : {
          kind: "refused",
          code: CloseCode.DestinationUnavailable,
          reason: `no destination QEMU listens on ${config.destinationSocket}; run wssmig-receive first`,
        };
    if (server.upgrade(request, { data })) return undefined;
    socket?.end();
    return refuse(request, server, 400, "the WebSocket upgrade failed");
  }

  const server = Bun.serve<WebSocketData>({
    hostname: config.host,
    port: config.port,
    tls: serverTlsOptions(config.credentials),
    async fetch(request, server) {
      const path = new URL(request.url).pathname;
      if (path !== STREAM_PATH && path !== PROBE_PATH) {
        return refuse(request, server, 404, `no such path ${path}; the tunnel lives at ${STREAM_PATH}`);
      }
      if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
        return refuse(request, server, 426, "this endpoint takes a WebSocket upgrade; use wssmig-client");
      }
      if (path === PROBE_PATH) {
        return server.upgrade(request, { data: { kind: "probe" } }) ? undefined : refuse(request, server, 400, "the WebSocket upgrade failed");
      }
      const tag = parseStreamTag(request.headers);
      if (!tag) {
        const reason = "missing or malformed session/stream headers; streams come from wssmig-client";
        log.warn({ remote: server.requestIP(request)?.address }, `refused: ${reason}`);
        const data: WebSocketData = { kind: "refused", code: CloseCode.BadRequest, reason };
        return server.upgrade(request, { data }) ? undefined : refuse(request, server, 400, reason);
      }
      return upgradeStream(request, server, tag);
    },
    websocket: {
      perMessageDeflate: false,
      maxPayloadLength: config.maxMessageBytes,
      backpressureLimit: SERVER_BACKPRESSURE_LIMIT,
      closeOnBackpressureLimit: false,
      idleTimeout: config.idleTimeoutSeconds,
      sendPings: true,
      open(ws) {
        const data = ws.data;
        if (data.kind === "probe") ws.close(CloseCode.Normal, `wssmig-server ${VERSION} ready`);
        else if (data.kind === "refused") ws.close(data.code, closeReason(data.reason));
        else openStream(ws, data.socket);
      },
      message(ws, message) {
        const pipe = pipeOf(ws);
        if (!pipe) return;
        if (typeof message === "string") {
          log.warn({ stream: ws.data.kind === "stream" ? ws.data.socket.data.label : "probe" }, "refused: text frame");
          pipe.fail(CloseCode.UnsupportedData, "text frames are not part of the wssmig protocol");
          return;
        }
        pipe.onChannelMessage(message);
      },
      drain(ws) {
        pipeOf(ws)?.onChannelDrain();
      },
      close(ws, code, reason) {
        pipeOf(ws)?.onChannelClosed(code, reason);
      },
    },
    error(error) {
      log.error(`request failed: ${describeError(error)}`);
      return new Response("wssmig-server: internal error\n", { status: 500 });
    },
  });

  function pipeOf(ws: ServerWebSocket<WebSocketData>): StreamPipe | null {
    return ws.data.kind === "stream" ? ws.data.socket.data.pipe : null;
  }

  function openStream(ws: ServerWebSocket<WebSocketData>, socket: Socket<DestinationLeg>): void {
    const leg = socket.data;
    const pipe = new StreamPipe(socket, serverChannel(ws), {
      label: leg.label,
      log,
      progressIntervalSeconds: config.progressIntervalSeconds,
      onClosed: () => pipes.delete(pipe),
    });
    pipes.add(pipe);
    leg.pipe = pipe;
    log.info({ stream: leg.label, remote: ws.remoteAddress, socket: config.destinationSocket }, "stream opened");
    for (const chunk of leg.earlyChunks) pipe.onSocketData(chunk);
    leg.earlyChunks.length = 0;
    if (leg.closedEarly) pipe.onSocketClosed();
  }

  log.info({ host: config.host, port: server.port, destination: config.destinationSocket }, `listening on wss://${config.host}:${server.port}${STREAM_PATH}`);

  return {
    get port() {
      return server.port!;
    },
    async stop(reason: string) {
      for (const pipe of [...pipes]) pipe.fail(CloseCode.GoingAway, reason);
      await server.stop(true);
    },
  };
}
