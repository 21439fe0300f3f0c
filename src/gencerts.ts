/**
 * wssmig-gencerts: makes the CA, server and client certificates for one wssmig deployment, and
 * (`wssmig-gencerts check`) inspects a certificates directory the way the roles will use it.
 * The work is in lib/pki.ts and lib/certcheck.ts; this file only wires the command line.
 */
import { Option } from "commander";
import { runCertificateChecks, formatCheck, verdictLine, type Role } from "./lib/certcheck.ts";
import { createProgram, integerOption, runMain } from "./lib/cli.ts";
import { credentialFiles } from "./lib/credentials.ts";
import { DEFAULT_CERTS_DIR } from "./lib/defaults.ts";
import { ExitCode } from "./lib/errors.ts";
import { DEFAULT_CLIENT_CN, DEFAULT_VALIDITY_DAYS, KEY_TYPES, writeCertificateSet, type KeyType } from "./lib/pki.ts";

const BINARY = "wssmig-gencerts";

interface GenerateOptions {
  serverCn: string;
  san: string[];
  clientCn: string;
  out: string;
  days: number;
  keyType: KeyType;
  force: boolean;
}

interface CheckCommandOptions {
  certs: string;
  serverName?: string;
  role: Role | "both";
}

async function generate(options: GenerateOptions): Promise<number> {
  const { paths } = await writeCertificateSet(options.out, {
    serverCn: options.serverCn,
    sans: options.san,
    clientCn: options.clientCn,
    days: options.days,
    keyType: options.keyType,
    overwrite: options.force,
  });
  const lines = [
    `wrote ${paths.ca} (CA certificate)`,
    `wrote ${paths.caKey} (CA key, mode 0600)`,
    `wrote ${paths.serverCert} (server certificate for ${[options.serverCn, ...options.san].join(", ")})`,
    `wrote ${paths.serverKey} (server key, mode 0600)`,
    `wrote ${paths.clientCert} (client certificate for ${options.clientCn})`,
    `wrote ${paths.clientKey} (client key, mode 0600)`,
    "next: copy ca.pem, server-cert.pem and server-key.pem to the destination host (wssmig-server --certs DIR),",
    "      and ca.pem, client-cert.pem and client-key.pem to the source host (wssmig-client --certs DIR);",
    "      keep the keys at mode 0600 there (scp -p), and keep ca-key.pem off both hosts: it can make certificates both ends trust.",
  ];
  process.stdout.write(lines.join("\n") + "\n");
  return ExitCode.Ok;
}

async function check(options: CheckCommandOptions): Promise<number> {
  const roles: Role[] = options.role === "both" ? ["server", "client"] : [options.role];
  const checks = await runCertificateChecks((role) => credentialFiles(options.certs, role), {
    roles,
    serverName: options.serverName,
  });
  process.stdout.write([...checks.map(formatCheck), verdictLine(checks)].join("\n") + "\n");
  return checks.some((result) => result.status === "fail") ? ExitCode.Config : ExitCode.Ok;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

let selectedCommand: () => Promise<number> = async () => ExitCode.Usage;

const program = createProgram(BINARY, "Create the CA, server and client certificates for wssmig, or check a certificates directory.")
  // Not requiredOption: commander would then demand it of the check subcommand too.
  .option("--server-cn <name>", "the destination host's name; also its first SAN (required)")
  .option("--san <name>", "another DNS name or IP address the client may dial (repeatable)", collect, [])
  .option("--client-cn <name>", "common name of the client certificate", DEFAULT_CLIENT_CN)
  .option("--out <dir>", "directory to write the six files into (created with mode 0700)", DEFAULT_CERTS_DIR)
  .option("--days <n>", "validity in days", integerOption(1, 36500), DEFAULT_VALIDITY_DAYS)
  .addOption(new Option("--key-type <type>", "key algorithm: ECDSA P-256 or RSA 3072").choices(KEY_TYPES).default("ecdsa"))
  .option("--force", "overwrite existing files in --out", false)
  .action((options: GenerateOptions) => {
    if (!options.serverCn) program.error("error: required option '--server-cn <name>' not specified", { exitCode: ExitCode.Usage });
    selectedCommand = () => generate(options);
  });

program
  .command("check")
  .description("Check a certificates directory: chain, validity, key usages, SANs, key/certificate match, key file modes.")
  .option("--certs <dir>", "the certificates directory", DEFAULT_CERTS_DIR)
  .option("--server-name <name>", "the name the client dials (host of --server, or its --server-name)")
  .addOption(new Option("--role <role>", "which role's files to check").choices(["server", "client", "both"]).default("both"))
  .action((options: CheckCommandOptions) => {
    selectedCommand = () => check(options);
  });

program.parse();
await runMain(BINARY, () => selectedCommand());
