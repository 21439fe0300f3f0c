/**
 * Byte producers and consumers for tunnel tests, on real unix sockets (node:net streams, whose
 * write()/drain contract gives us flow control for free on the test side).
 *
 * Data is an AES-128-CTR keystream: fast, incompressible, and different at every offset, so a
 * dropped, repeated or reordered chunk changes the hash.
 */
import { createCipheriv, createHash } from "node:crypto";
import { createServer, connect, type Server, type Socket } from "node:net";

const CHUNK = 256 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

/** Yields `size` bytes of keystream for `seed`, in chunks. */
export function* keystream(seed: string, size: number): Generator<Buffer> {
  const key = createHash("sha256").update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv("aes-128-ctr", key, Buffer.alloc(16));
  for (let done = 0; done < size; done += CHUNK) {
    const length = Math.min(CHUNK, size - done);
    yield cipher.update(length === CHUNK ? ZEROS : ZEROS.subarray(0, length));
  }
}

export function sha256Of(seed: string, size: number): string {
  const hash = createHash("sha256");
  for (const chunk of keystream(seed, size)) hash.update(chunk);
  return hash.digest("hex");
}

/** Writes a keystream to a socket honouring backpressure; resolves when all is handed over. */
export async function writeKeystream(socket: Socket, seed: string, size: number): Promise<void> {
  for (const chunk of keystream(seed, size)) {
    if (socket.destroyed) throw new Error(`socket closed while writing (${seed})`);
    if (!socket.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => (socket.off("close", onClose), resolve());
        const onClose = () => (socket.off("drain", onDrain), reject(new Error(`socket closed while writing (${seed})`)));
        socket.once("drain", onDrain);
        socket.once("close", onClose);
      });
    }
  }
}

/** Counts and hashes everything a socket delivers until it closes. */
export class ReceivedBytes {
  readonly hash = createHash("sha256");
  bytes = 0;
  private waiters: { atLeast: number; resolve: () => void }[] = [];
  add(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.waiters = this.waiters.filter((waiter) => (this.bytes >= waiter.atLeast ? (waiter.resolve(), false) : true));
  }
  waitFor(atLeast: number): Promise<void> {
    if (this.bytes >= atLeast) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ atLeast, resolve }));
  }
  digest(): string {
    return this.hash.digest("hex");
  }
}

export interface SinkConnection {
  index: number;
  received: ReceivedBytes;
  closed: Promise<void>;
  socket: Socket;
}

export interface SinkOptions {
  /** Bytes of keystream (seed "reply-<index>") to send back on each connection. */
  replyBytes?: number;
  /** Read at most this many bytes per second (a slow consumer). */
  readBytesPerSecond?: number;
}

/** A stand-in for the destination QEMU: a unix listener that hashes what each connection sends. */
export class UnixSink {
  readonly connections: SinkConnection[] = [];
  private readonly server: Server;
  private connectionWaiters: (() => void)[] = [];

  private constructor(readonly path: string, options: SinkOptions) {
    this.server = createServer((socket) => this.accept(socket, options));
  }

  static async listen(path: string, options: SinkOptions = {}): Promise<UnixSink> {
    const sink = new UnixSink(path, options);
    await new Promise<void>((resolve, reject) => {
      sink.server.once("error", reject);
      sink.server.listen(path, resolve);
    });
    return sink;
  }

  private accept(socket: Socket, options: SinkOptions): void {
    const index = this.connections.length;
    const received = new ReceivedBytes();
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {});
    if (options.readBytesPerSecond) throttle(socket, received, options.readBytesPerSecond);
    else socket.on("data", (chunk: Buffer) => received.add(chunk));
    if (options.replyBytes) void writeKeystream(socket, `reply-${index}`, options.replyBytes).catch(() => {});
    this.connections.push({ index, received, closed, socket });
    for (const wake of this.connectionWaiters.splice(0)) wake();
  }

  async waitForConnections(count: number): Promise<void> {
    while (this.connections.length < count) await new Promise<void>((resolve) => this.connectionWaiters.push(resolve));
  }

  get totalBytes(): number {
    return this.connections.reduce((sum, connection) => sum + connection.received.bytes, 0);
  }

  close(): Promise<void> {
    for (const connection of this.connections) connection.socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Reads in bursts every 10 ms, never more than the rate allows. */
function throttle(socket: Socket, received: ReceivedBytes, bytesPerSecond: number): void {
  const startedAt = performance.now();
  socket.on("data", (chunk: Buffer) => {
    received.add(chunk);
    const allowedNow = ((performance.now() - startedAt) / 1000) * bytesPerSecond;
    if (received.bytes > allowedNow) {
      socket.pause();
      setTimeout(() => socket.resume(), ((received.bytes - allowedNow) / bytesPerSecond) * 1000);
    }
  });
}

/** A stand-in for the source QEMU: connects to a unix socket. */
export async function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    // Tests provoke broken connections on purpose; they read the outcome from close and counts.
    socket.once("connect", () => (socket.off("error", reject), socket.on("error", () => {}), resolve(socket)));
    socket.once("error", reject);
  });
}

export interface ProducerResult {
  received: ReceivedBytes;
  closed: Promise<void>;
}

/** Starts counting what a socket receives; `closed` resolves when it closes. */
export function receiveFrom(socket: Socket, options: { readBytesPerSecond?: number } = {}): ProducerResult {
  const received = new ReceivedBytes();
  if (options.readBytesPerSecond) throttle(socket, received, options.readBytesPerSecond);
  else socket.on("data", (chunk: Buffer) => received.add(chunk));
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return { received, closed };
}
