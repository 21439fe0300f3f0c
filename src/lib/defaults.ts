/** Defaults shared by the roles, so that each pair of roles agrees without options. */
import { join } from "node:path";

export const DEFAULT_PORT = 8766;
export const DEFAULT_HOST = "0.0.0.0";
export const DEFAULT_CERTS_DIR = "./certs";

/**
 * Where the default unix sockets live: a directory only this user may enter (created 0700),
 * never a shared /tmp path, so that another local user can neither connect to the migration
 * sockets nor put a socket of their own in their place.
 */
export function defaultSocketDirectory(): string {
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return "/run/wssmig";
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, "wssmig");
  return `/tmp/wssmig-${uid}`;
}

/** The unix socket the destination QEMU listens on (wssmig-receive) and wssmig-server forwards into. */
export const DEFAULT_INCOMING_SOCKET = join(defaultSocketDirectory(), "incoming.sock");
/** The unix socket wssmig-client offers and the source QEMU migrates to (wssmig-send). */
export const DEFAULT_OUTGOING_SOCKET = join(defaultSocketDirectory(), "outgoing.sock");
