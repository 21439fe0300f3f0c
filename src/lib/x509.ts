/**
 * Loads @peculiar/x509 for the rest of wssmig: import { x509 } from here, never the package.
 *
 * tsyringe (a dependency of @peculiar/x509 2.x) throws at load time unless the Reflect
 * metadata polyfill is loaded first, so this module loads it, then the package.
 */
import "reflect-metadata";
import type * as X509Module from "@peculiar/x509";
export type { X509Module };

export const x509: typeof X509Module = await import("@peculiar/x509");
x509.cryptoProvider.set(crypto);
