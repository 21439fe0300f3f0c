/**
 * Logs refusals without letting a flood of bad requests flood the log: the first refusal of
 * each kind is logged at once with its details; repeats within the window are counted and
 * summed up in one line when the window ends.
 */
import type { Logger } from "./log.ts";

const WINDOW_MS = 10_000;

export class RefusalLog {
  private readonly suppressed = new Map<string, number>();
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly log: Logger) {}

  refused(reason: string, details: Record<string, unknown>): void {
    const count = this.suppressed.get(reason);
    if (count === undefined) {
      this.log.warn(details, `refused: ${reason}`);
      this.suppressed.set(reason, 0);
      this.timer ??= setTimeout(() => this.flush(), WINDOW_MS);
      this.timer.unref?.();
      return;
    }
    this.suppressed.set(reason, count + 1);
  }

  private flush(): void {
    this.timer = null;
    for (const [reason, count] of this.suppressed) {
      if (count > 0) this.log.warn({ count, seconds: WINDOW_MS / 1000 }, `refused ${count} more: ${reason}`);
    }
    this.suppressed.clear();
  }
}
