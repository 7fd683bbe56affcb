// WorkerPool: a worker that dies must fail its jobs, never leave them waiting.
import { expect, test } from "bun:test";
import { WorkerPool } from "../../src/core/chunk-jobs.ts";

test("a worker that cannot load fails the jobs sent before and after it died, instead of hanging", async () => {
  const pool = new WorkerPool(1, "file:///nonexistent/tbbackup-worker.ts");
  try {
    const timeout = (ms: number) => Bun.sleep(ms).then(() => ({ op: "timed out" }));
    // sent at once: queued before the load error arrives
    const early = await Promise.race([pool.run({ op: "digest" }), timeout(10_000)]);
    expect(early).toMatchObject({ op: "failed", error: expect.stringContaining("chunk worker failed") });
    // sent after the error: the worker will never answer it
    const late = await Promise.race([pool.run({ op: "digest" }), timeout(2_000)]);
    expect(late).toMatchObject({ op: "failed", error: expect.stringContaining("chunk worker failed") });
  } finally {
    pool.terminate();
  }
});
