/**
 * What wssmig-send and wssmig-receive share: the migration capabilities and parameters both
 * QEMUs must agree on, following `query-migrate` to an outcome, and turning QEMU's failures
 * into sentences with a likely cause.
 */
import { lstatSync } from "node:fs";
import { InvalidArgumentError } from "commander";
import { ExitCode, WssmigError, describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { MigrationProgress, type ProgressMode } from "./progress.ts";
import { QmpError, withQmp, type QmpClient } from "./qmp.ts";
import { prepareListenPath } from "./unix-socket.ts";

/** Options that must be the same on both sides: QEMU checks the capabilities match. */
export interface MigrationFeatures {
  /** Number of multifd channels; undefined or 0 for a single stream. */
  multifdChannels?: number;
  postcopy?: boolean;
}

export interface SourceParameters {
  /** Bytes per second; undefined for no cap. */
  maxBandwidth?: number;
  downtimeLimitMs?: number;
}

/** "No cap": QEMU 7.2 has no explicit "unlimited", and its default is 128 MiB/s. 1 TiB/s is far above any link. */
export const UNLIMITED_BANDWIDTH = 1024 ** 4;

export type MigrationStatus =
  | "none" | "setup" | "cancelling" | "cancelled" | "active" | "postcopy-active" | "postcopy-paused"
  | "postcopy-recover" | "completed" | "failed" | "colo" | "pre-switchover" | "device" | "wait-unplug";

/** The parts of `query-migrate`'s answer we use. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    mbps: number;
    "dirty-pages-rate"?: number;
    "page-size"?: number;
    "dirty-sync-count"?: number;
    "postcopy-requests"?: number;
  };
  "expected-downtime"?: number;
  "total-time"?: number;
  downtime?: number;
  "setup-time"?: number;
  "error-desc"?: string;
}

export const FINAL_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

/** The capability list for `migrate-set-capabilities`, the same on both sides. */
export function migrationCapabilities(features: MigrationFeatures): { capability: string; state: boolean }[] {
  const postcopy = Boolean(features.postcopy);
  return [
    // MIGRATION events let us see status changes without waiting for the next poll.
    { capability: "events", state: true },
    { capability: "multifd", state: (features.multifdChannels ?? 0) > 0 },
    { capability: "postcopy-ram", state: postcopy },
    // Postcopy's page requests travel back from the destination on the return path.
    { capability: "return-path", state: postcopy },
  ];
}

/** Sets capabilities (and the multifd channel count) before `migrate` or `migrate-incoming`. */
export async function applyMigrationFeatures(qmp: QmpClient, features: MigrationFeatures): Promise<void> {
  try {
    await qmp.execute("migrate-set-capabilities", { capabilities: migrationCapabilities(features) });
    if ((features.multifdChannels ?? 0) > 0) {
      await qmp.execute("migrate-set-parameters", { "multifd-channels": features.multifdChannels });
    }
  } catch (error) {
    throw new WssmigError(
      `could not set migration capabilities: ${describeError(error)}; a migration may already be running on this VM, or this QEMU lacks the feature`,
      ExitCode.Failure,
      { cause: error },
    );
  }
}

/** Sets the source-only knobs. Without --max-bandwidth we lift QEMU's 128 MiB/s default cap. */
export async function applySourceParameters(qmp: QmpClient, parameters: SourceParameters): Promise<void> {
  const qemuParameters: Record<string, number> = {
    "max-bandwidth": parameters.maxBandwidth ?? UNLIMITED_BANDWIDTH,
  };
  if (parameters.downtimeLimitMs !== undefined) qemuParameters["downtime-limit"] = parameters.downtimeLimitMs;
  try {
    await qmp.execute("migrate-set-parameters", qemuParameters);
  } catch (error) {
    throw new WssmigError(`QEMU rejected the migration parameters: ${describeError(error)}`, ExitCode.Usage, { cause: error });
  }
}

export async function queryMigration(qmp: QmpClient): Promise<MigrationInfo> {
  return await qmp.execute<MigrationInfo>("query-migrate");
}

export async function queryRunState(qmp: QmpClient): Promise<string> {
  return (await qmp.execute<{ status: string }>("query-status")).status;
}

export interface FollowOptions {
  /** How often to poll `query-migrate` while nothing else happens. */
  pollIntervalMs?: number;
  /** Called with every poll's answer (for progress). */
  onProgress?: (info: MigrationInfo) => void;
  /** Called once per new status, e.g. to switch to postcopy or to log. */
  onStatus?: (status: string, info: MigrationInfo) => void | Promise<void>;
  /** Give up after this long (ms); undefined waits as long as the migration runs. */
  timeoutMs?: number;
  /** Resolves when we should stop following (e.g. a signal arrived); following then returns the last info. */
  stop?: Promise<void>;
}

/**
 * Polls `query-migrate` (and wakes early on MIGRATION events) until the migration reaches
 * completed, failed or cancelled; returns the final answer. A QMP connection that closes
 * (QEMU exited) rejects with that error.
 */
export async function followMigration(qmp: QmpClient, options: FollowOptions = {}): Promise<MigrationInfo> {
  const pollIntervalMs = options.pollIntervalMs ?? 500;
  const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
  let wake: () => void = () => {};
  const unsubscribe = qmp.onEvent((event) => {
    if (event.event === "MIGRATION") wake();
  });
  let stopped = false;
  options.stop?.then(() => {
    stopped = true;
    wake();
  });
  let lastStatus: string | undefined;
  try {
    for (;;) {
      const info = await queryMigration(qmp);
      const status = info.status ?? "none";
      if (status !== lastStatus) {
        lastStatus = status;
        await options.onStatus?.(status, info);
      }
      if (FINAL_STATUSES.has(status)) return await withFinalFigures(qmp, info);
      options.onProgress?.(info);
      if (stopped) return info;
      if (Date.now() > deadline) {
        throw new WssmigError(`the migration did not finish within ${Math.round((options.timeoutMs ?? 0) / 1000)} s (status ${status}); raise --timeout or check that the other side runs`, ExitCode.Failure);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, pollIntervalMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  } finally {
    unsubscribe();
  }
}

/**
 * QEMU 7.2 sets "completed" a moment before it records total-time and downtime; re-ask
 * briefly so that the summary has them.
 */
async function withFinalFigures(qmp: QmpClient, info: MigrationInfo): Promise<MigrationInfo> {
  let current = info;
  for (let attempt = 0; attempt < 10 && current.status === "completed" && !current["total-time"]; attempt++) {
    await Bun.sleep(50);
    current = await queryMigration(qmp);
  }
  return current;
}

/**
 * The likely cause behind a failed migration's `error-desc`, for the source side. QEMU's
 * texts are terse ("Unable to write to socket: Broken pipe"); the admin needs to know which
 * piece of the chain to look at.
 */
export function likelyFailureCause(errorDesc: string | undefined): string {
  const text = (errorDesc ?? "").toLowerCase();
  if (text.includes("connection refused") || text.includes("no such file")) {
    return "nothing listens on the migration socket: start wssmig-client (and wssmig-receive with wssmig-server on the destination) first";
  }
  if (text.includes("broken pipe") || text.includes("connection reset") || text.includes("end of file") || text.includes("input/output error")) {
    return "the stream to the destination broke: the tunnel (wssmig-client or wssmig-server) closed or the destination QEMU exited; see their logs";
  }
  if (text.includes("capabilit") || text.includes("postcopy") || text.includes("multifd")) {
    return "the two sides disagree on capabilities: give wssmig-receive and wssmig-send the same --multifd and --postcopy options";
  }
  if (text.includes("timed out") || text.includes("timeout")) {
    return "the destination stopped answering: check the network and the destination host";
  }
  return "see the destination QEMU's log and wssmig-receive's output for the reason";
}

/** One sentence for a migration that ended `failed` on the source. */
export function describeSourceFailure(info: MigrationInfo): string {
  const desc = info["error-desc"] ?? "QEMU gave no error description";
  return `migration failed: ${desc}; likely cause: ${likelyFailureCause(info["error-desc"])}`;
}

/** Parses a rate such as 500M, 1G, 1.5G, 2000000 (bytes per second, powers of 1024). */
export function parseByteRate(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:\/s)?$/i.exec(text.trim());
  const units: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };
  const value = match ? Number(match[1]) * units[match[2]!.toLowerCase()]! : NaN;
  if (!Number.isFinite(value) || value < 1) {
    throw new InvalidArgumentError("expected bytes per second such as 500M, 1G or 1048576 (K, M, G, T are powers of 1024).");
  }
  return Math.round(value);
}

// ---------------------------------------------------------------------------------------------
// The two roles' jobs. The entry points parse options and call these.

export interface SendConfig extends MigrationFeatures, SourceParameters {
  qmpPath: string;
  /** The unix socket wssmig-client offers; QEMU migrates to it. */
  socketPath: string;
  /** Seconds after the start to switch to postcopy; undefined: after the first pass over RAM. */
  postcopyAfterSeconds?: number;
  logger: Logger;
  progressMode: ProgressMode;
  /** Resolves with the signal's name when the user asks to stop. */
  interrupted: Promise<string>;
}

/** Runs the source side; resolves with the exit code, throws WssmigError on failure. */
export async function sendMigration(config: SendConfig): Promise<number> {
  assertMigrationSocket(config.socketPath);
  const { logger } = config;
  return await withQmp(config.qmpPath, async (qmp) => {
    const runStateBefore = await checkSourceReady(qmp, config.qmpPath);
    await applyMigrationFeatures(qmp, config);
    await applySourceParameters(qmp, config);
    const uri = `unix:${config.socketPath}`;
    try {
      await qmp.execute("migrate", { uri });
    } catch (error) {
      const desc = error instanceof QmpError ? error.desc : describeError(error);
      throw new WssmigError(`QEMU could not start the migration to ${uri}: ${desc}; likely cause: ${likelyFailureCause(desc)}`, ExitCode.Failure, { cause: error });
    }
    logger.info({ uri, maxBandwidth: config.maxBandwidth ?? "no cap", multifd: config.multifdChannels ?? 0, postcopy: Boolean(config.postcopy) }, "migration started");

    const progress = new MigrationProgress({ logger, mode: config.progressMode });
    const postcopySwitch = new PostcopySwitch(qmp, config, logger, progress);
    let info = await followMigration(qmp, {
      onProgress: (current) => {
        progress.update(current);
        void postcopySwitch.consider(current);
      },
      onStatus: (status) => logStatus(logger, progress, status),
      stop: config.interrupted.then(() => undefined),
    });
    if (!isSourceFinal(info.status)) info = await cancelOnInterrupt(qmp, info, config, progress);
    progress.finish(info);
    if (info.status === "completed") return ExitCode.Ok;
    if (info.status === "cancelled") {
      await waitForRunState(qmp, runStateBefore, logger);
      return ExitCode.Interrupted;
    }
    if (info.status === "postcopy-paused") {
      throw new WssmigError("migration paused in postcopy: the stream broke after the switch, so the VM's state is split between the hosts; restore the tunnel and resume it with QEMU's migrate-recover / migrate resume=true", ExitCode.Failure);
    }
    await waitForRunState(qmp, runStateBefore, logger);
    throw new WssmigError(describeSourceFailure(info), ExitCode.Failure);
  });
}

/** On the source, postcopy-paused also ends our part: only a manual recovery can go on. */
function isSourceFinal(status: string | undefined): boolean {
  return FINAL_STATUSES.has(status ?? "none") || status === "postcopy-paused";
}

/** Fails before touching QEMU when wssmig-client is not there yet. */
function assertMigrationSocket(path: string): void {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    throw new WssmigError(`no socket at ${path}: start wssmig-client first (it creates ${path} once it has verified the server), or pass --socket`, ExitCode.Unreachable);
  }
  if (!isSocket) throw new WssmigError(`${path} is not a unix socket: pass the --socket path that wssmig-client listens on`, ExitCode.Config);
}

async function checkSourceReady(qmp: QmpClient, qmpPath: string): Promise<string> {
  const runState = await queryRunState(qmp);
  if (runState === "inmigrate") {
    throw new WssmigError(`the VM at ${qmpPath} waits for an incoming migration; point wssmig-send's --qmp at the source VM`, ExitCode.Usage);
  }
  const current = await queryMigration(qmp);
  if (current.status && !FINAL_STATUSES.has(current.status) && current.status !== "none") {
    throw new WssmigError(`a migration is already ${current.status} on the VM at ${qmpPath}; wait for it or cancel it (QMP migrate_cancel) first`, ExitCode.Failure);
  }
  return runState;
}

function logStatus(logger: Logger, progress: MigrationProgress, status: string): void {
  // The summary reports the final status; setup and none say nothing new.
  if (status === "setup" || status === "none" || FINAL_STATUSES.has(status)) return;
  progress.clearLine();
  logger.info({ status }, `migration ${status}`);
}

/** Switches to postcopy once, at --postcopy-after seconds, or after the first full pass over RAM. */
class PostcopySwitch {
  private done = false;
  private readonly startedAt = Date.now();
  constructor(
    private readonly qmp: QmpClient,
    private readonly config: SendConfig,
    private readonly logger: Logger,
    private readonly progress: MigrationProgress,
  ) {}

  async consider(info: MigrationInfo): Promise<void> {
    if (!this.config.postcopy || this.done || info.status !== "active") return;
    const after = this.config.postcopyAfterSeconds;
    const due = after === undefined ? (info.ram?.["dirty-sync-count"] ?? 0) > 1 : Date.now() - this.startedAt >= after * 1000;
    if (!due) return;
    this.done = true;
    this.progress.clearLine();
    this.logger.info("switching to postcopy: the VM now runs on the destination, which fetches the pages it still lacks");
    try {
      await this.qmp.execute("migrate-start-postcopy");
    } catch (error) {
      this.logger.warn({ error: describeError(error) }, "QEMU did not switch to postcopy; the migration goes on as precopy");
    }
  }
}

/** Ctrl-C / SIGTERM: cancel (unless in postcopy, where the VM already lives on the destination). */
async function cancelOnInterrupt(qmp: QmpClient, info: MigrationInfo, config: SendConfig, progress: MigrationProgress): Promise<MigrationInfo> {
  const signal = await config.interrupted;
  progress.clearLine();
  if (info.status === "postcopy-active") {
    config.logger.warn({ signal }, "cannot cancel in postcopy (the VM already runs on the destination); waiting for the migration to finish");
    return await followMigration(qmp, { onProgress: (current) => progress.update(current) });
  }
  config.logger.warn({ signal }, "cancelling the migration");
  await qmp.execute("migrate_cancel");
  return await followMigration(qmp, { pollIntervalMs: 100, timeoutMs: 60_000 });
}

/** After a failed or cancelled migration, waits until the source VM is back in its old state. */
async function waitForRunState(qmp: QmpClient, runStateBefore: string, logger: Logger): Promise<void> {
  if (runStateBefore !== "running") return;
  const deadline = Date.now() + 60_000;
  let state = await queryRunState(qmp);
  while (state !== "running" && Date.now() < deadline) {
    await Bun.sleep(200);
    state = await queryRunState(qmp);
  }
  if (state === "running") logger.info("the source VM is running again");
  else logger.error({ state }, "the source VM did not resume; run QMP cont on it once you have checked it");
}

export interface ReceiveConfig extends MigrationFeatures {
  qmpPath: string;
  /** The unix socket the destination QEMU listens on (wssmig-server forwards into it). */
  socketPath: string;
  /** Give up after this many seconds; undefined waits as long as it takes. */
  timeoutSeconds?: number;
  logger: Logger;
  interrupted: Promise<string>;
}

/** Runs the destination side; resolves with the exit code, throws WssmigError on failure. */
export async function receiveMigration(config: ReceiveConfig): Promise<number> {
  const { logger } = config;
  return await withQmp(config.qmpPath, async (qmp) => {
    await checkDestinationReady(qmp, config.qmpPath);
    // A socket file left by an earlier run would make QEMU's bind fail.
    await prepareListenPath(config.socketPath);
    await applyMigrationFeatures(qmp, config);
    const uri = `unix:${config.socketPath}`;
    try {
      await qmp.execute("migrate-incoming", { uri });
    } catch (error) {
      const desc = error instanceof QmpError ? error.desc : describeError(error);
      throw new WssmigError(`QEMU could not listen on ${uri}: ${desc}; pick a --socket path in a writable directory that nothing else uses`, ExitCode.Failure, { cause: error });
    }
    logger.info({ uri, multifd: config.multifdChannels ?? 0, postcopy: Boolean(config.postcopy) }, "waiting for the incoming migration");

    const startedAt = Date.now();
    let info: MigrationInfo;
    try {
      info = await followMigration(qmp, {
        onStatus: (status) => {
          if (status !== "setup" && status !== "none") logger.info({ status }, `incoming migration ${status}`);
        },
        timeoutMs: config.timeoutSeconds === undefined ? undefined : config.timeoutSeconds * 1000,
        stop: config.interrupted.then(() => undefined),
      });
    } catch (error) {
      if (!qmp.isClosed) throw error;
      throw new WssmigError("the destination QEMU exited during the incoming migration (QEMU exits when the incoming stream breaks or cannot be loaded); likely cause: the source cancelled or failed, or the tunnel closed; see the destination QEMU's log", ExitCode.Failure, { cause: error });
    }
    if (!FINAL_STATUSES.has(info.status ?? "none")) {
      logger.warn({ signal: await config.interrupted }, `stopped following; the destination QEMU still waits on ${config.socketPath}`);
      return ExitCode.Interrupted;
    }
    if (info.status !== "completed") {
      throw new WssmigError(`the incoming migration ended ${info.status}${info["error-desc"] ? `: ${info["error-desc"]}` : ""}; see the destination QEMU's log and wssmig-send's output`, ExitCode.Failure);
    }
    const runState = await queryRunState(qmp);
    const hint = runState === "running" ? "" : " (resume it with QMP cont when you are ready)";
    logger.info({ runState, seconds: Math.round((Date.now() - startedAt) / 100) / 10 }, `the VM arrived; it is ${runState}${hint}`);
    return ExitCode.Ok;
  });
}

async function checkDestinationReady(qmp: QmpClient, qmpPath: string): Promise<void> {
  const runState = await queryRunState(qmp);
  if (runState !== "inmigrate") {
    throw new WssmigError(`the VM at ${qmpPath} is ${runState}, not waiting for an incoming migration; start the destination QEMU with -incoming defer (and the same machine options as the source)`, ExitCode.Usage);
  }
  const current = await queryMigration(qmp);
  if (current.status && current.status !== "none") {
    throw new WssmigError(`the VM at ${qmpPath} already has an incoming migration (${current.status}); restart the destination QEMU with -incoming defer`, ExitCode.Failure);
  }
}

