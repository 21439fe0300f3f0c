/**
 * The full-duplex, flow-controlled pipe between one unix-socket connection (a QEMU) and one
 * WebSocket (the tunnel). This is the only module that knows Bun's backpressure rules
 * (see shared/notes/bun-field-notes.md):
 *
 * - A Bun socket's write() takes what the kernel accepts and keeps nothing: we keep the rest
 *   in `socketBacklog`, pause the WebSocket, and flush in the socket's drain handler.
 *   end() with data can drop the tail, so we flush first and end() empty.
 * - Sending on the WebSocket is wrapped by a MessageChannel (one per WebSocket flavour) that
 *   says when the peer is slow; we then pause the unix socket until the channel drains.
 *
 * Nothing is ever dropped: when a channel reports a dropped message the stream fails loudly.
 */
import type { Socket } from "bun";
import type { Logger } from "./log.ts";
import { describeError } from "./errors.ts";
import { CloseCode, closeReason } from "./protocol.ts";

/** The WebSocket side of a stream, as the pipe needs it. */
export interface MessageChannel {
  /** Sends one binary message. Returns false when the caller must wait for `onChannelDrain`. */
  send(data: Uint8Array): boolean;
  /** Stops / restarts reading messages from the peer. */
  pauseReceiving(): void;
  resumeReceiving(): void;
  close(code: number, reason: string): void;
}

export interface PipeOptions {
  /** Short label for logs, e.g. "stream 3". */
  label: string;
  log: Logger;
  /** Seconds between progress log lines; 0 disables them. */
  progressIntervalSeconds: number;
  /** Called once when both legs are done. */
  onClosed?: (summary: PipeSummary) => void;
}

export interface PipeSummary {
  /** Bytes read from the unix socket and sent into the tunnel. */
  bytesToTunnel: number;
  /** Bytes received from the tunnel and written to the unix socket. */
  bytesFromTunnel: number;
  seconds: number;
  reason: string;
}

export class DroppedMessageError extends Error {
  constructor() {
    super("the WebSocket dropped a message (send buffer over its limit); the stream is broken");
  }
}

const MiB = 1024 * 1024;

export class StreamPipe {
  private readonly socketBacklog: Uint8Array[] = [];
  private socketPausedForChannel = false;
  private channelPausedForSocket = false;
  private socketOpen = true;
  private channelOpen = true;
  /** The channel closed but backlog bytes still have to reach the unix socket. */
  private endSocketAfterFlush = false;
  private closeReasonText: string | null = null;
  /** False once a leg failed or the tunnel closed with anything but a normal code. */
  private endedNormally = true;
  private bytesToTunnel = 0;
  private bytesFromTunnel = 0;
  private readonly startedAt = performance.now();
  private progressTimer: ReturnType<typeof setInterval> | null = null;
  private lastProgress = { at: this.startedAt, bytes: 0 };

  constructor(
    private readonly socket: Socket<unknown>,
    private readonly channel: MessageChannel,
    private readonly options: PipeOptions,
  ) {
    if (options.progressIntervalSeconds > 0) {
      this.progressTimer = setInterval(() => this.logProgress(), options.progressIntervalSeconds * 1000);
      this.progressTimer.unref?.();
    }
  }

  get closed(): boolean {
    return !this.socketOpen && !this.channelOpen && !this.endSocketAfterFlush;
  }

  // ---- unix socket -> tunnel ----

  onSocketData(chunk: Uint8Array): void {
    if (!this.channelOpen) return; // the tunnel is gone; nobody can take these bytes
    this.bytesToTunnel += chunk.byteLength;
    // One read, one message. Measured (bench/tunnel.ts): a unix read brings up to the socket
    // buffer (~214 KiB here), and that is the cheapest message size; splitting reads into
    // 64 KiB messages cost 14% more CPU, coalescing them into 512 KiB or 1 MiB messages
    // 16-26% more (an extra copy, and the receiver reassembles frames that span its reads).
    let mayContinue: boolean;
    try {
      mayContinue = this.channel.send(chunk);
    } catch (error) {
      this.fail(CloseCode.LegFailed, describeError(error));
      return;
    }
    if (!mayContinue && !this.socketPausedForChannel) {
      this.socketPausedForChannel = true;
      this.socket.pause();
    }
  }

  onChannelDrain(): void {
    if (this.socketPausedForChannel && this.socketOpen) {
      this.socketPausedForChannel = false;
      this.socket.resume();
    }
  }

  // ---- tunnel -> unix socket ----

  onChannelMessage(data: Uint8Array): void {
    if (!this.socketOpen) return;
    this.bytesFromTunnel += data.byteLength;
    // Bun hands every message over in a buffer of its own (checked on 1.4.4: its content stays
    // the same after later messages), so the backlog keeps views, not copies: copying the
    // unwritten tail cost a memmove of most of each message when the consumer is the slower side.
    if (this.socketBacklog.length === 0) {
      const written = this.socket.write(data);
      if (written === data.byteLength) return;
      this.socketBacklog.push(written > 0 ? data.subarray(written) : data);
    } else {
      this.socketBacklog.push(data);
    }
    if (!this.channelPausedForSocket) {
      this.channelPausedForSocket = true;
      this.channel.pauseReceiving();
    }
  }

  onSocketDrain(): void {
    if (!this.flushSocketBacklog()) return;
    if (this.endSocketAfterFlush) {
      this.endSocketAfterFlush = false;
      this.socket.end();
      this.finishIfDone();
      return;
    }
    if (this.channelPausedForSocket && this.channelOpen) {
      this.channelPausedForSocket = false;
      this.channel.resumeReceiving();
    }
  }

  /** Writes as much backlog as the kernel takes; true when the backlog is empty. */
  private flushSocketBacklog(): boolean {
    while (this.socketBacklog.length > 0) {
      const head = this.socketBacklog[0]!;
      const written = this.socket.write(head);
      if (written < head.byteLength) {
        this.socketBacklog[0] = head.subarray(Math.max(written, 0));
        return false;
      }
      this.socketBacklog.shift();
    }
    return true;
  }

  // ---- endings ----

  /** The unix socket ended or closed (the QEMU side hung up, or failed when error is given). */
  onSocketClosed(error?: Error): void {
    if (!this.socketOpen) return;
    this.socketOpen = false;
    this.endSocketAfterFlush = false;
    this.socketBacklog.length = 0;
    if (error) this.recordAbnormalReason(`unix socket failed: ${error.message}`);
    else this.recordReason("the QEMU side closed the connection");
    this.closeChannel(error ? CloseCode.LegFailed : CloseCode.Normal, this.closeReasonText!);
    this.finishIfDone();
  }

  /** The WebSocket closed; whatever is still in the backlog goes to the socket before it ends. */
  onChannelClosed(code: number, reason: string): void {
    if (!this.channelOpen) return;
    this.channelOpen = false;
    const text = `tunnel closed (${code}${reason ? ": " + reason : ""})`;
    if (code === CloseCode.Normal || code === CloseCode.GoingAway) this.recordReason(text);
    else this.recordAbnormalReason(text);
    if (this.socketOpen) {
      this.socketOpen = false;
      if (this.flushSocketBacklog()) this.socket.end();
      else this.endSocketAfterFlush = true;
    }
    this.finishIfDone();
  }

  /** Closes both legs at once, e.g. on shutdown or a protocol error. */
  fail(code: number, reason: string): void {
    if (code === CloseCode.GoingAway) this.recordReason(reason);
    else this.recordAbnormalReason(reason);
    this.closeChannel(code, reason);
    if (this.socketOpen || this.endSocketAfterFlush) {
      this.socketOpen = false;
      this.endSocketAfterFlush = false;
      this.socketBacklog.length = 0;
      this.socket.end();
    }
    this.finishIfDone();
  }

  private closeChannel(code: number, reason: string): void {
    if (!this.channelOpen) return;
    this.channelOpen = false;
    // A paused WebSocket may never notice its own close (oven-sh/bun#42974): resume first.
    if (this.channelPausedForSocket) this.channel.resumeReceiving();
    this.channel.close(code, closeReason(reason));
  }

  private recordReason(reason: string): void {
    this.closeReasonText ??= reason;
  }

  private recordAbnormalReason(reason: string): void {
    if (this.closeReasonText === null) this.endedNormally = false;
    this.recordReason(reason);
  }

  private finished = false;
  private finishIfDone(): void {
    if (this.finished || !this.closed) return;
    this.finished = true;
    if (this.progressTimer) clearInterval(this.progressTimer);
    const summary: PipeSummary = {
      bytesToTunnel: this.bytesToTunnel,
      bytesFromTunnel: this.bytesFromTunnel,
      seconds: (performance.now() - this.startedAt) / 1000,
      reason: this.closeReasonText ?? "closed",
    };
    const totalBytes = summary.bytesToTunnel + summary.bytesFromTunnel;
    const level = this.endedNormally ? "info" : "warn";
    this.options.log[level](
      {
        stream: this.options.label,
        sentMiB: round(summary.bytesToTunnel / MiB),
        receivedMiB: round(summary.bytesFromTunnel / MiB),
        seconds: round(summary.seconds),
        MBps: round(totalBytes / 1e6 / Math.max(summary.seconds, 1e-3)),
        reason: summary.reason,
      },
      "stream closed",
    );
    this.options.onClosed?.(summary);
  }

  private logProgress(): void {
    const now = performance.now();
    const bytes = this.bytesToTunnel + this.bytesFromTunnel;
    const seconds = (now - this.lastProgress.at) / 1000;
    const rate = (bytes - this.lastProgress.bytes) / 1e6 / Math.max(seconds, 1e-3);
    this.lastProgress = { at: now, bytes };
    this.options.log.info(
      {
        stream: this.options.label,
        sentMiB: round(this.bytesToTunnel / MiB),
        receivedMiB: round(this.bytesFromTunnel / MiB),
        MBps: round(rate),
      },
      "stream progress",
    );
  }
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}
