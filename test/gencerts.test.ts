/**
 * wssmig-gencerts through the compiled binary: the files it writes, what openssl thinks of
 * them, its refusal to overwrite, and `wssmig-gencerts check` on good and broken sets.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, copyFile, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatDate } from "../src/lib/certcheck.ts";
import { ExitCode } from "../src/lib/errors.ts";
import { makeCertSet, makeExpiredServerSet, makeForeignCaSet, type TestCertSet } from "./helpers/certs.ts";

const ROOT = join(import.meta.dir, "..");
const BINARY = join(ROOT, "dist", "wssmig-gencerts");
const SIX_FILES = ["ca-key.pem", "ca.pem", "client-cert.pem", "client-key.pem", "server-cert.pem", "server-key.pem"];
let tmp: string;

/** True when dist/wssmig-gencerts is newer than every source file it could include. */
async function binaryIsCurrent(): Promise<boolean> {
  const binaryTime = await stat(BINARY).then((info) => info.mtimeMs, () => 0);
  const sources = (await readdir(join(ROOT, "src"), { recursive: true })).filter((name) => name.endsWith(".ts"));
  const sourceTimes = await Promise.all(sources.map(async (name) => (await stat(join(ROOT, "src", name))).mtimeMs));
  return binaryTime > Math.max(...sourceTimes);
}

/**
 * Runs scripts/build.sh when the binary is stale. The script builds gencerts first, so a later
 * role that does not compile (work in progress elsewhere) need not stop these tests.
 */
async function ensureBinaryIsCurrent(): Promise<void> {
  if (await binaryIsCurrent()) return;
  const build = Bun.spawnSync(["bash", "scripts/build.sh"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (!(await binaryIsCurrent())) throw new Error(`scripts/build.sh did not build ${BINARY}: ${build.stderr.toString()}`);
}

interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function run(command: string[], cwd = tmp): Promise<RunResult> {
  const child = Bun.spawn(command, { cwd, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { exitCode, stdout, stderr };
}

const gencerts = (...args: string[]) => run([BINARY, ...args]);
const opensslExtensions = async (certPath: string, extensions: string) =>
  (await run(["openssl", "x509", "-in", certPath, "-noout", "-ext", extensions])).stdout;
const modeOf = async (path: string) => (await stat(path)).mode & 0o777;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "wssmig-gencerts-"));
  await ensureBinaryIsCurrent();
});
afterAll(() => rm(tmp, { recursive: true, force: true }));

describe("wssmig-gencerts", () => {
  const out = () => join(tmp, "set");

  test("writes the six files with private modes and tells what to copy where", async () => {
    const result = await gencerts("--server-cn", "dest.example", "--san", "10.0.0.2", "--san", "::1", "--san", "alt.example", "--out", out());
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect((await readdir(out())).sort()).toEqual(SIX_FILES);
    expect(await modeOf(out())).toBe(0o700);
    for (const key of ["ca-key.pem", "server-key.pem", "client-key.pem"]) expect(await modeOf(join(out(), key))).toBe(0o600);
    for (const cert of ["ca.pem", "server-cert.pem", "client-cert.pem"]) expect(await modeOf(join(out(), cert))).toBe(0o644);
    expect(result.stdout).toContain(`wrote ${out()}/server-key.pem (server key, mode 0600)\n`);
    expect(result.stdout).toContain("next: copy ca.pem, server-cert.pem and server-key.pem to the destination host");
    expect(result.stdout).toContain("and ca.pem, client-cert.pem and client-key.pem to the source host");
    expect(await Bun.file(join(out(), "server-key.pem")).text()).toStartWith("-----BEGIN PRIVATE KEY-----\n");
  });

  test("openssl verifies both certificates against ca.pem", async () => {
    const verify = await run(["openssl", "verify", "-CAfile", "ca.pem", "server-cert.pem", "client-cert.pem"], out());
    expect(verify.stdout).toBe("server-cert.pem: OK\nclient-cert.pem: OK\n");
    expect(verify.exitCode).toBe(0);
  });

  test("the server certificate has serverAuth and the CN plus every --san, IPs as IP SANs", async () => {
    expect(await opensslExtensions(join(out(), "server-cert.pem"), "extendedKeyUsage,subjectAltName")).toBe(
      "X509v3 Extended Key Usage: \n    TLS Web Server Authentication\n" +
        "X509v3 Subject Alternative Name: \n    DNS:dest.example, IP Address:10.0.0.2, IP Address:0:0:0:0:0:0:0:1, DNS:alt.example\n",
    );
    expect(await opensslExtensions(join(out(), "server-cert.pem"), "keyUsage")).toBe("X509v3 Key Usage: critical\n    Digital Signature\n");
  });

  test("the client certificate has clientAuth; the CA is a CA that signs certificates", async () => {
    expect(await opensslExtensions(join(out(), "client-cert.pem"), "extendedKeyUsage")).toBe(
      "X509v3 Extended Key Usage: \n    TLS Web Client Authentication\n",
    );
    expect(await opensslExtensions(join(out(), "ca.pem"), "basicConstraints,keyUsage")).toBe(
      "X509v3 Basic Constraints: critical\n    CA:TRUE, pathlen:0\nX509v3 Key Usage: critical\n    Certificate Sign, CRL Sign\n",
    );
    const text = (await run(["openssl", "x509", "-in", join(out(), "server-cert.pem"), "-noout", "-text"])).stdout;
    expect(text).toContain("ASN1 OID: prime256v1");
  });

  test("refuses to overwrite existing files, names them, and leaves them alone", async () => {
    const caBefore = await Bun.file(join(out(), "ca.pem")).text();
    const result = await gencerts("--server-cn", "other", "--out", out());
    expect(result.stderr).toBe(
      `wssmig-gencerts: error: ${out()} already holds ca.pem, ca-key.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem; pass --force to overwrite them or choose another directory with --out\n`,
    );
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(result.stdout).toBe("");
    expect(await Bun.file(join(out(), "ca.pem")).text()).toBe(caBefore);
  });

  test("refuses when only some of the files exist, naming just those", async () => {
    const dir = join(tmp, "partial");
    await mkdir(dir);
    await Bun.write(join(dir, "server-key.pem"), "old");
    const result = await gencerts("--server-cn", "x", "--out", dir);
    expect(result.stderr).toBe(`wssmig-gencerts: error: ${dir} already holds server-key.pem; pass --force to overwrite them or choose another directory with --out\n`);
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(await Bun.file(join(dir, "server-key.pem")).text()).toBe("old");
  });

  test("--force replaces the set and tightens loose modes on the way", async () => {
    const caBefore = await Bun.file(join(out(), "ca.pem")).text();
    await chmod(join(out(), "client-key.pem"), 0o644);
    await chmod(out(), 0o755);
    const result = await gencerts("--server-cn", "dest.example", "--out", out(), "--force");
    expect(result.exitCode).toBe(0);
    expect(await Bun.file(join(out(), "ca.pem")).text()).not.toBe(caBefore);
    expect(await modeOf(join(out(), "client-key.pem"))).toBe(0o600);
    expect(await modeOf(out())).toBe(0o700);
    const verify = await run(["openssl", "verify", "-CAfile", "ca.pem", "server-cert.pem", "client-cert.pem"], out());
    expect(verify.exitCode).toBe(0);
  });

  test("--key-type rsa makes RSA 3072 keys with keyEncipherment that openssl verifies", async () => {
    const dir = join(tmp, "rsa");
    const result = await gencerts("--server-cn", "dest.example", "--key-type", "rsa", "--days", "30", "--out", dir);
    expect(result.exitCode).toBe(0);
    const text = (await run(["openssl", "x509", "-in", join(dir, "server-cert.pem"), "-noout", "-text"])).stdout;
    expect(text).toContain("Public-Key: (3072 bit)");
    expect(await opensslExtensions(join(dir, "server-cert.pem"), "keyUsage")).toBe(
      "X509v3 Key Usage: critical\n    Digital Signature, Key Encipherment\n",
    );
    const verify = await run(["openssl", "verify", "-CAfile", "ca.pem", "server-cert.pem", "client-cert.pem"], dir);
    expect(verify.stdout).toBe("server-cert.pem: OK\nclient-cert.pem: OK\n");
  });

  test("without --server-cn it is a usage error", async () => {
    const result = await gencerts("--out", join(tmp, "never"));
    expect(result.exitCode).toBe(ExitCode.Usage);
    expect(result.stderr).toStartWith("error: required option '--server-cn <name>' not specified\n");
    expect(await stat(join(tmp, "never")).then(() => true, () => false)).toBe(false);
  });
});

describe("wssmig-gencerts check", () => {
  let good: TestCertSet;
  beforeAll(async () => {
    good = await makeCertSet(join(tmp, "check-good"));
  });

  const lines = (result: RunResult) => result.stdout.trimEnd().split("\n");

  test("passes a good set: every line ✓ and a PASS verdict, exit 0", async () => {
    const result = await gencerts("check", "--certs", good.dir, "--server-name", "::1");
    expect(result.exitCode).toBe(0);
    const output = lines(result);
    expect(output.at(-1)).toBe("PASS: all 13 checks passed");
    expect(output.slice(0, -1).every((line) => line.startsWith("✓ "))).toBe(true);
    expect(output).toContain(`✓ server certificate names: "::1" matches the SANs DNS:localhost, IP:127.0.0.1, IP:::1`);
    expect(output).toContain(`✓ client key file mode: ${good.clientKey} has mode 0600`);
  });

  test("--role limits the checks to one role", async () => {
    const result = await gencerts("check", "--certs", good.dir, "--role", "client");
    expect(result.exitCode).toBe(0);
    expect(lines(result).at(-1)).toBe("PASS: all 7 checks passed");
    expect(result.stdout).not.toContain("server");
  });

  test("fails a certificate from another CA on the chain line", async () => {
    const foreign = await makeForeignCaSet(join(tmp, "check-foreign"), good);
    const result = await gencerts("check", "--certs", foreign.dir, "--role", "server");
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)).toContain(
      `✗ server certificate chain: server certificate ${foreign.serverCert} was not issued by the CA in ${foreign.ca} (its issuer is CN=foreign CA, the CA is CN=wssmig CA); use the certificates and ca.pem from one wssmig-gencerts run`,
    );
    expect(lines(result).at(-1)).toBe("FAIL: 1 of 8 checks failed; fix the lines marked ✗ and run the check again");
  });

  test("fails an expired certificate on the validity line", async () => {
    const expired = await makeExpiredServerSet(join(tmp, "check-expired"), good);
    const result = await gencerts("check", "--certs", expired.dir);
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)).toContain(
      `✗ server certificate validity: server certificate ${expired.serverCert} expired on ${formatDate(expired.set.server.certificate.notAfter)}; generate new certificates with wssmig-gencerts and copy them here`,
    );
    expect(lines(result).at(-1)).toBe("FAIL: 1 of 13 checks failed; fix the lines marked ✗ and run the check again");
  });

  test("fails a key readable by others on the file mode line", async () => {
    const dir = join(tmp, "check-mode");
    const set = await makeCertSet(dir);
    await chmod(set.clientKey, 0o644);
    const result = await gencerts("check", "--certs", dir);
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)).toContain(
      `✗ client key file mode: client key ${set.clientKey} has mode 0644, so other users can read or change it; run chmod 600 ${set.clientKey}`,
    );
  });

  test("fails a key that does not match its certificate", async () => {
    const dir = join(tmp, "check-mismatch");
    const set = await makeCertSet(dir);
    await copyFile(good.serverKey, set.serverKey);
    const result = await gencerts("check", "--certs", dir);
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)).toContain(
      `✗ server key matches certificate: server key ${set.serverKey} does not match the certificate ${set.serverCert}; copy the key that was generated with this certificate, or generate new certificates with wssmig-gencerts and copy them here`,
    );
  });

  test("fails a server name that is not among the SANs", async () => {
    const result = await gencerts("check", "--certs", good.dir, "--server-name", "dest.example");
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)).toContain(
      `✗ server certificate names: server certificate ${good.serverCert} is not valid for "dest.example" (its SANs are DNS:localhost, IP:127.0.0.1, IP:::1); dial one of those names or generate the certificates with --san dest.example`,
    );
    expect(lines(result).at(-1)).toBe("FAIL: 1 of 13 checks failed; fix the lines marked ✗ and run the check again");
  });

  test("fails a directory without certificates, naming each missing file", async () => {
    const empty = join(tmp, "check-empty");
    await mkdir(empty);
    const result = await gencerts("check", "--certs", empty, "--role", "client");
    expect(result.exitCode).toBe(ExitCode.Config);
    expect(lines(result)[0]).toBe(
      `✗ CA certificate present: CA certificate ${empty}/ca.pem does not exist; create the certificates with wssmig-gencerts or pass --certs with the directory that holds them`,
    );
    expect(lines(result).at(-1)).toBe("FAIL: 3 of 3 checks failed; fix the lines marked ✗ and run the check again");
  });
});
