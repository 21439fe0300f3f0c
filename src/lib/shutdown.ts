/** Runs a clean-up once on SIGINT or SIGTERM, then resolves the returned promise. */
export function onTerminationSignal(cleanUp: (signal: string) => Promise<void>): Promise<string> {
  return new Promise((resolve) => {
    let handled = false;
    const handle = (signal: NodeJS.Signals) => {
      if (handled) return;
      handled = true;
      void cleanUp(signal).finally(() => resolve(signal));
    };
    process.on("SIGINT", handle);
    process.on("SIGTERM", handle);
  });
}
