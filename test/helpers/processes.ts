/**
 * Runs the compiled wssmig binaries as child processes and watches what they log.
 * Tests always use dist/ (built by scripts/build.sh), the same binaries users copy to hosts.
 */
import { existsSync, readFileSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";

/** WSSMIG_TEST_DIST points the tests at a copy of the binaries, e.g. one that a concurrent build cannot replace mid-run. */
export const DIST = process.env.WSSMIG_TEST_DIST || join(import.meta.dir, "..", "..", "dist");

export function binaryPath(role: string): string {
  const path = join(DIST, `wssmig-${role}`);
  if (!existsSync(path)) throw new Error(`${path} is missing: run scripts/build.sh first`);
  return path;
}

/** A running role whose stderr is collected line by line. */
export class RoleProcess {
  readonly lines: string[] = [];
  readonly exited: Promise<number>;
  private lineWaiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  stdout = "";

  private constructor(readonly name: string, readonly process: Subprocess<"ignore", "pipe", "pipe">) {
    this.exited = process.exited;
    void this.collect(process.stderr, (line) => this.addLine(line));
    void this.collect(process.stdout, (line) => (this.stdout += line + "\n"));
  }

  /** `prefix` wraps the command, e.g. ["ip", "netns", "exec", NAME] to run it on a test host. */
  static spawn(role: string, args: string[], env: Record<string, string | undefined> = {}, prefix: string[] = []): RoleProcess {
    const child = Bun.spawn([...prefix, binaryPath(role), ...args], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, NO_COLOR: "1", ...env },
    });
    return new RoleProcess(role, child);
  }

  get pid(): number {
    return this.process.pid;
  }

  get stderr(): string {
    return this.lines.join("\n");
  }

  private async collect(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      const parts = pending.split("\n");
      pending = parts.pop()!;
      parts.forEach(onLine);
    }
    if (pending) onLine(pending);
  }

  private addLine(line: string): void {
    this.lines.push(line);
    this.lineWaiters = this.lineWaiters.filter((waiter) => (waiter.pattern.test(line) ? (waiter.resolve(line), false) : true));
  }

  /** Resolves with the first line (already seen or coming) that matches; rejects on exit or timeout. */
  waitForLine(pattern: RegExp, timeoutMs = 15_000): Promise<string> {
    const seen = this.lines.find((line) => pattern.test(line));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no line matching ${pattern} within ${timeoutMs} ms; log:\n${this.stderr}`)), timeoutMs);
      this.lineWaiters.push({ pattern, resolve: (line) => (clearTimeout(timer), resolve(line)) });
      void this.exited.then((code) =>
        setTimeout(() => reject(new Error(`${this.name} exited with ${code} before logging ${pattern}; log:\n${this.stderr}`)), 50),
      );
    });
  }

  /** The exit code, or throws when the process is still running after timeoutMs. */
  async exitCode(timeoutMs = 15_000): Promise<number> {
    const timeout = Bun.sleep(timeoutMs).then(() => {
      throw new Error(`${this.name} still running after ${timeoutMs} ms; log:\n${this.stderr}`);
    });
    return Promise.race([this.exited, timeout]);
  }

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  kill(signal: NodeJS.Signals | number = "SIGTERM"): void {
    if (this.running) this.process.kill(signal);
  }

  /** Peak resident memory in MiB (VmHWM), read while the process runs. */
  peakRssMiB(): number {
    const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
    const match = /VmHWM:\s+(\d+) kB/.exec(status);
    if (!match) throw new Error("no VmHWM in /proc status");
    return Number(match[1]) / 1024;
  }

  /** Open sockets of the process, from /proc/PID/fd. */
  openSocketCount(): number {
    const dir = `/proc/${this.pid}/fd`;
    return readdirSync(dir).filter((fd) => {
      try {
        return /^socket:/.test(readlinkSync(join(dir, fd)));
      } catch {
        return false;
      }
    }).length;
  }
}

/** Stops every process in the list (SIGKILL after a grace period) and waits for them. */
export async function stopAll(processes: (RoleProcess | undefined)[]): Promise<void> {
  for (const role of processes) role?.kill("SIGTERM");
  await Promise.all(
    processes.map(async (role) => {
      if (!role) return;
      const done = await Promise.race([role.exited.then(() => true), Bun.sleep(5000).then(() => false)]);
      if (!done) role.kill("SIGKILL");
      await role.exited;
    }),
  );
}
