// Slots: at most `size` runs at once, the rest in order; a failing run frees its slot.
import { expect, test } from "bun:test";
import { Slots } from "../../src/util/slots.ts";

test("at most size at once, waiters in order, onWait once per waiter, a rejected run frees its slot", async () => {
  const slots = new Slots(2);
  const events: string[] = [];
  const gates: Record<string, () => void> = {};
  const job = (name: string, fail = false) =>
    slots.run(
      () =>
        new Promise<string>((resolve, reject) => {
          events.push(`start ${name}`);
          gates[name] = () => (fail ? reject(new Error(name)) : resolve(name));
        }),
      () => events.push(`wait ${name}`),
    );
  const a = job("a", true);
  const b = job("b");
  const c = job("c");
  const d = job("d");
  await Bun.sleep(0);
  expect(events).toEqual(["start a", "start b", "wait c", "wait d"]);
  expect(slots.inUse).toBe(2);
  gates.a!();
  await expect(a).rejects.toThrow("a");
  await Bun.sleep(0);
  expect(events.slice(4)).toEqual(["start c"]);
  gates.b!();
  expect(await b).toBe("b");
  await Bun.sleep(0);
  expect(events.slice(5)).toEqual(["start d"]);
  gates.c!();
  gates.d!();
  expect([await c, await d]).toEqual(["c", "d"]);
  expect(slots.inUse).toBe(0);
});
