/**
 * loadCredentials: what a role accepts before it starts, and the exact sentence of each refusal.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatDate } from "../src/lib/certcheck.ts";
import { loadCredentials } from "../src/lib/credentials.ts";
import { ExitCode, WssmigError } from "../src/lib/errors.ts";
import { makeCertSet, makeExpiredClientSet, notYetValidWindow, type TestCertSet } from "./helpers/certs.ts";

const DAY_MS = 24 * 60 * 60 * 1000;
let tmp: string;
let good: TestCertSet;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "wssmig-credentials-"));
  good = await makeCertSet(join(tmp, "good"));
});
afterAll(() => rm(tmp, { recursive: true, force: true }));

/** The WssmigError a refused load throws; fails the test if the load succeeds. */
async function refusal(load: Promise<unknown>): Promise<WssmigError> {
  const error = await load.then(
    () => undefined,
    (thrown: unknown) => thrown,
  );
  if (!(error instanceof WssmigError)) throw new Error(`expected a WssmigError, got ${String(error)}`);
  expect(error.exitCode).toBe(ExitCode.Config);
  return error;
}

describe("loadCredentials", () => {
  test("returns the PEM texts of a valid set, with no warnings", async () => {
    for (const role of ["server", "client"] as const) {
      const credentials = await loadCredentials(good.dir, role);
      expect(credentials.files).toEqual({
        ca: good.ca,
        cert: role === "server" ? good.serverCert : good.clientCert,
        key: role === "server" ? good.serverKey : good.clientKey,
      });
      expect(credentials.ca).toBe(await Bun.file(good.ca).text());
      expect(credentials.cert).toBe(await Bun.file(credentials.files.cert).text());
      expect(credentials.key).toStartWith("-----BEGIN PRIVATE KEY-----");
      expect(credentials.warnings).toEqual([]);
    }
  });

  test("refuses a missing key file", async () => {
    const dir = join(tmp, "missing");
    await makeCertSet(dir);
    await rm(join(dir, "client-key.pem"));
    const error = await refusal(loadCredentials(dir, "client"));
    expect(error.message).toBe(
      `client key ${dir}/client-key.pem does not exist; create the certificates with wssmig-gencerts or point --certs at the directory that holds them`,
    );
  });

  for (const mode of [0o644, 0o640, 0o604, 0o620]) {
    test(`refuses a key file with mode 0${mode.toString(8)} and gives the chmod to run`, async () => {
      const dir = join(tmp, `mode-${mode.toString(8)}`);
      await makeCertSet(dir);
      const keyPath = join(dir, "server-key.pem");
      await chmod(keyPath, mode);
      const error = await refusal(loadCredentials(dir, "server"));
      expect(error.message).toBe(
        `server key ${keyPath} has mode 0${mode.toString(8)}, so other users can read or change it; run chmod 600 ${keyPath}`,
      );
    });
  }

  test("accepts a key file with mode 0400", async () => {
    const dir = join(tmp, "mode-400");
    await makeCertSet(dir);
    await chmod(join(dir, "client-key.pem"), 0o400);
    expect((await loadCredentials(dir, "client")).warnings).toEqual([]);
  });

  test("refuses a key that does not belong to the certificate", async () => {
    const dir = join(tmp, "mismatch");
    await makeCertSet(dir);
    // Another set's key: same kind of key, same CA name, different key pair.
    await copyFile(good.serverKey, join(dir, "server-key.pem"));
    const error = await refusal(loadCredentials(dir, "server"));
    expect(error.message).toBe(
      `server key ${dir}/server-key.pem does not match the certificate ${dir}/server-cert.pem; copy the key that was generated with this certificate, or generate new certificates with wssmig-gencerts and copy them here`,
    );
  });

  test("refuses a key file that is not a private key", async () => {
    const dir = join(tmp, "garbage-key");
    await makeCertSet(dir);
    await Bun.write(join(dir, "client-key.pem"), await Bun.file(good.clientCert).text());
    await chmod(join(dir, "client-key.pem"), 0o600);
    const error = await refusal(loadCredentials(dir, "client"));
    expect(error.message).toBe(
      `client key ${dir}/client-key.pem is not an unencrypted PEM private key; generate new certificates with wssmig-gencerts and copy them here`,
    );
  });

  test("refuses its own expired certificate, but not the other role's", async () => {
    const expired = await makeExpiredClientSet(join(tmp, "expired"), good);
    const error = await refusal(loadCredentials(expired.dir, "client"));
    const notAfter = formatDate(expired.set.client.certificate.notAfter);
    expect(error.message).toBe(
      `client certificate ${expired.clientCert} expired on ${notAfter}; generate new certificates with wssmig-gencerts and copy them here`,
    );
    expect((await loadCredentials(expired.dir, "server")).warnings).toEqual([]);
  });

  test("refuses its own certificate before its validity starts", async () => {
    const future = await makeCertSet(join(tmp, "future"), { authority: good.authority, server: notYetValidWindow() });
    const now = new Date();
    const error = await refusal(loadCredentials(future.dir, "server", now));
    const notBefore = formatDate(future.set.server.certificate.notBefore);
    expect(error.message).toBe(
      `server certificate ${future.serverCert} is not valid before ${notBefore}; check this host's clock (now ${formatDate(now)}) or generate new certificates with wssmig-gencerts and copy them here`,
    );
  });

  test("warns when its certificate expires within 30 days", async () => {
    const now = new Date();
    // 10 days and one hour left: whole days round down to 10.
    const notAfter = new Date(now.getTime() + 10 * DAY_MS + 60 * 60 * 1000);
    const expiring = await makeCertSet(join(tmp, "expiring"), { authority: good.authority, server: { notAfter } });
    const credentials = await loadCredentials(expiring.dir, "server", now);
    expect(credentials.warnings).toEqual([
      `server certificate ${expiring.serverCert} expires in 10 days, on ${formatDate(expiring.set.server.certificate.notAfter)}; generate new certificates with wssmig-gencerts and copy them here before then`,
    ]);
    expect((await loadCredentials(expiring.dir, "client", now)).warnings).toEqual([]);
  });
});
