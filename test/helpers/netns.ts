/**
 * Two test hosts on one machine: network namespaces joined by a veth pair, with private
 * addresses that exist only inside them. The source side (wssmig-client) runs in one and the
 * destination side (wssmig-server) in the other, so the tunnel crosses a real link the test
 * can cut (link down) or degrade (tc netem). Needs root and iproute2.
 */
import { spawnSync } from "node:child_process";

export interface TestLink {
  sourceNamespace: string;
  destinationNamespace: string;
  sourceAddress: string;
  destinationAddress: string;
  /** Brings both ends of the veth down (a cut cable: no RST, no FIN, only silence). */
  cut(): void;
  restore(): void;
  /** Applies netem to both directions, e.g. "delay 40ms loss 0.5% rate 200mbit". */
  degrade(netem: string): void;
  /** Removes what degrade() applied (no-op when nothing is). */
  clearDegrade(): void;
  /** argv prefix that runs a command inside a namespace. */
  exec(namespace: string): string[];
  remove(): void;
}

function run(args: string[]): void {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${args.join(" ")} failed: ${result.stderr || result.error}`);
}

export function namespacesAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  return spawnSync("ip", ["netns", "list"]).status === 0;
}

/** Creates the pair; `index` keeps concurrent pairs apart (addresses 10.231.index.1/.2). */
export function createTestLink(index = 0): TestLink {
  const tag = `wssmig${process.pid % 10000}x${index}`;
  const sourceNamespace = `${tag}s`;
  const destinationNamespace = `${tag}d`;
  const sourceDevice = `${tag}vs`.slice(0, 15);
  const destinationDevice = `${tag}vd`.slice(0, 15);
  const sourceAddress = `10.231.${index}.1`;
  const destinationAddress = `10.231.${index}.2`;
  const inSource = ["ip", "netns", "exec", sourceNamespace];
  const inDestination = ["ip", "netns", "exec", destinationNamespace];

  const remove = () => {
    spawnSync("ip", ["netns", "del", sourceNamespace]);
    spawnSync("ip", ["netns", "del", destinationNamespace]);
  };
  remove();
  try {
    run(["ip", "netns", "add", sourceNamespace]);
    run(["ip", "netns", "add", destinationNamespace]);
    run(["ip", "link", "add", sourceDevice, "netns", sourceNamespace, "type", "veth", "peer", "name", destinationDevice, "netns", destinationNamespace]);
    run([...inSource, "ip", "addr", "add", `${sourceAddress}/24`, "dev", sourceDevice]);
    run([...inDestination, "ip", "addr", "add", `${destinationAddress}/24`, "dev", destinationDevice]);
    for (const [prefix, device] of [[inSource, sourceDevice], [inDestination, destinationDevice]] as const) {
      run([...prefix, "ip", "link", "set", "lo", "up"]);
      run([...prefix, "ip", "link", "set", device, "up"]);
    }
  } catch (error) {
    remove();
    throw error;
  }
  const setLink = (state: "up" | "down") => {
    run([...inSource, "ip", "link", "set", sourceDevice, state]);
    run([...inDestination, "ip", "link", "set", destinationDevice, state]);
  };
  return {
    sourceNamespace,
    destinationNamespace,
    sourceAddress,
    destinationAddress,
    cut: () => setLink("down"),
    restore: () => setLink("up"),
    degrade(netem: string) {
      for (const [prefix, device] of [[inSource, sourceDevice], [inDestination, destinationDevice]] as const) {
        run([...prefix, "tc", "qdisc", "replace", "dev", device, "root", "netem", ...netem.split(" ")]);
      }
    },
    clearDegrade() {
      for (const [prefix, device] of [[inSource, sourceDevice], [inDestination, destinationDevice]] as const) {
        spawnSync(prefix[0]!, [...prefix.slice(1), "tc", "qdisc", "del", "dev", device, "root"]);
      }
    },
    exec: (namespace) => ["ip", "netns", "exec", namespace],
    remove,
  };
}

/** Whether this kernel has tc netem (sch_netem); some VM kernels are built without it. */
export function netemAvailable(): boolean {
  const namespace = `wssmignetem${process.pid % 100000}`;
  spawnSync("ip", ["netns", "add", namespace]);
  try {
    return spawnSync("ip", ["netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).status === 0;
  } finally {
    spawnSync("ip", ["netns", "del", namespace]);
  }
}

export interface EmulatedPathOptions {
  delayMs: number;
  /** Share of packets dropped in each direction, in percent. */
  lossPercent: number;
  rateMbit: number;
  /** Packets queued per direction before tail drop (netem's default limit is 1000). */
  limit?: number;
}

export interface EmulatedPath {
  sourceAddress: string;
  destinationAddress: string;
  /** Packets forwarded and dropped so far (read when stopping). */
  stop(): Promise<{ forwarded: number; lost: number; overflowed: number }>;
}

/** The addresses startEmulatedPath(link, index) gives the two ends (e.g. for certificate SANs). */
export function emulatedPathAddresses(index: number): { sourceAddress: string; destinationAddress: string } {
  return { sourceAddress: `10.232.${index}.1`, destinationAddress: `10.232.${index}.2` };
}

/**
 * netem in user space, for kernels without sch_netem: a second path between the two
 * namespaces of `link`, made of two TUN devices (one in each namespace, addresses
 * 10.232.index.1 and .2) whose packets a small forwarder carries across with a fixed delay,
 * random loss and a rate limit (FIFO per direction, tail drop at `limit`). The TCP stacks at
 * both ends are the kernel's, as with netem on the veth. Needs python3 and /dev/net/tun.
 */
export async function startEmulatedPath(link: TestLink, index: number, options: EmulatedPathOptions): Promise<EmulatedPath> {
  const tag = `wssmig${process.pid % 10000}t${index}`;
  const sourceDevice = `${tag}s`.slice(0, 15);
  const destinationDevice = `${tag}d`.slice(0, 15);
  const { sourceAddress, destinationAddress } = emulatedPathAddresses(index);
  const forwarder = Bun.spawn(
    ["python3", "-c", TUN_FORWARDER, sourceDevice, destinationDevice, String(options.delayMs / 1000), String(options.lossPercent / 100), String((options.rateMbit * 1e6) / 8), String(options.limit ?? 1000)],
    { stdin: "pipe", stdout: "pipe", stderr: "inherit" },
  );
  const reader = forwarder.stdout.getReader();
  let output = "";
  const readLine = async (): Promise<string> => {
    while (!output.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the link forwarder exited (code ${await forwarder.exited}); output: ${output}`);
      output += new TextDecoder().decode(value);
    }
    const line = output.slice(0, output.indexOf("\n"));
    output = output.slice(line.length + 1);
    return line;
  };
  const stop = async () => {
    forwarder.stdin.end(); // the forwarder prints its counters and exits when stdin closes
    const line = await Promise.race([readLine().catch(() => ""), Bun.sleep(3000).then(() => "")]);
    forwarder.kill("SIGKILL");
    await forwarder.exited;
    const [forwarded, lost, overflowed] = line.split(" ").slice(1).map(Number);
    return { forwarded: forwarded ?? NaN, lost: lost ?? NaN, overflowed: overflowed ?? NaN };
  };
  try {
    const ready = await readLine();
    if (ready !== "ready") throw new Error(`unexpected forwarder output: ${ready}`);
    for (const [namespace, device, address, peer] of [
      [link.sourceNamespace, sourceDevice, sourceAddress, destinationAddress],
      [link.destinationNamespace, destinationDevice, destinationAddress, sourceAddress],
    ] as const) {
      run(["ip", "link", "set", device, "netns", namespace]);
      run(["ip", "netns", "exec", namespace, "ip", "addr", "add", address, "peer", `${peer}/32`, "dev", device]);
      run(["ip", "netns", "exec", namespace, "ip", "link", "set", device, "up"]);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { sourceAddress, destinationAddress, stop };
}

/** The forwarder behind startEmulatedPath (python3: it needs ioctl on /dev/net/tun). */
const TUN_FORWARDER = `
import collections, fcntl, os, random, select, struct, sys, time
a_name, b_name = sys.argv[1], sys.argv[2]
delay, loss, rate, limit = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN | IFF_NO_PI
    os.set_blocking(fd, False)
    return fd
a, b = tun(a_name), tun(b_name)
# per direction: [fd to write to, time the line is free again, queue of (release time, packet)]
lines = {a: [b, 0.0, collections.deque()], b: [a, 0.0, collections.deque()]}
forwarded = lost = overflowed = 0
print("ready", flush=True)
stdin = sys.stdin.fileno()
while True:
    now = time.monotonic()
    heads = [q[0][0] for _, _, q in lines.values() if q]
    timeout = max(0.0, min(heads) - now) if heads else 1.0
    ready, _, _ = select.select([a, b, stdin], [], [], timeout)
    if stdin in ready and not os.read(stdin, 4096):
        break
    now = time.monotonic()
    for fd in ready:
        if fd == stdin:
            continue
        state = lines[fd]
        for _ in range(256):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                break
            if random.random() < loss:
                lost += 1
                continue
            if len(state[2]) >= limit:
                overflowed += 1
                continue
            state[1] = max(now, state[1]) + len(packet) / rate
            state[2].append((state[1] + delay, packet))
    now = time.monotonic()
    for out, _, queue in lines.values():
        while queue and queue[0][0] <= now:
            try:
                os.write(out, queue.popleft()[1])
                forwarded += 1
            except OSError:
                overflowed += 1
print("counters %d %d %d" % (forwarded, lost, overflowed), flush=True)
`;
