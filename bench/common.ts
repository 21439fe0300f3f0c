/**
 * What both benchmarks share: CPU and memory readings from /proc, statistics, machine facts,
 * Markdown tables and a dependency-free SVG bar chart.
 */
import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { kvmUsable } from "../test/helpers/qemu.ts";

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
export const KiB = 1024;

/** USER_HZ: /proc/PID/stat counts CPU time in these ticks (100 on every Linux we run on). */
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds (user + system, all threads) a process has used so far; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/** Measures the CPU a set of processes uses between start() and stop(). */
export class CpuMeter {
  private readonly before = new Map<string, number>();
  private readonly after = new Map<string, number>();
  constructor(private readonly pids: Record<string, number>) {}

  start(): this {
    for (const [name, pid] of Object.entries(this.pids)) this.before.set(name, cpuSeconds(pid));
    return this;
  }

  stop(): Record<string, number> {
    const used: Record<string, number> = {};
    for (const [name, pid] of Object.entries(this.pids)) {
      this.after.set(name, cpuSeconds(pid));
      used[name] = this.after.get(name)! - this.before.get(name)!;
    }
    return used;
  }
}

export function median(values: number[]): number {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export function min(values: number[]): number {
  return Math.min(...values.filter(Number.isFinite));
}

export function max(values: number[]): number {
  return Math.max(...values.filter(Number.isFinite));
}

export function fixed(value: number, digits = 0): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "-";
}

export interface MachineFacts {
  date: string;
  cores: number;
  cpuModel: string;
  accelerator: "KVM" | "TCG";
  qemuVersion: string;
  bunVersion: string;
  loadAverage: string;
}

export function machineFacts(): MachineFacts {
  const qemu = Bun.spawnSync(["qemu-system-x86_64", "--version"], { stdout: "pipe", stderr: "ignore" });
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    cores: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? "unknown",
    accelerator: kvmUsable() ? "KVM" : "TCG",
    qemuVersion: /version (\S+)/.exec(qemu.stdout.toString())?.[1] ?? "unknown",
    bunVersion: Bun.version,
    loadAverage: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
  };
}

export function describeMachine(facts: MachineFacts): string {
  return `${facts.date}; ${facts.cores} cores (${facts.cpuModel}); ${facts.accelerator}; QEMU ${facts.qemuVersion}; Bun ${facts.bunVersion}; load average at start ${facts.loadAverage}`;
}

/** A Markdown table from a header row and body rows. */
export function markdownTable(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

export interface Bar {
  label: string;
  value: number;
  low: number;
  high: number;
  /** Highlights the bar (e.g. wssmig's rows). */
  accent?: boolean;
  /** Shown after the value, e.g. "1.48x". */
  note?: string;
}

/** A horizontal bar chart with min-max whiskers, drawn as SVG text. */
export function barChartSvg(title: string, unit: string, bars: Bar[], reference?: { label: string; value: number }): string {
  const labelWidth = 230;
  const plotWidth = 500;
  const rowHeight = 30;
  const top = 46;
  const width = labelWidth + plotWidth + 130;
  const height = top + bars.length * rowHeight + 40;
  const scaleMax = niceCeiling(Math.max(...bars.map((bar) => (Number.isFinite(bar.high) ? bar.high : bar.value)), reference?.value ?? 0));
  const x = (value: number) => labelWidth + (value / scaleMax) * plotWidth;
  const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escape(title)}</text>`,
  ];
  for (let tick = 0; tick <= 5; tick++) {
    const value = (scaleMax / 5) * tick;
    const tx = x(value);
    parts.push(`<line x1="${tx}" y1="${top - 6}" x2="${tx}" y2="${top + bars.length * rowHeight}" stroke="#ddd"/>`);
    parts.push(`<text x="${tx}" y="${top + bars.length * rowHeight + 16}" text-anchor="middle" fill="#555">${Math.round(value)}</text>`);
  }
  parts.push(`<text x="${labelWidth + plotWidth / 2}" y="${height - 6}" text-anchor="middle" fill="#555">${escape(unit)}</text>`);
  bars.forEach((bar, index) => {
    const y = top + index * rowHeight;
    const barWidth = Math.max(0, x(bar.value) - labelWidth);
    parts.push(`<text x="${labelWidth - 8}" y="${y + 19}" text-anchor="end">${escape(bar.label)}</text>`);
    parts.push(`<rect x="${labelWidth}" y="${y + 5}" width="${barWidth.toFixed(1)}" height="${rowHeight - 10}" fill="${bar.accent ? "#2a7ab9" : "#9aa5b1"}"/>`);
    if (Number.isFinite(bar.low) && Number.isFinite(bar.high)) {
      const midY = y + rowHeight / 2;
      parts.push(`<line x1="${x(bar.low).toFixed(1)}" y1="${midY}" x2="${x(bar.high).toFixed(1)}" y2="${midY}" stroke="#222"/>`);
      for (const end of [bar.low, bar.high]) parts.push(`<line x1="${x(end).toFixed(1)}" y1="${midY - 5}" x2="${x(end).toFixed(1)}" y2="${midY + 5}" stroke="#222"/>`);
    }
    parts.push(`<text x="${(x(Number.isFinite(bar.high) ? bar.high : bar.value) + 6).toFixed(1)}" y="${y + 19}" fill="#222">${Math.round(bar.value)}${bar.note ? ` (${escape(bar.note)})` : ""}</text>`);
  });
  if (reference) {
    const rx = x(reference.value);
    parts.push(`<line x1="${rx}" y1="${top - 8}" x2="${rx}" y2="${top + bars.length * rowHeight}" stroke="#c0392b" stroke-dasharray="4 3"/>`);
    parts.push(`<text x="${rx}" y="${top - 10}" text-anchor="middle" fill="#c0392b" font-size="11">${escape(reference.label)}</text>`);
  }
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

function niceCeiling(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

/** Parses --name value options into numbers; unknown options are an error. */
export function numberOptions(argv: string[], defaults: Record<string, number>): Record<string, number> {
  const options = { ...defaults };
  for (let index = 0; index < argv.length; index++) {
    const name = argv[index]!.replace(/^--/, "");
    if (!(name in defaults) || !argv[index]!.startsWith("--")) throw new Error(`unknown option ${argv[index]}; known: ${Object.keys(defaults).map((key) => `--${key}`).join(" ")}`);
    const value = Number(argv[++index]);
    if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} needs a positive number`);
    options[name] = value;
  }
  return options;
}

/**
 * Runs `cleanup` when the bench is interrupted (Ctrl-C, SIGTERM), where `finally` blocks would
 * not run: no QEMU, tunnel process, RAM file or socket outlives the bench.
 */
export function cleanUpOnSignal(cleanup: () => Promise<void>): void {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      console.error(`\n${signal}: cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }
}
