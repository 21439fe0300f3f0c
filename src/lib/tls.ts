/**
 * TLS option objects for the two tunnel ends, and the translation of TLS and connection
 * failures into sentences that name the cause and the fix.
 *
 * Both ends verify their peer against ca.pem alone. rejectUnauthorized is always passed as
 * true: on the client, leaving it unset lets NODE_TLS_REJECT_UNAUTHORIZED=0 disable checks.
 */
import { constants } from "node:crypto";
import type { Credentials } from "./credentials.ts";

/** TLS 1.0 and 1.1 are refused; 1.3 is negotiated whenever the peer offers it. */
const REFUSE_OLD_TLS = constants.SSL_OP_NO_TLSv1 | constants.SSL_OP_NO_TLSv1_1;

export function serverTlsOptions(credentials: Credentials) {
  return {
    key: credentials.key,
    cert: credentials.cert,
    ca: credentials.ca,
    requestCert: true,
    rejectUnauthorized: true,
    secureOptions: REFUSE_OLD_TLS,
  } as const;
}

export function clientTlsOptions(credentials: Credentials, serverName?: string) {
  return {
    key: credentials.key,
    cert: credentials.cert,
    ca: credentials.ca,
    rejectUnauthorized: true,
    ...(serverName ? { serverName } : {}),
  } as const;
}

/** A URL's host name as a resolver or certificate check takes it: an IPv6 address without brackets. */
export function urlHostname(url: string | URL): string {
  return new URL(url).hostname.replace(/^\[|\]$/g, "");
}

export interface ConnectContext {
  url: string;
  /** The name the server certificate must carry: --server-name or the URL's host. */
  expectedName: string;
  credentials: Credentials;
}

/**
 * Turns the client WebSocket's error text (Bun gives only a message) into one sentence with
 * the likely cause and what to do. Unknown texts are passed through with a generic hint.
 */
export function explainConnectFailure(errorText: string, context: ConnectContext): string {
  const { url, expectedName, credentials } = context;
  // Bun prefixes every failure with "WebSocket connection to '<url>' failed: "; the URL is said below.
  errorText = errorText.replace(/^WebSocket connection to '[^']*' failed: /, "");
  const text = errorText.toLowerCase();
  const has = (...needles: string[]) => needles.some((needle) => text.includes(needle.toLowerCase()));

  if (has("does not match certificate", "altnames", "hostname mismatch")) {
    return `the server certificate does not name "${expectedName}" (${errorText}); dial a name it lists or pass --server-name, or make a new server certificate with wssmig-gencerts --san ${expectedName}`;
  }
  if (has("certificate has expired", "cert_has_expired")) {
    return `the server certificate has expired (${errorText}); make a new one with wssmig-gencerts and install it on the server`;
  }
  if (has("not yet valid", "cert_not_yet_valid")) {
    return `the server certificate is not valid yet (${errorText}); check both hosts' clocks or make a new certificate with wssmig-gencerts`;
  }
  if (has("unable to verify", "unable to get local issuer", "self signed certificate", "self-signed certificate", "certificate verify failed", "unknown ca")) {
    return `the server certificate is not signed by the CA in ${credentials.files.ca} (${errorText}); use the ca.pem that wssmig-gencerts made together with the server's certificate`;
  }
  if (has("certificate_required", "certificate required", "bad certificate", "certificate unknown", "connection ended", "decrypt error", "handshake failure")) {
    return `the server refused our client certificate ${credentials.files.cert} (${errorText}); it must be signed by the CA the server trusts, valid now, and made for clientAuth: check it with wssmig-gencerts check --role client`;
  }
  if (has("econnrefused", "connection refused", "failed to connect")) {
    // wss:// without a port means 443, which surprises whoever expected the server's 8766.
    const portHint = new URL(url).port ? "" : " (without a port, wss:// means 443; wssmig-server listens on 8766 unless told otherwise)";
    return `nothing accepts connections at ${url} (${errorText}); start wssmig-server there, or fix --server's host and port${portHint}`;
  }
  if (has("enotfound", "getaddrinfo", "dns", "name resolution")) {
    return `cannot resolve ${urlHostname(url)}, the host in --server (${errorText}); fix --server or this host's DNS`;
  }
  if (has("timed out", "timeout", "etimedout")) {
    return `no answer from ${url} in time (${errorText}); check that the host is reachable and that no firewall drops the port`;
  }
  if (has("expected 101", "unexpected server response", "status code")) {
    return `the server at ${url} did not accept a wssmig WebSocket (${errorText}); check that --server points at wssmig-server and not at another web server`;
  }
  return `cannot open the tunnel to ${url} (${errorText}); check --server, the certificates in ${credentials.files.cert}, and that wssmig-server runs there`;
}
