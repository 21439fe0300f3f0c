/** What every live-guest migration test checks once the migration has completed. */
import { expect } from "bun:test";
import { GUEST_COUNTER_OFFSET } from "../fixtures/guest/build.ts";
import { FIRMWARE_SHADOW, readUint32At, sha256File, waitUntil, type Vm } from "./qemu.ts";

/**
 * RAM equal at completion, but for the firmware window (see FIRMWARE_SHADOW: QEMU 7.2 itself
 * leaves two bytes there different, even QEMU to QEMU without wssmig); the guest's counter
 * arrived as the source left it; after cont it moves on the destination, not on the source.
 */
export async function expectGuestMovedToDestination(pair: { source: Vm; destination: Vm }): Promise<void> {
  expect(await pair.source.status()).toBe("postmigrate");
  expect(await pair.destination.status()).toBe("paused");
  expect(await sha256File(pair.destination.ramPath, FIRMWARE_SHADOW)).toBe(await sha256File(pair.source.ramPath, FIRMWARE_SHADOW));
  const counterAtArrival = readUint32At(pair.destination.ramPath, GUEST_COUNTER_OFFSET);
  expect(counterAtArrival).toBe(readUint32At(pair.source.ramPath, GUEST_COUNTER_OFFSET));
  await pair.destination.qmp("cont");
  await waitUntil("the guest counter to move on the destination", () => readUint32At(pair.destination.ramPath, GUEST_COUNTER_OFFSET) > counterAtArrival + 2, 10_000);
  expect(readUint32At(pair.source.ramPath, GUEST_COUNTER_OFFSET)).toBe(counterAtArrival);
}
