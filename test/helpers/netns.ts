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
    exec: (namespace) => ["ip", "netns", "exec", namespace],
    remove,
  };
}
