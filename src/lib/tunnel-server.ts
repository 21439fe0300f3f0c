/**
 * The destination end of the tunnel: a wss:// server that requires a client certificate from
 * our CA and joins each stream WebSocket to a new connection on the destination QEMU's unix
 * socket. A stream is upgraded only once that connection exists, which is what lets the client
 * keep the source's connection order (see protocol.ts).
 */
import type { Server, ServerWebSocket, Socket } from "bun";
import { serverChannel, SERVER_BACKPRESSURE_LIMIT } from "./channels.ts";
import type { Credentials } from "./credentials.ts";
import { WssmigError, describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { StreamPipe } from "./pipe.ts";
import { CloseCode, closeReason, PROBE_PATH, STREAM_PATH, parseStreamTag, streamLabel, type StreamTag } from "./protocol.ts";
import { RefusalLog } from "./refusal-log.ts";
import { serverTlsOptions } from "./tls.ts";
import { connectWhenListening } from "./unix-socket.ts";
import { attachPipe, newUnixLeg, unixLegHandlers, type UnixLeg } from "./unix-leg.ts";
import { VERSION } from "./cli.ts";

/** Bun's HTTP idle timeout; seen to close stalled handshakes after about 12 s. */
const HANDSHAKE_TIMEOUT_SECONDS = 10;

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
  /** The most streams open (or connecting) at once. */
  maxStreams: number;
  log: Logger;
}

export interface TunnelServer {
  readonly port: number;
  /** Closes every stream (both legs) and stops listening. */
  stop(reason: string): Promise<void>;
}

type WebSocketData =
  | { kind: "probe" }
  | { kind: "stream"; tag: StreamTag; socket: Socket<UnixLeg> }
  /** Refusals decided before the upgrade travel as a close code and reason the client can
   *  read; a plain HTTP error reaches a WebSocket client only as "Expected 101 status code". */
  | { kind: "refused"; code: number; reason: string };

/**
 * One migration at a time per destination socket: streams carry their session, and while
 * streams of one session are open (or connecting), another session's are refused. Also caps
 * the number of streams.
 */
class StreamAdmission {
  private activeSession: string | null = null;
  private streams = 0;
  constructor(private readonly maxStreams: number, private readonly destinationSocket: string) {}

  /** Takes a place for the stream, or returns the refusal. */
  admit(session: string): { code: number; reason: string } | null {
    if (this.activeSession !== null && this.activeSession !== session) {
      return {
        code: CloseCode.SessionConflict,
        reason: `another migration (session ${this.activeSession.slice(0, 8)}) is using ${this.destinationSocket}; wait for it to end`,
      };
    }
    if (this.streams >= this.maxStreams) {
      return { code: CloseCode.TooManyStreams, reason: `the server already carries ${this.maxStreams} streams (--max-streams)` };
    }
    this.activeSession = session;
    this.streams++;
    return null;
  }

  release(): void {
    this.streams--;
    if (this.streams === 0) this.activeSession = null;
  }
}

export function startTunnelServer(config: TunnelServerConfig): TunnelServer {
  const { log } = config;
  const pipes = new Set<StreamPipe>();
  const admission = new StreamAdmission(config.maxStreams, config.destinationSocket);
  const refusals = new RefusalLog(log);

  function refuse(request: Request, server: Server<WebSocketData>, status: number, reason: string): Response {
    refusals.refused(reason, { remote: server.requestIP(request)?.address, path: new URL(request.url).pathname, status });
    return new Response(`wssmig-server: ${reason}\n`, { status, headers: { "content-type": "text/plain" } });
  }

  /** Upgrades only to close at once with a reason the client can read. */
  function refuseStream(request: Request, server: Server<WebSocketData>, label: string, code: number, reason: string): Response | undefined {
    refusals.refused(reason, { stream: label, remote: server.requestIP(request)?.address, code });
    const data: WebSocketData = { kind: "refused", code, reason };
    return server.upgrade(request, { data }) ? undefined : refuse(request, server, 400, reason);
  }

  async function upgradeStream(request: Request, server: Server<WebSocketData>, tag: StreamTag): Promise<Response | undefined> {
    const label = streamLabel(tag);
    const refusal = admission.admit(tag.session);
    if (refusal) return refuseStream(request, server, label, refusal.code, refusal.reason);
    const connected = await connectDestination(request, label);
    if (typeof connected === "string") {
      admission.release();
      if (request.signal.aborted) {
        log.info({ stream: label }, "the client went away while its stream waited for the destination QEMU");
        return new Response(null, { status: 499 }); // nobody is left to read it
      }
      return refuseStream(request, server, label, CloseCode.DestinationUnavailable, connected);
    }
    const socket = connected;
    // From here the place is released when the stream's pipe closes.
    if (server.upgrade(request, { data: { kind: "stream", tag, socket } })) return undefined;
    admission.release();
    socket.end();
    return refuse(request, server, 400, "the WebSocket upgrade failed");
  }

  /** A new connection to the destination QEMU, waiting for it to listen; or why there is none. */
  async function connectDestination(request: Request, label: string): Promise<Socket<UnixLeg> | string> {
    try {
      const socket = await connectWhenListening(config.destinationSocket, newUnixLeg(label), unixLegHandlers, {
        timeoutMs: config.destinationWaitSeconds * 1000,
        onWaiting: () =>
          log.info({ stream: label, socket: config.destinationSocket }, `waiting for the destination QEMU to listen on ${config.destinationSocket}`),
        isCancelled: () => request.signal.aborted,
      });
      return socket ?? `no destination QEMU listens on ${config.destinationSocket}; run wssmig-receive first`;
    } catch (error) {
      return error instanceof WssmigError ? error.message : `cannot connect to ${config.destinationSocket}: ${describeError(error)}`;
    }
  }

  const server = Bun.serve<WebSocketData>({
    hostname: config.host,
    port: config.port,
    tls: serverTlsOptions(config.credentials),
    // Closes connections idle before a request, e.g. TLS handshakes that stall halfway.
    idleTimeout: HANDSHAKE_TIMEOUT_SECONDS,
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
      if (!tag) return refuseStream(request, server, "-", CloseCode.BadRequest, "missing or malformed session/stream headers; streams come from wssmig-client");
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
          refusals.refused("text frame", { stream: ws.data.kind === "stream" ? ws.data.socket.data.label : "probe" });
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

  function openStream(ws: ServerWebSocket<WebSocketData>, socket: Socket<UnixLeg>): void {
    const leg = socket.data;
    const pipe = new StreamPipe(socket, serverChannel(ws), {
      label: leg.label,
      log,
      progressIntervalSeconds: config.progressIntervalSeconds,
      onClosed: () => {
        pipes.delete(pipe);
        admission.release();
      },
    });
    pipes.add(pipe);
    log.info({ stream: leg.label, remote: ws.remoteAddress, socket: config.destinationSocket }, "stream opened");
    attachPipe(socket, pipe);
  }

  // An IPv6 address goes in brackets, so that the logged URL can be pasted into --server.
  const urlHost = config.host.includes(":") ? `[${config.host}]` : config.host;
  log.info({ host: config.host, port: server.port, destination: config.destinationSocket }, `listening on wss://${urlHost}:${server.port}${STREAM_PATH}`);

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
