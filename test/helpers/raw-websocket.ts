/**
 * A hand-made WebSocket client over node:tls, for tests that must send what no well-behaved
 * client would: bad opcodes, unmasked frames, absurd lengths. It speaks just enough RFC 6455
 * to upgrade, write raw bytes and read the server's close frame.
 */
import { connect, type TLSSocket } from "node:tls";

export interface RawTlsCredentials {
  ca: string;
  cert?: string;
  key?: string;
}

/** Upgrades to a WebSocket at `path`; resolves with the socket once the 101 response is read. */
export async function rawUpgrade(port: number, path: string, credentials: RawTlsCredentials, headers: Record<string, string>): Promise<TLSSocket> {
  const socket = connect({ host: "127.0.0.1", port, servername: "localhost", rejectUnauthorized: true, ...credentials });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  const request = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    `Sec-WebSocket-Key: ${Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64")}`,
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    "",
    "",
  ].join("\r\n");
  socket.write(request);
  const response = await new Promise<string>((resolve, reject) => {
    let text = "";
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (text.includes("\r\n\r\n")) {
        socket.off("data", onData);
        resolve(text);
      }
    };
    socket.on("data", onData);
    socket.once("close", () => reject(new Error(`closed during upgrade: ${text}`)));
  });
  if (!response.startsWith("HTTP/1.1 101")) throw new Error(`upgrade refused: ${response.split("\r\n")[0]}`);
  return socket;
}

/** A masked client frame (or an unmasked one when mask is false). */
export function frame(opcode: number, payload: Uint8Array, options: { mask?: boolean; declaredLength?: bigint } = {}): Buffer {
  const mask = options.mask ?? true;
  const length = options.declaredLength ?? BigInt(payload.length);
  const header: number[] = [0x80 | opcode];
  const maskBit = mask ? 0x80 : 0;
  if (length < 126n) header.push(maskBit | Number(length));
  else if (length < 65536n) header.push(maskBit | 126, Number(length >> 8n) & 0xff, Number(length) & 0xff);
  else {
    header.push(maskBit | 127);
    for (let shift = 56n; shift >= 0n; shift -= 8n) header.push(Number((length >> shift) & 0xffn));
  }
  const maskKey = mask ? Buffer.from([1, 2, 3, 4]) : Buffer.alloc(0);
  const body = Buffer.from(payload);
  if (mask) for (let index = 0; index < body.length; index++) body[index]! ^= maskKey[index % 4]!;
  return Buffer.concat([Buffer.from(header), maskKey, body]);
}

/** Waits for the server to end the connection; returns its close code, or null if it sent none. */
export function closeCodeFrom(socket: TLSSocket, timeoutMs = 10_000): Promise<number | null> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    let code: number | null = null;
    const timer = setTimeout(() => reject(new Error("the server kept the connection open")), timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      // A server close frame: 0x88, unmasked length < 126, then the 2-byte code.
      const at = received.indexOf(0x88);
      if (code === null && at >= 0 && received.length >= at + 4) code = received.readUInt16BE(at + 2);
    });
    socket.on("error", () => {});
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}
