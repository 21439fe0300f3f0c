/**
 * Certificate fixtures for tests, built in-process with src/lib/pki.ts (no binary, ~10 ms a set).
 *
 * Every helper writes a complete certificates directory in the layout wssmig-server and
 * wssmig-client read (ca.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem,
 * ca-key.pem; keys 0600, dir 0700). The "odd" helpers take the trusted set and write a new
 * directory whose ca.pem is the TRUSTED CA, so that exactly one thing is wrong:
 *
 *   const good = await makeCertSet(join(tmp, "good"));
 *   const foreign = await makeForeignCaSet(join(tmp, "foreign"), good);
 *   // server with good.dir + client with foreign.dir: the server must refuse the client cert.
 *   // server with foreign.dir + client with good.dir: the client must refuse the server cert.
 *
 * Note: wssmig-server/-client refuse to START with an expired or not-yet-valid certificate of
 * their own (issue #4), so a "peer presents an expired certificate" test has to present the
 * PEMs from these sets with its own TLS client or server, not through the binaries.
 */
import {
  EXTENDED_KEY_USAGE,
  createCertificateAuthority,
  writeCertificateSet,
  type CertificateAuthority,
  type CertificateSet,
  type CertificateSetOptions,
  type CertificateSetPaths,
  type KeyType,
} from "../../src/lib/pki.ts";

export const DEFAULT_TEST_SERVER_CN = "localhost";
/** The names a local test dials: localhost, IPv4 and IPv6 loopback. */
export const DEFAULT_TEST_SANS: readonly string[] = ["localhost", "127.0.0.1", "::1"];

const DAY_MS = 24 * 60 * 60 * 1000;

/** Paths of the six files, plus the generated objects for building related sets. */
export interface TestCertSet extends CertificateSetPaths {
  authority: CertificateAuthority;
  set: CertificateSet;
}

export interface MakeCertSetOptions extends Partial<Omit<CertificateSetOptions, "overwrite">> {
  keyType?: KeyType;
}

/** A valid set: server CN localhost with SANs localhost, 127.0.0.1, ::1; client CN wssmig-test-client. */
export async function makeCertSet(dir: string, options: MakeCertSetOptions = {}): Promise<TestCertSet> {
  const { paths, set } = await writeCertificateSet(dir, {
    serverCn: DEFAULT_TEST_SERVER_CN,
    sans: [...DEFAULT_TEST_SANS],
    clientCn: "wssmig-test-client",
    ...options,
    overwrite: true,
  });
  return { ...paths, authority: set.authority, set };
}

/** ca.pem is the trusted CA, but the server and client certificates are signed by another CA. */
export async function makeForeignCaSet(dir: string, trusted: TestCertSet, options: MakeCertSetOptions = {}): Promise<TestCertSet> {
  const signer = await createCertificateAuthority({ commonName: "foreign CA", keyType: trusted.authority.keyType });
  return makeCertSet(dir, { authority: trusted.authority, signer, ...options });
}

/** Validity that ended yesterday (started 30 days ago). */
export function expiredWindow(): { notBefore: Date; notAfter: Date } {
  return { notBefore: new Date(Date.now() - 30 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) };
}

/** Validity that starts tomorrow. */
export function notYetValidWindow(): { notBefore: Date; notAfter: Date } {
  return { notBefore: new Date(Date.now() + DAY_MS), notAfter: new Date(Date.now() + 30 * DAY_MS) };
}

/** Same CA as trusted; the client certificate expired yesterday. */
export function makeExpiredClientSet(dir: string, trusted: TestCertSet): Promise<TestCertSet> {
  return makeCertSet(dir, { authority: trusted.authority, client: expiredWindow() });
}

/** Same CA as trusted; the server certificate expired yesterday. */
export function makeExpiredServerSet(dir: string, trusted: TestCertSet): Promise<TestCertSet> {
  return makeCertSet(dir, { authority: trusted.authority, server: expiredWindow() });
}

/** Same CA as trusted; the server certificate's SANs are DEFAULT_TEST_SANS minus `missing` (and CN is not `missing`). */
export function makeServerSetWithoutSan(dir: string, trusted: TestCertSet, missing: string): Promise<TestCertSet> {
  const sans = DEFAULT_TEST_SANS.filter((name) => name !== missing);
  // The CN must not be the missing name either, since it is always a SAN.
  const serverCn = sans.includes(DEFAULT_TEST_SERVER_CN) ? DEFAULT_TEST_SERVER_CN : "wssmig-test-server";
  return makeCertSet(dir, { authority: trusted.authority, serverCn, server: { subjectAltNames: sans } });
}

/** Same CA as trusted; the client certificate carries only serverAuth, not clientAuth. */
export function makeClientSetWithoutClientAuth(dir: string, trusted: TestCertSet): Promise<TestCertSet> {
  return makeCertSet(dir, { authority: trusted.authority, client: { extendedKeyUsages: [EXTENDED_KEY_USAGE.serverAuth] } });
}
