/** Defaults shared by the roles, so that each pair of roles agrees without options. */
export const DEFAULT_PORT = 8766;
export const DEFAULT_HOST = "0.0.0.0";
export const DEFAULT_CERTS_DIR = "./certs";
/** The unix socket the destination QEMU listens on (wssmig-receive) and wssmig-server forwards into. */
export const DEFAULT_INCOMING_SOCKET = "/tmp/wssmig-incoming.sock";
/** The unix socket wssmig-client offers and the source QEMU migrates to (wssmig-send). */
export const DEFAULT_OUTGOING_SOCKET = "/tmp/wssmig-outgoing.sock";
