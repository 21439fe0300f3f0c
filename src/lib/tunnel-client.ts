/**
 * The source end of the tunnel: proves the TLS set-up against the server at start, then
 * offers a private unix socket to the source QEMU and carries each connection made to it
 * over a WebSocket of its own. Streams are opened strictly one after another, in the order
 * QEMU connected, so the destination sees the same order (see protocol.ts).
 */
import type { Socket, UnixSocketListener } from "bun";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { clientChannel } from "./channels.ts";
import type { Credentials } from "./credentials.ts";
import { ExitCode, WssmigError, describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { StreamPipe } from "./pipe.ts";
import { CloseCode, PROBE_PATH, STREAM_PATH, streamHeaders, streamLabel, type StreamTag } from "./protocol.ts";
import { checkProxy, explainProxyFailure, webSocketProxyOption, type ProxySettings } from "./proxy.ts";
import { clientTlsOptions, explainConnectFailure, urlHostname, type ConnectContext } from "./tls.ts";
import { listenPrivateUnixSocket, removeSocketFile } from "./unix-socket.ts";
import { watchPeer } from "./keepalive.ts";
import { attachPipe, newUnixLeg, unixLegHandlers, type UnixLeg } from "./unix-leg.ts";

export interface TunnelClientConfig {
  /** wss://HOST:PORT of wssmig-server. */
  serverUrl: string;
  /** The name to expect in the server certificate, when it is not the URL's host. */
  serverName?: string;
  /** An HTTP(S) proxy to reach the server through (CONNECT), when there is one. */
  proxy?: ProxySettings;
  credentials: Credentials;
  /** The unix socket offered to the source QEMU. */
  listenSocket: string;
  /** How long opening one WebSocket may take (the server may wait for the destination QEMU). */
  openTimeoutSeconds: number;
  /** Seconds between keepalive pings; the server is declared gone after KEEPALIVE_MISSES_ALLOWED of them unanswered. */
  keepaliveSeconds: number;
  progressIntervalSeconds: number;
  log: Logger;
}

export interface TunnelClient {
  /** Closes every stream (both legs), stops listening and removes the socket file. */
  stop(reason: string): Promise<void>;
}

function webSocketUrl(serverUrl: string, path: string): string {
  const url = new URL(serverUrl);
  url.pathname = path;
  return url.toString();
}

/** Opens a WebSocket and resolves once it is open; rejects with the failure's text. */
function openWebSocket(url: string, config: TunnelClientConfig, headers: Record<string, string>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      tls: clientTlsOptions(config.credentials, config.serverName),
      headers,
      perMessageDeflate: false,
      ...(config.proxy ? { proxy: webSocketProxyOption(config.proxy) } : {}),
    });
    ws.binaryType = "arraybuffer";
    let errorText = "";
    const timer = setTimeout(() => {
      reject(new Error(`timed out after ${config.openTimeoutSeconds} s`));
      ws.terminate();
    }, config.openTimeoutSeconds * 1000);
    ws.onopen = () => {
      clearTimeout(timer);
      ws.onerror = ws.onclose = null;
      resolve(ws);
    };
    ws.onerror = (event) => {
      errorText ||= (event as ErrorEvent).message || "connection failed";
    };
    ws.onclose = (event) => {
      clearTimeout(timer);
      reject(new Error(errorText || event.reason || `closed with code ${event.code}`));
    };
  });
}

function connectContext(config: TunnelClientConfig): ConnectContext {
  return {
    url: config.serverUrl,
    expectedName: config.serverName ?? urlHostname(config.serverUrl),
    credentials: config.credentials,
  };
}

/** Why a WebSocket could not be opened, as one sentence, and the exit code that fits it. */
function explainOpenFailure(detail: string, config: TunnelClientConfig): { message: string; exitCode: ExitCode } {
  const proxyFailure = config.proxy ? explainProxyFailure(detail, config.proxy, config.serverUrl) : null;
  if (proxyFailure) return proxyFailure;
  const certificateProblem = /certificate|altnames|tls|ssl|alert|handshake|verify|connection ended/i.test(detail);
  return { message: explainConnectFailure(detail, connectContext(config)), exitCode: certificateProblem ? ExitCode.Config : ExitCode.Unreachable };
}

/**
 * The resolver's error for --server's host name, or null when it resolves (or is an address).
 * Bun's WebSocket says only "Failed to connect" for a name that does not resolve.
 */
async function serverHostLookupError(serverUrl: string): Promise<string | null> {
  const hostname = urlHostname(serverUrl);
  if (isIP(hostname)) return null;
  try {
    await lookup(hostname);
    return null;
  } catch (error) {
    return describeError(error);
  }
}

/**
 * Completes a TLS and WebSocket handshake with the server, so that a wrong address or a
 * certificate problem is reported before the source QEMU is involved. Returns the server's
 * greeting (its close reason).
 */
export async function probeServer(config: TunnelClientConfig): Promise<string> {
  if (config.proxy) await checkProxy(config.proxy, config.openTimeoutSeconds);
  let ws: WebSocket;
  try {
    ws = await openWebSocket(webSocketUrl(config.serverUrl, PROBE_PATH), config, {});
  } catch (error) {
    let detail = describeError(error);
    if (!config.proxy && /failed to connect/i.test(detail)) detail = (await serverHostLookupError(config.serverUrl)) ?? detail;
    const { message, exitCode } = explainOpenFailure(detail, config);
    throw new WssmigError(message, exitCode);
  }
  return new Promise((resolve) => {
    ws.onclose = (event) => resolve(event.reason);
    ws.close(CloseCode.Normal, "probe done");
  });
}

export async function startTunnelClient(config: TunnelClientConfig): Promise<TunnelClient> {
  const { log } = config;
  const greeting = await probeServer(config);
  const via = config.proxy ? { proxy: config.proxy.display } : {};
  log.info({ server: config.serverUrl, ...via, greeting }, "server verified: TLS and WebSocket handshake completed");

  const session = crypto.randomUUID();
  const pipes = new Set<StreamPipe>();
  let nextSequence = 0;
  // Each stream opens only after the previous one has opened or failed (connection order).
  let previousOpen: Promise<void> = Promise.resolve();
  let stopping = false;

  async function openStream(socket: Socket<UnixLeg>, tag: StreamTag): Promise<void> {
    const leg = socket.data;
    let ws: WebSocket;
    try {
      ws = await openWebSocket(webSocketUrl(config.serverUrl, STREAM_PATH), config, streamHeaders(tag));
    } catch (error) {
      log.error({ stream: leg.label }, `stream refused: ${explainOpenFailure(describeError(error), config).message}`);
      socket.end();
      return;
    }
    if (stopping) {
      ws.close(CloseCode.GoingAway, "wssmig-client is shutting down");
      socket.end();
      return;
    }
    const pipe: StreamPipe = new StreamPipe(socket, clientChannel(ws, () => pipe.onChannelDrain()), {
      label: leg.label,
      log,
      progressIntervalSeconds: config.progressIntervalSeconds,
      onClosed: () => pipes.delete(pipe),
    });
    pipes.add(pipe);
    const peer = watchPeer(ws, config.keepaliveSeconds, (silentSeconds) => {
      const reason = `no answer from wssmig-server for ${silentSeconds.toFixed(1)} s (link down or server stuck)`;
      log.error({ stream: leg.label }, `closing the stream: ${reason}`);
      pipe.fail(CloseCode.PeerUnresponsive, reason);
      ws.terminate(); // a dead link never completes the close handshake
    });
    ws.onmessage = (event) => {
      peer.heard();
      pipe.onChannelMessage(new Uint8Array(event.data as ArrayBuffer));
    };
    ws.onclose = (event) => {
      peer.stop();
      if (event.code !== CloseCode.Normal && event.code !== CloseCode.GoingAway) {
        log.error({ stream: leg.label, code: event.code }, `the server closed the stream: ${event.reason || "connection lost"}`);
      }
      pipe.onChannelClosed(event.code, event.reason);
    };
    log.info({ stream: leg.label }, "stream opened");
    attachPipe(socket, pipe);
    if (!pipe.closed) socket.resume();
  }

  const listener: UnixSocketListener<UnixLeg> = await listenPrivateUnixSocket<UnixLeg>(config.listenSocket, {
    ...unixLegHandlers,
    open(socket) {
      // Hold QEMU's bytes until the stream's WebSocket is open.
      socket.pause();
      const tag = { session, sequence: nextSequence++ };
      socket.data = newUnixLeg(streamLabel(tag));
      log.info({ stream: socket.data.label }, "source QEMU connected");
      previousOpen = previousOpen.then(() => openStream(socket, tag));
    },
  });
  log.info({ socket: config.listenSocket }, `listening on ${config.listenSocket} for the source QEMU`);

  return {
    async stop(reason: string) {
      stopping = true;
      for (const pipe of [...pipes]) pipe.fail(CloseCode.GoingAway, reason);
      listener.stop(true);
      removeSocketFile(config.listenSocket);
    },
  };
}
