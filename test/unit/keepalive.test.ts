// startKeepalive: the one timer behind the sessions' "still at it" messages.
import { expect, test } from "bun:test";
import { startKeepalive } from "../../src/core/keepalive.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** waits until `cond` holds (no timing assertions: only that it happens) */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(2);
}

test("sends every interval until stopped; `now` sends at once", async () => {
  let sent = 0;
  const k = startKeepalive(async () => void sent++, 5, { now: true });
  expect(sent).toBe(1);
  await until(() => sent >= 3);
  await k.stop();
  const after = sent;
  await sleep(30);
  expect(sent).toBe(after);
  expect(k.failed).toBe(false);
});

test("without `now`, nothing is sent before the first interval", async () => {
  let sent = 0;
  const k = startKeepalive(async () => void sent++, 60_000);
  await sleep(10);
  expect(sent).toBe(0);
  await k.stop();
});

test("with `moved`, a tick sends only when the work count changed", async () => {
  let sent = 0;
  let work = 0;
  const k = startKeepalive(async () => void sent++, 2, { moved: () => work });
  await sleep(30);
  expect(sent).toBe(0); // nothing moved: quiet
  work++;
  await until(() => sent === 1);
  await sleep(30);
  expect(sent).toBe(1); // one send per change
  work += 5;
  await until(() => sent === 2);
  await k.stop();
});

test("a send still under way holds back the next; stop waits for it", async () => {
  let started = 0;
  let release!: () => void;
  const k = startKeepalive(() => (started++, new Promise<void>((r) => (release = r))), 2);
  await until(() => started === 1);
  await sleep(30);
  expect(started).toBe(1);
  let stopped = false;
  const s = k.stop().then(() => (stopped = true));
  await sleep(5);
  expect(stopped).toBe(false);
  release();
  await s;
  expect(stopped).toBe(true);
});

test("the first failed send stops the sending and is kept", async () => {
  let calls = 0;
  const k = startKeepalive(async () => {
    calls++;
    throw new Error("receiver gave up");
  }, 2);
  await until(() => k.failed);
  expect((k.error as Error).message).toBe("receiver gave up");
  await sleep(30);
  expect(calls).toBe(1);
  await k.stop(); // never rejects
  const sync = startKeepalive(() => {
    throw new Error("thrown, not rejected");
  }, 60_000, { now: true });
  await until(() => sync.failed);
  expect((sync.error as Error).message).toBe("thrown, not rejected");
  await sync.stop();
});
