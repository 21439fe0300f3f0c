/**
 * An HTTP or HTTPS proxy between wssmig-client and wssmig-server, for hosts that reach each
 * other only through one: the client asks the proxy for a CONNECT tunnel and runs its own TLS
 * through it, end to end to wssmig-server. The proxy carries TLS records it cannot read, and
 * both certificates are checked exactly as without a proxy.
 *
 * Only --proxy is read. Proxy environment variables (HTTPS_PROXY, ...) are ignored on purpose,
 * as Bun's WebSocket ignores them too: the path a VM's memory takes is always on the command line.
 */
import { checkKeyFileMode } from "./certcheck.ts";
import { ExitCode, WssmigError, describeError } from "./errors.ts";
import { urlHostname } from "./tls.ts";

export interface ProxySettings {
  /** The URL as given, credentials included: only for the WebSocket option, never for logs. */
  url: string;
  /** The URL without its password, for logs and messages. */
  display: string;
  hostname: string;
  port: number;
  tls: boolean;
  /** PEM text of --proxy-ca: the CA that signed an https proxy's certificate. */
  ca?: string;
  caFile?: string;
  /** Where the login came from, for messages; absent without one. */
  loginSource?: string;
  /** Sentences for the caller to log at warn level. */
  warnings: string[];
}

export interface ProxyOptions {
  /** --proxy */
  url: string;
  /** --proxy-ca */
  caFile?: string;
  /** --proxy-login-file: one line USER:PASSWORD, mode 0600. */
  loginFile?: string;
}

/**
 * Parses --proxy and reads --proxy-ca and --proxy-login-file; every problem is a usage or config
 * error that names the fix.
 */
export async function loadProxySettings(options: ProxyOptions): Promise<ProxySettings> {
  const { url: text, caFile, loginFile } = options;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Not echoed: it may hold a password.
    throw new WssmigError("--proxy is not a URL; write it as http://HOST:PORT (or http://USER:PASSWORD@HOST:PORT)", ExitCode.Usage);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new WssmigError(`--proxy ${redact(url)} must start with http:// or https:// (an HTTP proxy that allows CONNECT)`, ExitCode.Usage);
  }
  const tls = url.protocol === "https:";
  if (caFile && !tls) throw new WssmigError(`--proxy-ca applies only to an https:// proxy, and ${redact(url)} is http://`, ExitCode.Usage);
  const warnings: string[] = [];
  if (loginFile) {
    if (url.username) throw new WssmigError(`give the proxy login either in --proxy or in --proxy-login-file, not both`, ExitCode.Usage);
    await applyLoginFile(url, loginFile);
  } else if (url.password) {
    warnings.push(`the proxy password in --proxy can be read by other local users (ps, /proc); on a shared host put USER:PASSWORD in a file of mode 0600 and pass --proxy-login-file`);
  }
  let ca: string | undefined;
  if (caFile) {
    const file = Bun.file(caFile);
    if (!(await file.exists())) throw new WssmigError(`--proxy-ca ${caFile} does not exist; give the PEM file of the CA that signed the proxy's certificate`, ExitCode.Config);
    ca = await file.text();
  }
  return {
    url: url.toString(),
    display: redact(url),
    hostname: urlHostname(url),
    port: Number(url.port) || (tls ? 443 : 80),
    tls,
    ...(ca ? { ca, caFile } : {}),
    ...(loginFile ? { loginSource: `--proxy-login-file ${loginFile}` } : url.username ? { loginSource: "--proxy" } : {}),
    warnings,
  };
}

/** Sets the URL's user and password from a USER:PASSWORD file that only its owner can read. */
async function applyLoginFile(url: URL, loginFile: string): Promise<void> {
  const file = Bun.file(loginFile);
  if (!(await file.exists())) throw new WssmigError(`--proxy-login-file ${loginFile} does not exist; write USER:PASSWORD into it and chmod 600 it`, ExitCode.Config);
  const mode = await checkKeyFileMode(loginFile, "proxy login file");
  if (mode.status === "fail") throw new WssmigError(mode.message, ExitCode.Config);
  const line = (await file.text()).split("\n")[0]!.replace(/\r$/, "");
  const colon = line.indexOf(":");
  if (colon <= 0) throw new WssmigError(`--proxy-login-file ${loginFile} must hold one line USER:PASSWORD`, ExitCode.Config);
  // The URL setters percent-encode what a URL cannot carry as it is.
  url.username = line.slice(0, colon);
  url.password = line.slice(colon + 1);
}

function redact(url: URL): string {
  const credentials = url.username ? `${url.username}${url.password ? ":***" : ""}@` : "";
  return `${url.protocol}//${credentials}${url.host}`;
}

/**
 * The WebSocket's `proxy` option. Its `tls` is always set, even for an http:// proxy: then Bun
 * uses the tunnel's TLS options (our CA, our client certificate) for wssmig-server only, and
 * checks the proxy's certificate against --proxy-ca, or else the roots built into Bun.
 */
export function webSocketProxyOption(proxy: ProxySettings) {
  return { url: proxy.url, tls: { rejectUnauthorized: true, ...(proxy.ca ? { ca: proxy.ca } : {}) } } as const;
}

/**
 * Connects to the proxy itself (and, for https://, completes and verifies the TLS handshake),
 * so that a wrong address or an untrusted proxy certificate is reported as the proxy's problem:
 * through a proxy, the WebSocket's own errors do not say which of the two connections failed.
 */
export async function checkProxy(proxy: ProxySettings, timeoutSeconds: number): Promise<void> {
  const failure = await new Promise<Error | null>((resolve) => {
    const timer = setTimeout(() => resolve(new Error(`no answer in ${timeoutSeconds} s`)), timeoutSeconds * 1000);
    const settle = (error: Error | null) => {
      clearTimeout(timer);
      resolve(error);
    };
    Bun.connect({
      hostname: proxy.hostname,
      port: proxy.port,
      ...(proxy.tls ? { tls: { rejectUnauthorized: true, serverName: proxy.hostname, ...(proxy.ca ? { ca: proxy.ca } : {}) } } : {}),
      socket: {
        open(socket) {
          if (proxy.tls) return; // wait for the handshake
          settle(null); // before end(): ending may run the close handler at once
          socket.end();
        },
        handshake(socket, success, authorizationError) {
          settle(success && !authorizationError ? null : (authorizationError ?? new Error("TLS handshake failed")));
          socket.end();
        },
        data() {},
        close: () => settle(new Error("the proxy closed the connection")),
        error: (_socket, error) => settle(error),
        connectError: (_socket, error) => settle(error),
      },
    }).catch((error: unknown) => settle(error instanceof Error ? error : new Error(describeError(error))));
  });
  if (!failure) return;
  const detail = describeError(failure);
  if (proxy.tls && /certificate|altnames|verify|tls|ssl|self.signed|issuer|handshake/i.test(detail)) {
    const fix = proxy.ca
      ? `check that ${proxy.caFile} is the CA that signed the proxy's certificate and that the certificate names ${proxy.hostname}`
      : "pass --proxy-ca with the PEM file of the CA that signed it";
    throw new WssmigError(`the proxy ${proxy.display} presented a certificate we do not trust (${detail}); ${fix}`, ExitCode.Config);
  }
  throw new WssmigError(`cannot reach the proxy ${proxy.display} (${detail}); check --proxy's host and port, and that the proxy runs`, ExitCode.Unreachable);
}

/**
 * Turns the WebSocket's error text into a sentence when the proxy answered the CONNECT with
 * an error status; null for failures that are not the proxy's (those are the server's).
 */
export function explainProxyFailure(errorText: string, proxy: ProxySettings, serverUrl: string): { message: string; exitCode: ExitCode } | null {
  const target = new URL(serverUrl).host;
  const answer = /proxy (?:connection failed|authentication required): (\d{3})[^\n]*/i.exec(errorText);
  if (!answer) {
    if (/failed to connect|econnrefused/i.test(errorText)) {
      return { message: `cannot reach the proxy ${proxy.display} (${errorText}); check --proxy's host and port, and that the proxy runs`, exitCode: ExitCode.Unreachable };
    }
    return null;
  }
  const status = Number(answer[1]);
  const said = answer[0].replace(/^proxy (?:connection failed|authentication required): /i, "");
  if (status === 407 || status === 401) {
    const [problem, fix] = proxy.loginSource
      ? [`the proxy ${proxy.display} did not accept the user and password in ${proxy.loginSource}`, "check them"]
      : [`the proxy ${proxy.display} requires a login`, "put USER:PASSWORD in a file of mode 0600 and pass --proxy-login-file, or give it in --proxy as http://USER:PASSWORD@HOST:PORT"];
    return { message: `${problem} (${said}); ${fix}`, exitCode: ExitCode.Config };
  }
  if (status === 403 || status === 405) {
    return {
      message: `the proxy ${proxy.display} does not allow a tunnel to ${target} (${said}); ask its administrator to allow CONNECT to port ${new URL(serverUrl).port || 443}`,
      exitCode: ExitCode.Unreachable,
    };
  }
  if (status >= 500) {
    return {
      message: `the proxy ${proxy.display} could not connect to ${target} (${said}); check that wssmig-server runs there and that the proxy can reach that host and port`,
      exitCode: ExitCode.Unreachable,
    };
  }
  return { message: `the proxy ${proxy.display} refused the tunnel to ${target} (${said}); check --proxy and --server`, exitCode: ExitCode.Unreachable };
}
