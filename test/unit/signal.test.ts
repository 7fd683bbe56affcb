// Signal.race: what a long transfer races on every chunk must not pile up.
import { expect, test } from "bun:test";
import { Signal } from "../../src/util/signal.ts";

test("races that settle leave nothing behind; a fired signal wins a pending race and every later one", async () => {
  const s = new Signal();
  for (let i = 0; i < 10_000; i++) expect(await s.race(Promise.resolve())).toBe(true);
  expect(s.pending).toBe(0);
  await expect(s.race(Promise.reject(new Error("write failed")))).rejects.toThrow("write failed");
  expect(s.pending).toBe(0);
  const stuck = s.race(new Promise(() => {})); // a write that never returns
  expect(s.pending).toBe(1);
  s.fire();
  expect(await stuck).toBe(false);
  expect(s.pending).toBe(0);
  expect(await s.race(Promise.resolve())).toBe(false);
});
