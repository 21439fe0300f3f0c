/**
 * pino set-up shared by every role. Logs go to stderr so that stdout stays free for results.
 * "text" gives one readable line per event (colour on a terminal); "json" gives pino's JSON
 * lines for log collectors. We format text ourselves instead of using pino-pretty because
 * pino-pretty runs in a worker thread, which a `bun build --compile` binary cannot load.
 */
import pino, { type Logger } from "pino";

export type LogFormat = "text" | "json";
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type { Logger };

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL",
};
const LEVEL_COLOURS: Record<number, string> = {
  10: "\x1b[90m", 20: "\x1b[36m", 30: "\x1b[32m", 40: "\x1b[33m", 50: "\x1b[31m", 60: "\x1b[35m",
};
const OMITTED_KEYS = new Set(["level", "time", "pid", "hostname", "msg", "name"]);

function formatValue(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  return JSON.stringify(value);
}

/** Turns one pino JSON record into "HH:MM:SS.mmm LEVEL name: message key=value ...". */
export function formatTextLine(record: Record<string, unknown>, colour: boolean): string {
  const level = Number(record.level);
  const time = new Date(Number(record.time)).toISOString().slice(11, 23);
  const levelName = (LEVEL_NAMES[level] ?? String(level)).padEnd(5);
  const fields = Object.entries(record)
    .filter(([key]) => !OMITTED_KEYS.has(key))
    .map(([key, value]) => `${key}=${formatValue(value)}`)
    .join(" ");
  const levelText = colour ? `${LEVEL_COLOURS[level] ?? ""}${levelName}\x1b[0m` : levelName;
  const name = record.name ? `${record.name}: ` : "";
  return `${time} ${levelText} ${name}${record.msg ?? ""}${fields ? " " + fields : ""}\n`;
}

export function createLogger(options: { name: string; level: LogLevel; format: LogFormat }): Logger {
  const base = { name: options.name };
  if (options.format === "json") {
    return pino({ level: options.level, base }, pino.destination({ fd: 2, sync: true }));
  }
  const colour = Boolean(process.stderr.isTTY) && !process.env.NO_COLOR;
  const textStream = {
    write(line: string) {
      process.stderr.write(formatTextLine(JSON.parse(line), colour));
    },
  };
  return pino({ level: options.level, base }, textStream);
}
