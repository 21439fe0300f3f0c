/**
 * The README's main job: a real live migration between two local VMs through the tunnel.
 *
 * It makes certificates with wssmig-gencerts, starts a source VM running a tiny guest that
 * keeps writing to its RAM (1 GiB, the rest random) and a destination VM waiting for an
 * incoming migration (-incoming defer, -S so the result can be checked before it runs),
 * then runs the four roles in order: server, client, receive, send, with send's progress on
 * this terminal. It checks that the destination RAM equals the source's, resumes the guest
 * on the destination and shows its counter moving there. Everything it starts is cleaned up.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GUEST_COUNTER_OFFSET } from "../test/fixtures/guest/build.ts";
import { binaryPath, RoleProcess, stopAll } from "../test/helpers/processes.ts";
import { FIRMWARE_SHADOW, cleanupAllVms, kvmUsable, readUint32At, sha256File, startVmPair, waitUntil } from "../test/helpers/qemu.ts";

const memoryMiB = Number(process.env.DEMO_RAM_MIB ?? 1024);
const port = Number(process.env.DEMO_PORT ?? 8766);
const work = mkdtempSync(join(tmpdir(), "wssmig-demo-"));
const certs = join(work, "certs");
const incomingSocket = join(work, "incoming.sock");
const outgoingSocket = join(work, "outgoing.sock");
const roles: RoleProcess[] = [];

const bold = (text: string) => (process.stdout.isTTY ? `\x1b[1m${text}\x1b[0m` : text);
const say = (text: string) => console.log(bold(`\n== ${text}`));
const show = (role: string, args: string[]) => console.log(`$ wssmig-${role} ${args.join(" ")}`);

function startRole(role: string, args: string[]): RoleProcess {
  show(role, args);
  const process = RoleProcess.spawn(role, args);
  roles.push(process);
  return process;
}

async function runSend(args: string[]): Promise<number> {
  show("send", args);
  // Inherit the terminal: wssmig-send draws its progress bar there.
  const send = Bun.spawn([binaryPath("send"), ...args], { stdio: ["inherit", "inherit", "inherit"] });
  return send.exited;
}

async function main(): Promise<void> {
  say("certificates");
  const gencerts = ["--server-cn", "localhost", "--san", "127.0.0.1", "--out", certs];
  show("gencerts", gencerts);
  const made = Bun.spawnSync([binaryPath("gencerts"), ...gencerts], { stdout: "ignore", stderr: "inherit" });
  if (made.exitCode !== 0) throw new Error("wssmig-gencerts failed");

  say(`two VMs with ${memoryMiB} MiB of RAM each (${kvmUsable() ? "KVM" : "TCG: /dev/kvm is not usable"})`);
  const { source, destination } = await startVmPair({ memoryMiB, liveGuest: true });
  console.log(`source:      running a guest that rewrites 64 MiB of its RAM in a loop; RAM in ${source.ramPath}`);
  console.log(`destination: -incoming defer, -S; RAM in ${destination.ramPath}`);

  say("the tunnel: wssmig-server on the destination, wssmig-client on the source");
  const server = startRole("server", ["--host", "127.0.0.1", "--port", String(port), "--certs", certs, "--socket", incomingSocket]);
  await server.waitForLine(/listening on wss:/);
  const client = startRole("client", ["--server", `wss://127.0.0.1:${port}`, "--certs", certs, "--socket", outgoingSocket]);
  await client.waitForLine(/listening on .* for the source QEMU/);

  say("the migration: wssmig-receive on the destination, wssmig-send on the source");
  const receive = startRole("receive", ["--qmp", destination.qmpPath, "--socket", incomingSocket]);
  await receive.waitForLine(/waiting for the incoming migration/);
  const sendCode = await runSend(["--qmp", source.qmpPath, "--socket", outgoingSocket]);
  const receiveCode = await receive.exitCode(60_000);
  if (sendCode !== 0 || receiveCode !== 0) throw new Error(`the migration failed (wssmig-send exit ${sendCode}, wssmig-receive exit ${receiveCode})`);

  say("checking the result");
  console.log(`source state: ${await source.status()}, destination state: ${await destination.status()}`);
  const [sourceHash, destinationHash] = await Promise.all([sha256File(source.ramPath, FIRMWARE_SHADOW), sha256File(destination.ramPath, FIRMWARE_SHADOW)]);
  console.log(`sha256 of source RAM:      ${sourceHash}\nsha256 of destination RAM: ${destinationHash}`);
  console.log("(both without 0xC0000-0xFFFFF, the firmware window QEMU itself rewrites; see test/helpers/qemu.ts)");
  if (sourceHash !== destinationHash) throw new Error("the destination RAM differs from the source RAM");
  const arrivedAt = readUint32At(destination.ramPath, GUEST_COUNTER_OFFSET);
  await destination.qmp("cont");
  await waitUntil("the guest to run on the destination", () => readUint32At(destination.ramPath, GUEST_COUNTER_OFFSET) > arrivedAt + 10, 10_000);
  console.log(`guest counter on the destination: ${arrivedAt} at arrival, ${readUint32At(destination.ramPath, GUEST_COUNTER_OFFSET)} after cont: the VM runs there now`);
  console.log(bold("\nmigration verified: RAM identical, VM running on the destination"));
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  console.error(`\ndemo failed: ${error instanceof Error ? error.message : String(error)}`);
  for (const role of roles) console.error(`\n--- wssmig-${role.name} log ---\n${role.stderr}`);
} finally {
  await stopAll(roles);
  await cleanupAllVms();
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
