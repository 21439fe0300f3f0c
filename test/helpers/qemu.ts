/**
 * A QEMU VM fixture for migration tests: guest RAM in a /dev/shm file (so tests can fill it
 * before QEMU starts and hash it afterwards), a QMP socket for the wssmig binaries and a second
 * one for the test itself (QEMU serves one client per QMP socket, so the test never has to
 * wait for a binary to let go), and cleanup that always kills QEMU and removes its files.
 */
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { accessSync, constants, createReadStream, existsSync, mkdtempSync, openSync, closeSync, readSync, rmSync, unlinkSync, writeSync, ftruncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { QmpClient } from "../../src/lib/qmp.ts";
import { buildGuestKernel, GUEST_COUNTER_OFFSET } from "../fixtures/guest/build.ts";

export interface VmOptions {
  /** Short name, part of the file names (unique per test run thanks to a prefix). */
  name: string;
  memoryMiB: number;
  /** Destination VM: -incoming defer, RAM preallocated (see the field notes). */
  incoming?: boolean;
  /** Fill the RAM file with random bytes before QEMU starts (source VMs). */
  randomFill?: boolean;
  /** A kernel for -kernel (the live guest); without it the CPU never gets anything to run. */
  kernel?: string;
}

export interface Vm {
  readonly name: string;
  readonly ramPath: string;
  /** The QMP socket for wssmig-send / wssmig-receive. */
  readonly qmpPath: string;
  /** The test's own QMP socket. */
  readonly controlQmpPath: string;
  readonly process: Subprocess<"ignore", "ignore", "pipe">;
  /** Runs one QMP command on the control socket (connect, execute, close). */
  qmp<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  /** QEMU's run state: "prelaunch", "running", "inmigrate", "postmigrate", "paused", ... */
  status(): Promise<string>;
  /** Everything QEMU wrote to stderr so far (for failure messages). */
  stderr(): string;
  /** SIGKILL now; resolves once QEMU is gone. */
  kill(): Promise<void>;
  /** Kills QEMU and removes the RAM file and sockets; safe to call twice. */
  cleanup(): Promise<void>;
}

const RUN_PREFIX = `wssmig-test-${process.pid}`;
const liveVms = new Set<Vm>();

/** Whether this process can open /dev/kvm; otherwise VMs use TCG (slow but correct). */
export function kvmUsable(): boolean {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export async function startVm(options: VmOptions): Promise<Vm> {
  const socketDir = mkdtempSync(join(tmpdir(), `${RUN_PREFIX}-${options.name}-`));
  const ramPath = `/dev/shm/${RUN_PREFIX}-${options.name}`;
  const qmpPath = join(socketDir, "qmp.sock");
  const controlQmpPath = join(socketDir, "control.sock");
  const sizeBytes = options.memoryMiB * 1024 * 1024;
  if (options.randomFill) writeRandomFile(ramPath, sizeBytes);

  const backend = [`memory-backend-file,id=ram,size=${options.memoryMiB}M,mem-path=${ramPath},share=on`];
  if (options.incoming) backend.push("prealloc=on");
  const args = [
    "qemu-system-x86_64",
    "-machine", "q35,memory-backend=ram",
    "-m", `${options.memoryMiB}M`,
    "-nodefaults", "-display", "none", "-S",
    // kvmvapic lets QEMU itself patch guest RAM (its option ROM, on load after migration);
    // off, so that the RAM files hold only what the guest and the migration wrote.
    "-global", "apic-common.vapic=off",
    "-accel", kvmUsable() ? "kvm" : "tcg",
    "-object", backend.join(","),
    "-qmp", `unix:${qmpPath},server=on,wait=off`,
    "-qmp", `unix:${controlQmpPath},server=on,wait=off`,
  ];
  if (options.kernel) args.push("-kernel", options.kernel);
  if (options.incoming) args.push("-incoming", "defer");

  const child = Bun.spawn(args, { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  let stderrText = "";
  const stderrDone = (async () => {
    for await (const chunk of child.stderr) stderrText += new TextDecoder().decode(chunk);
  })();

  let cleaned = false;
  const vm: Vm = {
    name: options.name,
    ramPath,
    qmpPath,
    controlQmpPath,
    process: child,
    async qmp<T>(command: string, commandArgs?: Record<string, unknown>): Promise<T> {
      const client = await QmpClient.connect(controlQmpPath);
      try {
        return await client.execute<T>(command, commandArgs);
      } finally {
        client.close();
      }
    },
    async status() {
      return (await vm.qmp<{ status: string }>("query-status")).status;
    },
    stderr: () => stderrText,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await child.exited;
      await stderrDone;
    },
    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      await vm.kill();
      rmSync(ramPath, { force: true });
      rmSync(socketDir, { recursive: true, force: true });
      liveVms.delete(vm);
    },
  };
  liveVms.add(vm);
  try {
    await waitForQmp(vm, child);
  } catch (error) {
    await vm.cleanup();
    throw error;
  }
  return vm;
}

/** Kills every VM this process started and removes its files; call it in afterEach. */
export async function cleanupAllVms(): Promise<void> {
  await Promise.all([...liveVms].map((vm) => vm.cleanup()));
}

// Last resort if a test run is torn down without afterEach: no QEMU or RAM file outlives us.
process.on("exit", () => {
  for (const vm of liveVms) {
    try {
      vm.process.kill("SIGKILL");
    } catch {}
    try {
      unlinkSync(vm.ramPath);
    } catch {}
  }
});

async function waitForQmp(vm: Vm, child: Subprocess): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      await child.exited;
      throw new Error(`QEMU ${vm.name} exited with ${child.exitCode} at start: ${vm.stderr().trim()}`);
    }
    if (existsSync(vm.controlQmpPath) && existsSync(vm.qmpPath)) {
      try {
        await vm.status();
        return;
      } catch {
        // QEMU creates the socket file before it accepts; try again.
      }
    }
    await Bun.sleep(50);
  }
  throw new Error(`QEMU ${vm.name} did not open its QMP sockets within 20 s: ${vm.stderr().trim()}`);
}

/**
 * Writes `sizeBytes` of random bytes to `path`: an AES-128-CTR keystream, which is
 * incompressible, contains no zero pages (QEMU would skip those) and comes out at GB/s.
 */
export function writeRandomFile(path: string, sizeBytes: number): void {
  const cipher = createCipheriv("aes-128-ctr", randomBytes(16), randomBytes(16));
  const chunkSize = 16 * 1024 * 1024;
  const zeros = Buffer.alloc(chunkSize);
  const fd = openSync(path, "w", 0o600);
  try {
    ftruncateSync(fd, sizeBytes);
    for (let offset = 0; offset < sizeBytes; offset += chunkSize) {
      const length = Math.min(chunkSize, sizeBytes - offset);
      const block = cipher.update(length === chunkSize ? zeros : zeros.subarray(0, length));
      writeSync(fd, block, 0, block.length, offset);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * The legacy BIOS/option-ROM window (0xC0000-0xFFFFF). Once firmware has run, QEMU 7.2 leaves
 * a couple of bytes there different after a migration even QEMU-to-QEMU without wssmig (seen:
 * the multiboot option ROM's fw_cfg DMA control word), so live-guest comparisons skip it.
 */
export const FIRMWARE_SHADOW = { from: 0xc0000, to: 0x100000 } as const;

/** Hex sha256 of a file (a RAM file), optionally leaving out the byte range [from, to). */
export async function sha256File(path: string, exclude?: { from: number; to: number }): Promise<string> {
  const hash = createHash("sha256");
  const ranges = exclude ? [{ start: 0, end: exclude.from - 1 }, { start: exclude.to }] : [{ start: 0 }];
  for (const range of ranges) {
    for await (const chunk of createReadStream(path, { ...range, highWaterMark: 8 * 1024 * 1024 })) hash.update(chunk as Buffer);
  }
  return hash.digest("hex");
}

/** Reads a little-endian 32-bit word at `offset` of a file (the live guest's counter). */
export function readUint32At(path: string, offset: number): number {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.alloc(4);
    readSync(fd, buffer, 0, 4, offset);
    return buffer.readUInt32LE(0);
  } finally {
    closeSync(fd);
  }
}

/** Writes a little-endian 32-bit word at `offset` of a file (e.g. to zero the counter before boot). */
export function writeUint32At(path: string, offset: number, value: number): void {
  const fd = openSync(path, "r+");
  try {
    const buffer = Buffer.alloc(4);
    buffer.writeUInt32LE(value, 0);
    writeSync(fd, buffer, 0, 4, offset);
  } finally {
    closeSync(fd);
  }
}

/** Polls `check` until it returns true or `timeoutMs` passes. */
export async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await Bun.sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/**
 * Builds the live test guest into a temporary directory for `start` (which starts QEMUs with it
 * as -kernel) and removes it afterwards: QEMU reads -kernel when it starts, and nothing stays
 * behind in /tmp.
 */
export async function withGuestKernel<T>(start: (kernel: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "wssmig-guest-"));
  try {
    return await start(buildGuestKernel(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface VmPair {
  source: Vm;
  destination: Vm;
}

/**
 * A source VM with random RAM and a destination waiting with -incoming defer, same size and
 * options. With liveGuest, both get the counter-writing kernel and the source runs it.
 */
export async function startVmPair(options: { memoryMiB: number; liveGuest?: boolean }): Promise<VmPair> {
  const startBoth = async (kernel?: string) => {
    const destination = await startVm({ name: "dst", memoryMiB: options.memoryMiB, incoming: true, kernel });
    const source = await startVm({ name: "src", memoryMiB: options.memoryMiB, randomFill: true, kernel });
    return { source, destination };
  };
  const { source, destination } = options.liveGuest ? await withGuestKernel(startBoth) : await startBoth();
  if (options.liveGuest) {
    // The random fill put noise where the counter lives: zero it, so that a moving counter
    // proves the guest kernel (not the firmware) runs.
    writeUint32At(source.ramPath, GUEST_COUNTER_OFFSET, 0);
    await source.qmp("cont");
    // SeaBIOS takes a few seconds before it jumps to the kernel.
    await waitUntil("the guest counter to move on the source", () => readUint32At(source.ramPath, GUEST_COUNTER_OFFSET) > 2);
  }
  return { source, destination };
}
