/**
 * Resolves with the name of the first SIGINT or SIGTERM. Call it first thing in main: once it
 * is installed, a signal that arrives while the role is still starting no longer kills the
 * process outright but lets it clean up (close streams, remove its socket) as soon as it can.
 */
export function terminationSignal(): Promise<string> {
  return new Promise((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => resolve(signal));
  });
}
