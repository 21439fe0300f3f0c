/**
 * Loads a role's TLS files from the certs directory: ca.pem plus <role>-cert.pem and
 * <role>-key.pem. Every problem is a WssmigError (exit code Config) naming the file and the fix.
 * (Minimal version: issue #4's key-mode, key/cert match and validity checks come next.)
 */
import { join } from "node:path";
import { ExitCode, WssmigError } from "./errors.ts";

export type Role = "server" | "client";

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

export async function loadCredentials(certsDir: string, role: Role): Promise<Credentials> {
  const files = credentialFiles(certsDir, role);
  return {
    files,
    ca: await readPem(files.ca, "CA certificate"),
    cert: await readPem(files.cert, `${role} certificate`),
    key: await readPem(files.key, `${role} key`),
  };
}
