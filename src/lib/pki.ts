/**
 * Builds the private PKI wssmig needs: one CA, a server certificate (serverAuth, SANs) and a
 * client certificate (clientAuth), with @peculiar/x509 on top of WebCrypto. Every knob that a
 * test needs to build a deliberately wrong certificate (validity window, signing CA, EKU, SANs)
 * is an option here, so that fixtures and wssmig-gencerts share one code path.
 */
import { chmod, mkdir, open, stat } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { ExitCode, WssmigError } from "./errors.ts";
import { x509, type X509Module } from "./x509.ts";

export type KeyType = "ecdsa" | "rsa";
export const KEY_TYPES: readonly KeyType[] = ["ecdsa", "rsa"];

export const DEFAULT_VALIDITY_DAYS = 825;
export const DEFAULT_CA_CN = "wssmig CA";
export const DEFAULT_CLIENT_CN = "wssmig-client";
/** Certificates start a few minutes in the past so that hosts whose clocks lag still accept them. */
const CLOCK_SKEW_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

/** The file names wssmig-gencerts writes and loadCredentials reads. */
export const CERTIFICATE_FILE_NAMES = {
  ca: "ca.pem",
  caKey: "ca-key.pem",
  serverCert: "server-cert.pem",
  serverKey: "server-key.pem",
  clientCert: "client-cert.pem",
  clientKey: "client-key.pem",
} as const;
type FileKey = keyof typeof CERTIFICATE_FILE_NAMES;
const KEY_FILES: ReadonlySet<FileKey> = new Set<FileKey>(["caKey", "serverKey", "clientKey"]);

/** A certificate together with its key pair, and both as PEM. */
export interface IssuedCertificate {
  certificate: X509Module.X509Certificate;
  keys: CryptoKeyPair;
  keyType: KeyType;
  certificatePem: string;
  /** PKCS#8 ("BEGIN PRIVATE KEY"). */
  privateKeyPem: string;
}
/** A CA is an issued certificate whose key signs other certificates. */
export type CertificateAuthority = IssuedCertificate;

export interface ValidityOptions {
  /** Default: now minus a few minutes of clock skew. */
  notBefore?: Date;
  /** Default: notBefore plus `days`. */
  notAfter?: Date;
  /** Default: DEFAULT_VALIDITY_DAYS. Ignored when notAfter is given. */
  days?: number;
}

export interface LeafOptions extends ValidityOptions {
  commonName: string;
  keyType?: KeyType;
  /** EKU OIDs; default serverAuth for a server, clientAuth for a client. */
  extendedKeyUsages?: string[];
  /** DNS names or IP literals; default for a server: the common name. */
  subjectAltNames?: string[];
}

function keyAlgorithm(keyType: KeyType) {
  if (keyType === "rsa") {
    return { name: "RSASSA-PKCS1-v1_5", modulusLength: 3072, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
  }
  return { name: "ECDSA", namedCurve: "P-256" };
}

function signingAlgorithm(keyType: KeyType): { name: string; hash?: string } {
  return keyType === "rsa" ? { name: "RSASSA-PKCS1-v1_5" } : { name: "ECDSA", hash: "SHA-256" };
}

export async function generateKeyPair(keyType: KeyType): Promise<CryptoKeyPair> {
  // Extractable so that the private key can be written out as PKCS#8.
  return (await crypto.subtle.generateKey(keyAlgorithm(keyType), true, ["sign", "verify"])) as CryptoKeyPair;
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/** A random 128-bit serial with the top bit clear: RFC 5280 wants a positive number. */
function randomSerialNumber(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return Buffer.from(bytes).toString("hex");
}

function validityWindow(options: ValidityOptions): { notBefore: Date; notAfter: Date } {
  const notBefore = options.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
  const notAfter = options.notAfter ?? new Date(notBefore.getTime() + (options.days ?? DEFAULT_VALIDITY_DAYS) * DAY_MS);
  return { notBefore, notAfter };
}

/** "[::1]" (as written in a URL) and "::1" are the same IP SAN. */
function stripBrackets(name: string): string {
  return name.startsWith("[") && name.endsWith("]") ? name.slice(1, -1) : name;
}

/** One general name per distinct SAN: IP literals (v4 or v6) as IP names, the rest as DNS names. */
export function subjectAltNameEntries(names: readonly string[]): X509Module.JsonGeneralName[] {
  const seen = new Set<string>();
  const entries: X509Module.JsonGeneralName[] = [];
  for (const raw of names) {
    const name = stripBrackets(raw.trim());
    if (name === "" || seen.has(name.toLowerCase())) continue;
    seen.add(name.toLowerCase());
    entries.push(isIP(name) ? { type: "ip", value: name } : { type: "dns", value: name });
  }
  return entries;
}

function distinguishedName(commonName: string): string {
  // Commas and other specials would change the DN's structure; escape them per RFC 4514.
  return `CN=${commonName.replace(/([,+"\\<>;=])/g, "\\$1")}`;
}

export async function createCertificateAuthority(
  options: ValidityOptions & { commonName?: string; keyType?: KeyType } = {},
): Promise<CertificateAuthority> {
  const keyType = options.keyType ?? "ecdsa";
  const keys = await generateKeyPair(keyType);
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialNumber(),
    name: distinguishedName(options.commonName ?? DEFAULT_CA_CN),
    ...validityWindow(options),
    keys,
    signingAlgorithm: signingAlgorithm(keyType),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certificate, keys, keyType, certificatePem: certificate.toString("pem"), privateKeyPem: await privateKeyPem(keys.privateKey) };
}

/** Signs a leaf certificate for `options.commonName` with the CA's key. */
async function issueLeafCertificate(
  authority: CertificateAuthority,
  options: LeafOptions,
  defaultUsages: string[],
  subjectAltNames: string[],
): Promise<IssuedCertificate> {
  const keyType = options.keyType ?? authority.keyType;
  const keys = await generateKeyPair(keyType);
  // TLS 1.2 RSA key exchange encrypts to the key; ECDSA keys only ever sign.
  const usages = keyType === "rsa"
    ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
    : x509.KeyUsageFlags.digitalSignature;
  const extensions: X509Module.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(usages, true),
    new x509.ExtendedKeyUsageExtension(options.extendedKeyUsages ?? defaultUsages, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(authority.keys.publicKey),
  ];
  const sanEntries = subjectAltNameEntries(subjectAltNames);
  if (sanEntries.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sanEntries, false));
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialNumber(),
    subject: distinguishedName(options.commonName),
    issuer: authority.certificate.subjectName,
    ...validityWindow(options),
    publicKey: keys.publicKey,
    signingKey: authority.keys.privateKey,
    signingAlgorithm: signingAlgorithm(authority.keyType),
    extensions,
  });
  return { certificate, keys, keyType, certificatePem: certificate.toString("pem"), privateKeyPem: await privateKeyPem(keys.privateKey) };
}

/** A server certificate: serverAuth, SANs = subjectAltNames (default: the common name). */
export function issueServerCertificate(authority: CertificateAuthority, options: LeafOptions): Promise<IssuedCertificate> {
  const sans = options.subjectAltNames ?? [options.commonName];
  return issueLeafCertificate(authority, options, [x509.ExtendedKeyUsage.serverAuth], sans);
}

/** A client certificate: clientAuth, and SANs only when asked for. */
export function issueClientCertificate(authority: CertificateAuthority, options: LeafOptions): Promise<IssuedCertificate> {
  return issueLeafCertificate(authority, options, [x509.ExtendedKeyUsage.clientAuth], options.subjectAltNames ?? []);
}

export interface CertificateSetOptions extends ValidityOptions {
  serverCn: string;
  /** Extra server SANs; the server CN is always the first SAN. */
  sans?: string[];
  clientCn?: string;
  keyType?: KeyType;
  /** The CA written to ca.pem/ca-key.pem (default: a new one). */
  authority?: CertificateAuthority;
  /** The CA that signs the server and client certificates (default: `authority`); a different one gives a foreign set. */
  signer?: CertificateAuthority;
  /** Per-certificate overrides for odd certificates in tests (validity, EKU, SANs). */
  server?: Partial<LeafOptions>;
  client?: Partial<LeafOptions>;
  /** Replace files that already exist (gencerts --force). */
  overwrite?: boolean;
}

export interface CertificateSet {
  authority: CertificateAuthority;
  server: IssuedCertificate;
  client: IssuedCertificate;
}

export async function createCertificateSet(options: CertificateSetOptions): Promise<CertificateSet> {
  const keyType = options.keyType ?? "ecdsa";
  const validity: ValidityOptions = { notBefore: options.notBefore, notAfter: options.notAfter, days: options.days };
  const authority = options.authority ?? (await createCertificateAuthority({ ...validity, keyType }));
  const signer = options.signer ?? authority;
  const server = await issueServerCertificate(signer, {
    ...validity,
    commonName: options.serverCn,
    keyType,
    subjectAltNames: [options.serverCn, ...(options.sans ?? [])],
    ...options.server,
  });
  const client = await issueClientCertificate(signer, {
    ...validity,
    commonName: options.clientCn ?? DEFAULT_CLIENT_CN,
    keyType,
    ...options.client,
  });
  return { authority, server, client };
}

export type CertificateSetPaths = { dir: string } & { [K in FileKey]: string };

export function certificateSetPaths(dir: string): CertificateSetPaths {
  const paths = { dir } as CertificateSetPaths;
  for (const [key, name] of Object.entries(CERTIFICATE_FILE_NAMES)) paths[key as FileKey] = join(dir, name);
  return paths;
}

/** The certificate-set file names that already exist in dir, in the standard order. */
export async function existingCertificateFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const name of Object.values(CERTIFICATE_FILE_NAMES)) {
    if (await stat(join(dir, name)).then(() => true, () => false)) found.push(name);
  }
  return found;
}

/** Creates dir with mode 0700, or tightens it to 0700 if it exists. */
async function prepareDirectory(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

/**
 * Writes one file with the given mode. The file is created with that mode and chmod-ed before
 * any byte is written, so that a key never sits on disk readable by others, even when an
 * existing file with a looser mode is overwritten.
 */
async function writeFileWithMode(path: string, contents: string, mode: number): Promise<void> {
  const handle = await open(path, "w", mode);
  try {
    await handle.chmod(mode);
    await handle.writeFile(contents);
  } finally {
    await handle.close();
  }
}

/**
 * Generates a certificate set (see createCertificateSet) and writes the six files into dir:
 * keys 0600, certificates 0644, dir 0700. Refuses to replace existing files unless overwrite.
 */
export async function writeCertificateSet(
  dir: string,
  options: CertificateSetOptions,
): Promise<{ paths: CertificateSetPaths; set: CertificateSet }> {
  if (!options.overwrite) {
    const existing = await existingCertificateFiles(dir);
    if (existing.length > 0) {
      throw new WssmigError(
        `${dir} already holds ${existing.join(", ")}; pass --force to overwrite them or choose another directory with --out`,
        ExitCode.Config,
      );
    }
  }
  const set = await createCertificateSet(options);
  await prepareDirectory(dir);
  const paths = certificateSetPaths(dir);
  const contents: Record<FileKey, string> = {
    ca: set.authority.certificatePem,
    caKey: set.authority.privateKeyPem,
    serverCert: set.server.certificatePem,
    serverKey: set.server.privateKeyPem,
    clientCert: set.client.certificatePem,
    clientKey: set.client.privateKeyPem,
  };
  for (const key of Object.keys(CERTIFICATE_FILE_NAMES) as FileKey[]) {
    await writeFileWithMode(paths[key], ensureTrailingNewline(contents[key]), KEY_FILES.has(key) ? 0o600 : 0o644);
  }
  return { paths, set };
}

function ensureTrailingNewline(text: string): string {
  return text.endsWith("\n") ? text : text + "\n";
}

/** EKU OIDs, so that callers need not import @peculiar/x509 (which must load after the shim). */
export const EXTENDED_KEY_USAGE = {
  serverAuth: x509.ExtendedKeyUsage.serverAuth as string,
  clientAuth: x509.ExtendedKeyUsage.clientAuth as string,
} as const;
