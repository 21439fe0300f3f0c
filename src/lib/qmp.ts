/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * QMP is newline-delimited JSON: QEMU greets with {"QMP": ...}, the client negotiates
 * `qmp_capabilities`, then sends {"execute", "arguments", "id"} and gets {"return"} or
 * {"error": {"class", "desc"}} carrying the same id; {"event"} messages arrive at any time.
 *
 * Every wait has a timeout, because a QEMU that is busy cleaning up after a failed migration
 * can leave its monitor silent for seconds, and a peer that is not QEMU may never answer.
 * QEMU serves one QMP client at a time per socket: close the client as soon as you are done.
 */
import { lstatSync } from "node:fs";
import type { Socket } from "bun";
import { ExitCode, WssmigError, describeError } from "./errors.ts";

/** Enough for a QEMU that is slow after a failed migration (see the field notes). */
export const DEFAULT_QMP_TIMEOUT_MS = 30_000;
/** QEMU sends its greeting at once; a silent peer is not QMP. */
export const DEFAULT_GREETING_TIMEOUT_MS = 5_000;

/** An error QEMU returned for a command, with QEMU's error class (e.g. GenericError) and text. */
export class QmpError extends Error {
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(`QEMU refused ${command}: ${desc} (${errorClass})`);
    this.name = "QmpError";
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export type QmpEventListener = (event: QmpEvent) => void;

export interface QmpConnectOptions {
  /** Limit for connecting, the greeting and capability negotiation. */
  greetingTimeoutMs?: number;
  /** Default limit for each command. */
  commandTimeoutMs?: number;
}

interface PendingCommand {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Splits a byte stream into lines. QEMU's messages may arrive split over several reads, or
 * several in one read; only complete lines come out.
 */
export class LineSplitter {
  private buffered = "";
  private readonly decoder = new TextDecoder();

  push(chunk: Uint8Array): string[] {
    this.buffered += this.decoder.decode(chunk, { stream: true });
    const lines = this.buffered.split("\n");
    this.buffered = lines.pop() ?? "";
    return lines.map((line) => line.trim()).filter((line) => line.length > 0);
  }
}

export class QmpClient {
  private socket: Socket<undefined> | undefined;
  private readonly lines = new LineSplitter();
  private readonly pending = new Map<string, PendingCommand>();
  private readonly listeners = new Set<QmpEventListener>();
  private nextId = 1;
  private greeting: { resolve: (value: unknown) => void; reject: (error: Error) => void } | undefined;
  private closedError: Error | undefined;
  private readonly commandTimeoutMs: number;
  private closeListeners = new Set<(error: Error) => void>();

  private constructor(readonly path: string, commandTimeoutMs: number) {
    this.commandTimeoutMs = commandTimeoutMs;
  }

  /** Connects, reads the greeting and leaves capability negotiation mode. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(path, options.commandTimeoutMs ?? DEFAULT_QMP_TIMEOUT_MS);
    await client.open(options.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS);
    return client;
  }

  private async open(greetingTimeoutMs: number): Promise<void> {
    const greetingReceived = new Promise<unknown>((resolve, reject) => {
      this.greeting = { resolve, reject };
    });
    try {
      this.socket = await Bun.connect({
        unix: this.path,
        socket: {
          data: (_socket, chunk) => this.onData(chunk),
          close: () => this.shutDown(new WssmigError(`QEMU closed the QMP connection at ${this.path} (did QEMU exit?)`, ExitCode.Unreachable)),
          error: (_socket, error) => this.shutDown(new WssmigError(`QMP connection to ${this.path} failed: ${error.message}`, ExitCode.Unreachable)),
        },
      });
    } catch (error) {
      throw connectError(this.path, error);
    }
    const timer = setTimeout(() => {
      this.greeting?.reject(notQmpError(this.path, `no QMP greeting within ${greetingTimeoutMs} ms`));
    }, greetingTimeoutMs);
    try {
      await greetingReceived;
      await this.execute("qmp_capabilities", undefined, { timeoutMs: greetingTimeoutMs });
    } catch (error) {
      this.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs a QMP command; resolves with QEMU's "return" value, rejects with QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `wssmig-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new WssmigError(`QEMU did not answer ${command} within ${timeoutMs / 1000} s on ${this.path}; check that QEMU is not hung (is another QMP client holding the socket?)`, ExitCode.Unreachable));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      const message = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      this.write(message + "\n");
    });
  }

  /** Calls the listener for every event from now on; returns the unsubscribe function. */
  onEvent(listener: QmpEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls the listener once if the connection closes or breaks. */
  onClose(listener: (error: Error) => void): () => void {
    if (this.closedError) {
      listener(this.closedError);
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Resolves with the first event named `name` (and matching `accept`) that arrives from now on. */
  waitForEvent(name: string, options: { timeoutMs?: number; accept?: (event: QmpEvent) => boolean } = {}): Promise<QmpEvent> {
    if (this.closedError) return Promise.reject(this.closedError);
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        unsubscribe();
        unwatchClose();
      };
      const timer = setTimeout(() => {
        done();
        reject(new WssmigError(`no ${name} event from QEMU within ${timeoutMs / 1000} s on ${this.path}`, ExitCode.Failure));
      }, timeoutMs);
      const unsubscribe = this.onEvent((event) => {
        if (event.event !== name || (options.accept && !options.accept(event))) return;
        done();
        resolve(event);
      });
      const unwatchClose = this.onClose((error) => {
        done();
        reject(error);
      });
    });
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.shutDown(new WssmigError(`QMP connection to ${this.path} is closed`, ExitCode.Failure));
    this.socket?.end();
  }

  private write(text: string): void {
    // QMP commands are small; a short write here would mean a wedged kernel buffer.
    const written = this.socket?.write(text) ?? 0;
    if (written < Buffer.byteLength(text)) {
      this.shutDown(new WssmigError(`could not send a command to QEMU on ${this.path}: the QMP socket is not writable`, ExitCode.Unreachable));
    }
  }

  private onData(chunk: Uint8Array): void {
    for (const line of this.lines.push(chunk)) {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line);
      } catch {
        this.failGreetingOrClose(notQmpError(this.path, `it sent ${JSON.stringify(line.slice(0, 60))}`));
        return;
      }
      this.dispatch(message);
    }
  }

  private dispatch(message: Record<string, unknown>): void {
    if (this.greeting) {
      if (message.QMP === undefined) {
        this.failGreetingOrClose(notQmpError(this.path, "its first message is not a QMP greeting"));
        return;
      }
      this.greeting.resolve(message.QMP);
      this.greeting = undefined;
      return;
    }
    if (typeof message.event === "string") {
      const event = message as unknown as QmpEvent;
      event.data ??= {};
      for (const listener of [...this.listeners]) listener(event);
      return;
    }
    const id = typeof message.id === "string" ? message.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending || id === undefined) return; // an answer to a command that already timed out
    this.pending.delete(id);
    clearTimeout(pending.timer);
    const error = message.error as { class?: string; desc?: string } | undefined;
    if (error) pending.reject(new QmpError(pending.command, error.class ?? "GenericError", error.desc ?? "unknown error"));
    else pending.resolve(message.return);
  }

  private failGreetingOrClose(error: Error): void {
    if (this.greeting) {
      this.greeting.reject(error);
      this.greeting = undefined;
    }
    this.shutDown(error);
    this.socket?.end();
  }

  /** Fails everything still waiting; later calls see the same error. */
  private shutDown(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    this.greeting?.reject(notQmpError(this.path, "it closed the connection before greeting"));
    this.greeting = undefined;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
    for (const listener of [...this.closeListeners]) listener(error);
    this.closeListeners.clear();
  }
}

/** Opens a client, runs `use`, and always closes it: QEMU serves one QMP client at a time. */
export async function withQmp<T>(path: string, use: (qmp: QmpClient) => Promise<T>, options?: QmpConnectOptions): Promise<T> {
  const qmp = await QmpClient.connect(path, options);
  try {
    return await use(qmp);
  } finally {
    qmp.close();
  }
}

function notQmpError(path: string, detail: string): WssmigError {
  return new WssmigError(
    `the peer at ${path} does not speak QMP (${detail}); point --qmp at the socket given to QEMU's -qmp unix:PATH,server=on,wait=off`,
    ExitCode.Unreachable,
  );
}

/** Turns a failed connect into a sentence that names the fix. */
function connectError(path: string, error: unknown): WssmigError {
  const code = (error as { code?: string }).code;
  if (code === "ENOENT") {
    return new WssmigError(`no QMP socket at ${path}; start QEMU with -qmp unix:${path},server=on,wait=off`, ExitCode.Unreachable);
  }
  if (code === "ECONNREFUSED") {
    if (!isSocketFile(path)) {
      return new WssmigError(`${path} is not a unix socket; point --qmp at the socket given to QEMU's -qmp unix:PATH,server=on,wait=off`, ExitCode.Unreachable);
    }
    return new WssmigError(`nothing accepts connections on the QMP socket ${path} (QEMU has exited and left the file behind?); start QEMU with -qmp unix:${path},server=on,wait=off`, ExitCode.Unreachable);
  }
  if (code === "EACCES") {
    return new WssmigError(`no permission to open the QMP socket ${path}; run as the user that owns QEMU or fix the socket's mode`, ExitCode.Unreachable);
  }
  const message = describeError(error);
  return new WssmigError(`cannot connect to the QMP socket ${path}: ${code ?? message}`, ExitCode.Unreachable);
}

function isSocketFile(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}
