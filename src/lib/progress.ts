/**
 * Migration progress for people and for log collectors. On a terminal: one line redrawn in
 * place on stderr. Otherwise (or with --log-format json): a log line every few seconds.
 * Either way a summary at the end. Figures come straight from `query-migrate`.
 */
import type { Logger } from "./log.ts";
import type { MigrationInfo } from "./migration.ts";

export type ProgressMode = "bar" | "log";

/** The bar needs a terminal and would corrupt JSON logs; everything else gets log lines. */
export function chooseProgressMode(logFormat: string, stderrIsTty: boolean): ProgressMode {
  return stderrIsTty && logFormat !== "json" ? "bar" : "log";
}

export interface MigrationSummary {
  status: string;
  totalTimeMs: number;
  downtimeMs: number | undefined;
  bytes: number;
  averageMBps: number;
}

export function summarize(info: MigrationInfo): MigrationSummary {
  const totalTimeMs = info["total-time"] ?? 0;
  const bytes = info.ram?.transferred ?? 0;
  return {
    status: info.status ?? "none",
    totalTimeMs,
    downtimeMs: info.downtime,
    bytes,
    averageMBps: totalTimeMs > 0 ? round1(bytes / 1e6 / (totalTimeMs / 1000)) : 0,
  };
}

/** "[#####.....]  42.0%  1.2 GiB/4.0 GiB  2750 MB/s  left 2.8 GiB  dirty 120 p/s  downtime~300 ms  12.3 s" */
export function formatProgressLine(info: MigrationInfo, elapsedMs: number, barWidth = 24): string {
  const ram = info.ram;
  const total = ram?.total ?? 0;
  const transferred = ram?.transferred ?? 0;
  const remaining = ram?.remaining ?? 0;
  // Done = RAM no longer waiting to be sent; transferred can exceed total when pages are re-sent.
  const fraction = total > 0 ? Math.min(1, Math.max(0, (total - remaining) / total)) : 0;
  const filled = Math.round(fraction * barWidth);
  const parts = [
    `[${"#".repeat(filled)}${".".repeat(barWidth - filled)}]`,
    `${(fraction * 100).toFixed(1).padStart(5)}%`,
    `${formatBytes(transferred)}/${formatBytes(total)}`,
    `${Math.round((ram?.mbps ?? 0) / 8)} MB/s`,
    `left ${formatBytes(remaining)}`,
    `dirty ${Math.round(ram?.["dirty-pages-rate"] ?? 0)} pages/s`,
  ];
  if (info["expected-downtime"] !== undefined) parts.push(`downtime~${info["expected-downtime"]} ms`);
  parts.push(`${(elapsedMs / 1000).toFixed(1)} s`, info.status ?? "");
  return parts.join("  ");
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export interface ProgressOptions {
  logger: Logger;
  mode: ProgressMode;
  /** Where the bar is drawn (stderr, like the logs). */
  stream?: { write(text: string): unknown; columns?: number };
  /** Minimum time between log lines in "log" mode. */
  logIntervalMs?: number;
}

export class MigrationProgress {
  private readonly startedAt = Date.now();
  private lastLogAt = 0;
  private barShown = false;
  private readonly stream: { write(text: string): unknown; columns?: number };

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
  }

  update(info: MigrationInfo): void {
    const elapsedMs = Date.now() - this.startedAt;
    if (this.options.mode === "bar") {
      const columns = this.stream.columns ?? 120;
      // \r and clear-to-end-of-line: redraw in place; cut to the width so it never wraps.
      this.stream.write(`\r${formatProgressLine(info, elapsedMs).slice(0, columns - 1)}\x1b[K`);
      this.barShown = true;
      return;
    }
    if (Date.now() - this.lastLogAt < (this.options.logIntervalMs ?? 2000)) return;
    this.lastLogAt = Date.now();
    const ram = info.ram;
    this.options.logger.info(
      {
        status: info.status,
        percent: ram && ram.total > 0 ? round1(((ram.total - ram.remaining) / ram.total) * 100) : 0,
        transferred: ram?.transferred ?? 0,
        total: ram?.total ?? 0,
        remaining: ram?.remaining ?? 0,
        MBps: Math.round((ram?.mbps ?? 0) / 8),
        dirtyPagesPerSecond: Math.round(ram?.["dirty-pages-rate"] ?? 0),
        expectedDowntimeMs: info["expected-downtime"],
        elapsedSeconds: round1(elapsedMs / 1000),
      },
      "migration progress",
    );
  }

  /** Ends the bar's line so that the next log line starts on a fresh one. */
  clearLine(): void {
    if (this.barShown) this.stream.write("\n");
    this.barShown = false;
  }

  /** Logs the summary (status, total time, downtime, bytes, average MB/s). */
  finish(info: MigrationInfo): MigrationSummary {
    this.clearLine();
    const summary = summarize(info);
    const level = summary.status === "completed" ? "info" : "warn";
    this.options.logger[level](
      {
        status: summary.status,
        totalSeconds: round1(summary.totalTimeMs / 1000),
        downtimeMs: summary.downtimeMs,
        bytes: summary.bytes,
        transferred: formatBytes(summary.bytes),
        averageMBps: summary.averageMBps,
      },
      `migration ${summary.status}`,
    );
    return summary;
  }
}

function round1(value: number): number {
  return Math.round(value * 10) / 10;
}
