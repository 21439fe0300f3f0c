/**
 * Loads a role's TLS files from the certs directory: ca.pem plus <role>-cert.pem and
 * <role>-key.pem. Every problem is a WssmigError (exit code Config) naming the file and the fix.
 * Before handing out the key it refuses (issue #4): a key file open to group or others, a key
 * that does not match the certificate, and a certificate of its own that is expired or not yet
 * valid. A certificate that expires within 30 days is returned as a warning for the caller to log.
 * The checks themselves live in certcheck.ts, shared with `wssmig-gencerts check`.
 */
import { join } from "node:path";
import { checkOwnCredentials, type Role } from "./certcheck.ts";
import { ExitCode, WssmigError } from "./errors.ts";

export type { Role };

export interface CredentialFiles {
  ca: string;
  cert: string;
  key: string;
}

export interface Credentials {
  files: CredentialFiles;
  ca: string;
  cert: string;
  key: string;
  /** Sentences to log at warn level, e.g. "server certificate PATH expires in 12 days, ...". */
  warnings: string[];
}

export function credentialFiles(certsDir: string, role: Role): CredentialFiles {
  return {
    ca: join(certsDir, "ca.pem"),
    cert: join(certsDir, `${role}-cert.pem`),
    key: join(certsDir, `${role}-key.pem`),
  };
}

async function readPem(path: string, what: string): Promise<string> {
  const file = Bun.file(path);
  if (!(await file.exists())) {
    throw new WssmigError(
      `${what} ${path} does not exist; create the certificates with wssmig-gencerts or point --certs at the directory that holds them`,
      ExitCode.Config,
    );
  }
  return file.text();
}

export async function loadCredentials(certsDir: string, role: Role, now: Date = new Date()): Promise<Credentials> {
  const files = credentialFiles(certsDir, role);
  const ca = await readPem(files.ca, "CA certificate");
  const cert = await readPem(files.cert, `${role} certificate`);
  const key = await readPem(files.key, `${role} key`);
  const { checks } = await checkOwnCredentials(role, files, cert, key, now);
  const failed = checks.find((check) => check.status === "fail");
  if (failed) throw new WssmigError(failed.message, ExitCode.Config);
  const warnings = checks.filter((check) => check.status === "warn").map((check) => check.message);
  return { files, ca, cert, key, warnings };
}
