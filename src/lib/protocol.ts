/**
 * The tunnel's wire contract, in one place.
 *
 * The client opens one WebSocket per connection the source QEMU makes to its unix socket,
 * at STREAM_PATH, carrying its session id and the connection's sequence number. The server
 * upgrades a stream only once it holds a connection to the destination unix socket, and the
 * client opens stream N+1 only after stream N has opened: so the destination QEMU accepts the
 * connections in the order the source QEMU made them (QEMU 7.2 takes the first as the main
 * channel). At start the client opens one WebSocket at PROBE_PATH to prove the TLS set-up.
 * Data travels as binary messages; a text message is a protocol error.
 */
export const PROTOCOL_VERSION = "1";
export const STREAM_PATH = "/wssmig/v1/stream";
export const PROBE_PATH = "/wssmig/v1/probe";
export const SESSION_HEADER = "x-wssmig-session";
export const STREAM_HEADER = "x-wssmig-stream";

/** WebSocket close codes and what they mean to the other end. */
export const CloseCode = {
  /** The other leg ended normally (the QEMU side closed its connection). */
  Normal: 1000,
  /** The process is shutting down (SIGINT/SIGTERM). */
  GoingAway: 1001,
  /** A text frame arrived; the tunnel carries binary messages only. */
  UnsupportedData: 1003,
  /** The unix-socket leg failed with an error. */
  LegFailed: 4000,
  /** The destination QEMU is not listening on the server's socket. */
  DestinationUnavailable: 4001,
  /** The request lacked or had malformed session/stream headers. */
  BadRequest: 4002,
  /** The keepalive saw no answer from the peer. */
  PeerUnresponsive: 4003,
  /** The server already carries as many streams as it allows. */
  TooManyStreams: 4008,
  /** Another migration (session) is using the destination socket. */
  SessionConflict: 4009,
} as const;

/** Limits WebSocket close reasons to the 123 bytes RFC 6455 allows. */
export function closeReason(text: string): string {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= 123) return text;
  return new TextDecoder().decode(bytes.subarray(0, 120)).replace(/\uFFFD$/, "") + "...";
}

const SESSION_PATTERN = /^[A-Za-z0-9-]{8,64}$/;

export interface StreamTag {
  session: string;
  sequence: number;
}

/** Reads the session and sequence headers of a stream request; null when malformed. */
export function parseStreamTag(headers: Headers): StreamTag | null {
  const session = headers.get(SESSION_HEADER) ?? "";
  const sequenceText = headers.get(STREAM_HEADER) ?? "";
  const sequence = Number(sequenceText);
  if (!SESSION_PATTERN.test(session) || !/^\d{1,9}$/.test(sequenceText)) return null;
  return { session, sequence };
}

/** How both ends name a stream in their logs, so that the two logs can be matched up. */
export function streamLabel(tag: StreamTag): string {
  return `${tag.session.slice(0, 8)}/${tag.sequence}`;
}

export function streamHeaders(tag: StreamTag): Record<string, string> {
  return { [SESSION_HEADER]: tag.session, [STREAM_HEADER]: String(tag.sequence) };
}
