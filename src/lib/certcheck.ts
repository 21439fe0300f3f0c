/**
 * Inspection of a certificates directory, shared by `wssmig-gencerts check` (every check, one
 * line each) and loadCredentials (the checks a role must pass before it starts: key file mode,
 * own certificate's validity window, key matches certificate).
 *
 * Each check yields a Check whose message is a whole sentence: on failure it names the file,
 * the cause and the fix, so that loadCredentials can throw it as is.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { stat } from "node:fs/promises";
import { x509, type X509Module } from "./x509.ts";

type Certificate = X509Module.X509Certificate;
export type Role = "server" | "client";
export type CheckStatus = "pass" | "warn" | "fail";

export interface Check {
  status: CheckStatus;
  /** What was checked, e.g. "server key file mode". */
  label: string;
  message: string;
}

/** A certificate expiring within this many days gets a warning. */
export const EXPIRY_WARNING_DAYS = 30;
const DAY_MS = 24 * 60 * 60 * 1000;
const REGENERATE = "generate new certificates with wssmig-gencerts and copy them here";

const EKU_NAMES: Record<string, string> = {
  [x509.ExtendedKeyUsage.serverAuth]: "serverAuth",
  [x509.ExtendedKeyUsage.clientAuth]: "clientAuth",
  [x509.ExtendedKeyUsage.codeSigning]: "codeSigning",
  [x509.ExtendedKeyUsage.emailProtection]: "emailProtection",
  [x509.ExtendedKeyUsage.timeStamping]: "timeStamping",
  [x509.ExtendedKeyUsage.ocspSigning]: "OCSPSigning",
};

const pass = (label: string, message: string): Check => ({ status: "pass", label, message });
const warn = (label: string, message: string): Check => ({ status: "warn", label, message });
const fail = (label: string, message: string): Check => ({ status: "fail", label, message });

/** "2026-03-01 12:00:00 UTC": unambiguous for an admin on any host. */
export function formatDate(date: Date): string {
  return date.toISOString().replace("T", " ").replace(/\.\d{3}Z$/, " UTC");
}

/** Parses a PEM certificate; the error text is a sentence naming the file. */
export function parseCertificate(pem: string, path: string, what: string): Certificate | Check {
  try {
    return new x509.X509Certificate(pem);
  } catch {
    return fail(what, `${what} ${path} is not a PEM certificate; ${REGENERATE}`);
  }
}

/** Private keys must not be open to group or others: mode 0600 (or stricter). */
export async function checkKeyFileMode(path: string, what: string): Promise<Check> {
  const label = `${what} file mode`;
  const mode = (await stat(path)).mode & 0o777;
  const modeText = mode.toString(8).padStart(4, "0");
  if ((mode & 0o077) !== 0) {
    return fail(label, `${what} ${path} has mode ${modeText}, so other users can read or change it; run chmod 600 ${path}`);
  }
  return pass(label, `${path} has mode ${modeText}`);
}

/** Validity window against `now`; a warning when fewer than EXPIRY_WARNING_DAYS remain. */
export function checkValidity(certificate: Certificate, path: string, what: string, now: Date): Check {
  const label = `${what} validity`;
  const { notBefore, notAfter } = certificate;
  if (now < notBefore) {
    return fail(label, `${what} ${path} is not valid before ${formatDate(notBefore)}; check this host's clock (now ${formatDate(now)}) or ${REGENERATE}`);
  }
  if (now > notAfter) {
    return fail(label, `${what} ${path} expired on ${formatDate(notAfter)}; ${REGENERATE}`);
  }
  const daysLeft = Math.floor((notAfter.getTime() - now.getTime()) / DAY_MS);
  if (daysLeft < EXPIRY_WARNING_DAYS) {
    return warn(label, `${what} ${path} expires in ${daysLeft} days, on ${formatDate(notAfter)}; ${REGENERATE} before then`);
  }
  return pass(label, `valid until ${formatDate(notAfter)} (${daysLeft} days left)`);
}

/** The public half as JWK fields, which compares equal whatever the PEM flavour (PKCS#8, SEC1, PKCS#1). */
function publicKeyFingerprint(key: KeyObject): string {
  const { kty, crv, x, y, n, e } = key.export({ format: "jwk" });
  return JSON.stringify({ kty, crv, x, y, n, e });
}

export function checkKeyMatchesCertificate(keyPem: string, keyPath: string, certificate: Certificate, certPath: string, what: string): Check {
  const label = `${what} key matches certificate`;
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(keyPem);
  } catch {
    return fail(label, `${what} key ${keyPath} is not an unencrypted PEM private key; ${REGENERATE}`);
  }
  const certificateKey = createPublicKey({ key: Buffer.from(certificate.publicKey.rawData), format: "der", type: "spki" });
  if (publicKeyFingerprint(createPublicKey(privateKey)) !== publicKeyFingerprint(certificateKey)) {
    return fail(label, `${what} key ${keyPath} does not match the certificate ${certPath}; copy the key that was generated with this certificate, or ${REGENERATE}`);
  }
  return pass(label, `${keyPath} is the key of ${certPath}`);
}

async function hasValidSignatureFrom(certificate: Certificate, authority: Certificate): Promise<boolean> {
  try {
    return await certificate.verify({ publicKey: authority.publicKey, signatureOnly: true });
  } catch {
    return false; // e.g. an RSA CA and an ECDSA signature
  }
}

export async function checkSignedBy(certificate: Certificate, certPath: string, authority: Certificate, caPath: string, what: string): Promise<Check> {
  const label = `${what} chain`;
  const fix = "use the certificates and ca.pem from one wssmig-gencerts run";
  if (certificate.issuer !== authority.subject) {
    return fail(label, `${what} ${certPath} was not issued by the CA in ${caPath} (its issuer is ${certificate.issuer}, the CA is ${authority.subject}); ${fix}`);
  }
  if (!(await hasValidSignatureFrom(certificate, authority))) {
    // Typical after running wssmig-gencerts twice: both CAs are called "wssmig CA".
    return fail(label, `${what} ${certPath} was signed by another CA named ${certificate.issuer}, not the one in ${caPath}; ${fix}`);
  }
  return pass(label, `issued by ${authority.subject} (${caPath})`);
}

/** ca.pem must be a CA allowed to sign certificates. */
export function checkIsAuthority(authority: Certificate, caPath: string): Check {
  const label = "CA certificate";
  const constraints = authority.getExtension(x509.BasicConstraintsExtension);
  const keyUsage = authority.getExtension(x509.KeyUsagesExtension);
  if (!constraints?.ca || (keyUsage && !(keyUsage.usages & x509.KeyUsageFlags.keyCertSign))) {
    return fail(label, `${caPath} is not a CA certificate (it needs basicConstraints CA:TRUE and keyCertSign); ${REGENERATE}`);
  }
  return pass(label, `${caPath} is a CA: ${authority.subject}`);
}

/** The EKU a TLS peer demands of this role (OpenSSL and BoringSSL accept a certificate without any EKU). */
export function checkKeyUsage(certificate: Certificate, certPath: string, role: Role): Check {
  const what = `${role} certificate`;
  const label = `${what} key usage`;
  const wanted = role === "server" ? "serverAuth" : "clientAuth";
  const keyUsage = certificate.getExtension(x509.KeyUsagesExtension);
  if (keyUsage && !(keyUsage.usages & x509.KeyUsageFlags.digitalSignature)) {
    return fail(label, `${what} ${certPath} lacks the digitalSignature key usage that TLS needs; ${REGENERATE}`);
  }
  const extended = certificate.getExtension(x509.ExtendedKeyUsageExtension);
  if (!extended) return pass(label, `no extended key usage restriction, so ${wanted} is allowed`);
  const names = extended.usages.map((usage) => EKU_NAMES[String(usage)] ?? String(usage));
  if (!names.includes(wanted)) {
    return fail(label, `${what} ${certPath} lacks the ${wanted} extended key usage (it has ${names.join(", ")}); ${REGENERATE}`);
  }
  return pass(label, `extended key usage ${names.join(", ")}`);
}

/** "::1", "[::1]" and "0:0:0:0:0:0:0:1" compare equal; DNS names compare case-insensitively. */
function canonicalIp(ip: string): string {
  const bare = ip.startsWith("[") ? ip.slice(1, -1) : ip;
  if (!bare.includes(":")) return bare;
  try {
    return new URL(`http://[${bare}]/`).hostname.slice(1, -1); // the URL parser compresses IPv6
  } catch {
    return bare.toLowerCase();
  }
}

function dnsNameMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  const n = name.toLowerCase().replace(/\.$/, "");
  if (p === n) return true;
  // A wildcard covers exactly one leftmost label (RFC 6125 6.4.3).
  return p.startsWith("*.") && n.includes(".") && n.slice(n.indexOf(".")) === p.slice(1);
}

export function subjectAltNames(certificate: Certificate): { type: string; value: string }[] {
  const extension = certificate.getExtension(x509.SubjectAlternativeNameExtension);
  return extension ? extension.names.items.map((name) => ({ type: name.type, value: name.value })) : [];
}

function sanMatches(san: { type: string; value: string }, serverName: string): boolean {
  const isIpName = /^[\d.]+$/.test(serverName) || serverName.includes(":");
  if (san.type === "ip") return isIpName && canonicalIp(san.value) === canonicalIp(serverName);
  return san.type === "dns" && !isIpName && dnsNameMatches(san.value, serverName);
}

/** The name the client dials must be one of the server certificate's SANs (the CN is not consulted). */
export function checkServerName(certificate: Certificate, certPath: string, serverName: string | undefined): Check {
  const label = "server certificate names";
  const sans = subjectAltNames(certificate);
  const listed = sans.map((san) => `${san.type === "ip" ? "IP" : "DNS"}:${san.type === "ip" ? canonicalIp(san.value) : san.value}`).join(", ");
  if (sans.length === 0) {
    return fail(label, `server certificate ${certPath} has no subjectAltName, and clients check the server name against SANs only; ${REGENERATE}`);
  }
  if (serverName === undefined) {
    return pass(label, `SANs ${listed} (pass --server-name to check the name the client dials)`);
  }
  if (!sans.some((san) => sanMatches(san, serverName))) {
    return fail(label, `server certificate ${certPath} is not valid for "${serverName}" (its SANs are ${listed}); dial one of those names or generate the certificates with --san ${serverName}`);
  }
  return pass(label, `"${serverName}" matches the SANs ${listed}`);
}

export interface RoleFiles {
  ca: string;
  cert: string;
  key: string;
}

/**
 * What a role checks about its OWN certificate and key before it starts: key file mode, the
 * certificate parses, key matches certificate, validity window. loadCredentials throws the first
 * failure and logs the warnings; `check` prints them all. The checks stop at an unparseable
 * certificate, since the rest would only repeat that.
 */
export async function checkOwnCredentials(role: Role, files: RoleFiles, certPem: string, keyPem: string, now: Date): Promise<{ checks: Check[]; certificate?: Certificate }> {
  const what = `${role} certificate`;
  const checks: Check[] = [await checkKeyFileMode(files.key, `${role} key`)];
  const certificate = parseCertificate(certPem, files.cert, what);
  if (!(certificate instanceof x509.X509Certificate)) return { checks: [...checks, certificate] };
  checks.push(checkKeyMatchesCertificate(keyPem, files.key, certificate, files.cert, role));
  checks.push(checkValidity(certificate, files.cert, what, now));
  return { checks, certificate };
}

export interface CheckOptions {
  roles: Role[];
  /** The name wssmig-client will dial (host of --server, or --server-name). */
  serverName?: string;
  now?: Date;
}

async function readIfPresent(path: string): Promise<string | undefined> {
  const file = Bun.file(path);
  return (await file.exists()) ? file.text() : undefined;
}

function missing(path: string, what: string): Check {
  return fail(`${what} present`, `${what} ${path} does not exist; create the certificates with wssmig-gencerts or pass --certs with the directory that holds them`);
}

/** Every check `wssmig-gencerts check` reports, in print order. */
export async function runCertificateChecks(filesFor: (role: Role) => RoleFiles, options: CheckOptions): Promise<Check[]> {
  const now = options.now ?? new Date();
  const caPath = filesFor(options.roles[0] ?? "server").ca;
  const checks: Check[] = [];
  const caPem = await readIfPresent(caPath);
  let authority: Certificate | undefined;
  if (caPem === undefined) {
    checks.push(missing(caPath, "CA certificate"));
  } else {
    const parsed = parseCertificate(caPem, caPath, "CA certificate");
    if (parsed instanceof x509.X509Certificate) {
      authority = parsed;
      checks.push(checkIsAuthority(parsed, caPath), checkValidity(parsed, caPath, "CA certificate", now));
    } else {
      checks.push(parsed);
    }
  }
  for (const role of options.roles) {
    const files = filesFor(role);
    const [certPem, keyPem] = [await readIfPresent(files.cert), await readIfPresent(files.key)];
    if (certPem === undefined || keyPem === undefined) {
      if (certPem === undefined) checks.push(missing(files.cert, `${role} certificate`));
      if (keyPem === undefined) checks.push(missing(files.key, `${role} key`));
      continue;
    }
    const own = await checkOwnCredentials(role, files, certPem, keyPem, now);
    checks.push(...own.checks);
    if (!own.certificate) continue;
    if (authority) checks.push(await checkSignedBy(own.certificate, files.cert, authority, caPath, `${role} certificate`));
    checks.push(checkKeyUsage(own.certificate, files.cert, role));
    if (role === "server") checks.push(checkServerName(own.certificate, files.cert, options.serverName));
  }
  return checks;
}

const STATUS_MARKS: Record<CheckStatus, string> = { pass: "✓", warn: "!", fail: "✗" };

export function formatCheck(check: Check): string {
  return `${STATUS_MARKS[check.status]} ${check.label}: ${check.message}`;
}

/** The last line of `check`: PASS only when nothing failed (warnings do not fail). */
export function verdictLine(checks: readonly Check[]): string {
  const failed = checks.filter((check) => check.status === "fail").length;
  const warned = checks.filter((check) => check.status === "warn").length;
  const warnings = warned > 0 ? ` (${warned} warning${warned === 1 ? "" : "s"})` : "";
  if (failed === 0) return `PASS: all ${checks.length} checks passed${warnings}`;
  return `FAIL: ${failed} of ${checks.length} checks failed${warnings}; fix the lines marked ✗ and run the check again`;
}
