/**
 * Loads @peculiar/x509 for the rest of wssmig: import { x509 } from here, never the package.
 *
 * Why: tsyringe (a dependency of @peculiar/x509 2.x) throws at load time unless the
 * reflect-metadata polyfill is present. @peculiar/x509 registers its algorithm providers with
 * constructors that take no parameters, so no real design-time metadata is ever needed, and the
 * three functions below stand in for that package. Bun evaluates a CommonJS dependency before
 * the importing module's body, so the package is loaded with a dynamic import AFTER the shim.
 */
type MetadataKey = unknown;
type PropertyKeyOrNone = string | symbol | undefined;

const metadataByTarget = new WeakMap<object, Map<PropertyKeyOrNone, Map<MetadataKey, unknown>>>();

function ownMetadataMap(target: object, propertyKey: PropertyKeyOrNone, create: boolean): Map<MetadataKey, unknown> | undefined {
  let byProperty = metadataByTarget.get(target);
  if (!byProperty) {
    if (!create) return undefined;
    byProperty = new Map();
    metadataByTarget.set(target, byProperty);
  }
  let entries = byProperty.get(propertyKey);
  if (!entries && create) {
    entries = new Map();
    byProperty.set(propertyKey, entries);
  }
  return entries;
}

interface ReflectMetadata {
  defineMetadata(key: MetadataKey, value: unknown, target: object, propertyKey?: string | symbol): void;
  getOwnMetadata(key: MetadataKey, target: object, propertyKey?: string | symbol): unknown;
  getMetadata(key: MetadataKey, target: object, propertyKey?: string | symbol): unknown;
}

const reflect = Reflect as typeof Reflect & Partial<ReflectMetadata>;
if (typeof reflect.getMetadata !== "function") {
  reflect.defineMetadata = (key, value, target, propertyKey) => {
    ownMetadataMap(target, propertyKey, true)!.set(key, value);
  };
  reflect.getOwnMetadata = (key, target, propertyKey) => ownMetadataMap(target, propertyKey, false)?.get(key);
  reflect.getMetadata = (key, target, propertyKey) => {
    // Like reflect-metadata: look along the prototype chain.
    for (let current: object | null = target; current; current = Object.getPrototypeOf(current)) {
      const entries = ownMetadataMap(current, propertyKey, false);
      if (entries?.has(key)) return entries.get(key);
    }
    return undefined;
  };
}

import type * as X509Module from "@peculiar/x509";
export type { X509Module };

export const x509: typeof X509Module = await import("@peculiar/x509");
x509.cryptoProvider.set(crypto);
