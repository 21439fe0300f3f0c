/**
 * Unix-socket chores shared by the roles: a private listening socket (0600 from the start,
 * stale files cleared), and connecting to a socket that may not exist yet.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { Socket, SocketHandler, UnixSocketListener } from "bun";
import { ExitCode, WssmigError, describeError } from "./errors.ts";

/** Creates the socket's directory, readable by this user only, when it does not exist yet. */
function ensureSocketDirectory(path: string): void {
  const directory = dirname(path);
  if (existsSync(directory)) return;
  try {
    mkdirSync(directory, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new WssmigError(`cannot create ${directory} for ${path}: ${describeError(error)}; create it or choose another --socket`, ExitCode.Config);
  }
}

/**
 * Makes `path` ready for a new listening socket: creates its directory, removes a socket file
 * that nobody listens on (left by a process that died), and refuses a path in use or a file
 * that is not a socket.
 */
export async function prepareListenPath(path: string): Promise<void> {
  ensureSocketDirectory(path);
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) {
    throw new WssmigError(`${path} exists and is not a unix socket; remove it or choose another --socket`, ExitCode.Config);
  }
  const inUse = await Bun.connect({ unix: path, socket: { data() {} } }).then(
    (socket) => (socket.end(), true),
    () => false,
  );
  if (inUse) {
    throw new WssmigError(`another process already listens on ${path}; stop it or choose another --socket`, ExitCode.Config);
  }
  unlinkSync(path); // left over by a process that died
}

/** Listens on a unix socket that only our user can use (mode 0600, no window where it is wider). */
export async function listenPrivateUnixSocket<Data>(
  path: string,
  handlers: SocketHandler<Data>,
): Promise<UnixSocketListener<Data>> {
  await prepareListenPath(path);
  const previousUmask = process.umask(0o177);
  try {
    const listener = Bun.listen<Data>({ unix: path, socket: handlers });
    chmodSync(path, 0o600);
    return listener;
  } catch (error) {
    throw new WssmigError(`cannot listen on ${path}: ${describeError(error)}; check the directory exists and is writable, or choose another --socket`, ExitCode.Config);
  } finally {
    process.umask(previousUmask);
  }
}

export function removeSocketFile(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * Refuses a socket that belongs to another (non-root) user: wssmig-server would otherwise hand
 * the VM's memory to whoever managed to put a socket at the path first.
 */
export function assertOwnSocket(path: string): void {
  let owner: number;
  try {
    owner = lstatSync(path).uid;
  } catch {
    return; // not there (yet)
  }
  const me = process.getuid?.() ?? 0;
  if (owner !== me && owner !== 0) {
    throw new WssmigError(`${path} belongs to uid ${owner}, not to this user (uid ${me}); refusing to send VM memory into another user's socket: check who created it, or choose another --socket`, ExitCode.Config);
  }
}

function isNotListeningYet(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === "ENOENT" || code === "ECONNREFUSED";
}

/**
 * Connects to a unix socket, retrying while nobody listens on it yet (QEMU not started, or
 * migrate-incoming not run). onWaiting is called once, when the first attempt fails that way.
 * Returns null when the deadline passes; other errors are thrown.
 */
export async function connectWhenListening<Data>(
  path: string,
  data: Data,
  handlers: SocketHandler<Data>,
  options: { timeoutMs: number; retryMs?: number; onWaiting?: () => void; isCancelled?: () => boolean },
): Promise<Socket<Data> | null> {
  const deadline = performance.now() + options.timeoutMs;
  let reportedWaiting = false;
  for (;;) {
    assertOwnSocket(path);
    try {
      return await Bun.connect<Data>({ unix: path, data, socket: handlers });
    } catch (error) {
      if (!isNotListeningYet(error)) throw error;
      if (!reportedWaiting) {
        reportedWaiting = true;
        options.onWaiting?.();
      }
      if (performance.now() >= deadline || options.isCancelled?.()) return null;
      await Bun.sleep(options.retryMs ?? 100);
    }
  }
}
