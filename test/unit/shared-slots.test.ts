// Shared slots: chunk buffers the workers read and write in place, named by
// reference instead of handed over (src/util/shared-slots.ts). A slot given
// out twice at once would let two chunks share memory: these tests hold the
// bookkeeping to that, and run the real chunk worker on slots.
import { describe, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { createHash } from "node:crypto";
import { Hasher, WorkerPool } from "../../src/core/chunk-jobs.ts";
import { SharedSlots, SlotPayloads } from "../../src/util/shared-slots.ts";
import { FrameDecoder, encodeFrame } from "../../src/protocol/frame.ts";
import { DATA_PAYLOAD_AT, dataFrameSize } from "../../src/protocol/chunk-record.ts";
import { compressBound } from "../../src/util/buffer-pool.ts";
import { chunkDigest } from "../../src/store/root.ts";
import { zstd } from "../../src/util/zstd.ts";

describe("SharedSlots", () => {
  test("slots are distinct, 4 KiB aligned, and come back for reuse", () => {
    const s = new SharedSlots(5000, 3);
    const a = s.take();
    const b = s.take();
    expect(a.length).toBe(5000);
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    for (const v of [a, b]) expect(ptr(v) % 4096).toBe(0);
    // no overlap: a slot's size is the capacity rounded up to the alignment
    expect(Math.abs(a.byteOffset - b.byteOffset)).toBeGreaterThanOrEqual(5000);
    a.fill(1);
    expect(b.every((x) => x === 0)).toBe(true);
    s.give(a);
    const c = s.take(100);
    expect(c.byteOffset).toBe(a.byteOffset); // the one handed back
    expect(c.length).toBe(100);
  });

  test("a slot handed back twice throws; a view of no slot is ignored", () => {
    const s = new SharedSlots(4096, 2);
    const a = s.take();
    s.give(a.subarray(10, 20)); // any view of its bytes finds it
    expect(() => s.give(a)).toThrow(/handed back twice/);
    s.give(new Uint8Array(4096)); // not ours: nothing happens
    s.give(new Uint8Array(new SharedArrayBuffer(4096)));
    expect(s.take().byteOffset).toBe(a.byteOffset);
    expect(() => s.take(4097)).toThrow(RangeError);
  });

  test("more slots than an arena holds add an arena, which every sink hears of, late ones too", () => {
    const s = new SharedSlots(4096, 2);
    const early: number[] = [];
    s.shareWith((id) => early.push(id));
    const taken = [s.take(), s.take(), s.take()];
    expect(early.length).toBe(2);
    expect(new Set(taken.map((v) => v.buffer)).size).toBe(2);
    const late: number[] = [];
    s.shareWith((id) => late.push(id));
    expect(late).toEqual(early);
    // references resolve back to the slot they name
    const ref = s.ref(taken[2]!.subarray(8, 16))!;
    expect(ref).toMatchObject({ arena: early[1], length: 8 });
    s.giveRef(ref);
    expect(() => s.give(taken[2]!)).toThrow(/twice/);
    expect(s.ref(new Uint8Array(8))).toBeNull();
  });

  test("SlotPayloads builds only payloads too large for a buffer of their own in slots", () => {
    const s = new SharedSlots(256 * 1024, 2);
    const p = new SlotPayloads(s);
    expect(p.take(1000).buffer).toBeInstanceOf(ArrayBuffer);
    const big = p.take(200_000);
    expect(big.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(p.take(300_000).buffer).toBeInstanceOf(ArrayBuffer); // larger than a slot
    p.give(big.buffer); // its buffer is the whole arena: not enough to find the slot
    expect(s.ref(big)).not.toBeNull();
    p.give(big);
    expect(() => s.give(big)).toThrow(/twice/);
  });

  test("a payload that fails its CRC goes back to the pool it came from", () => {
    const s = new SharedSlots(256 * 1024, 2);
    const p = new SlotPayloads(s);
    const d = new FrameDecoder();
    const given: Uint8Array[] = [];
    d.alloc = (n) => p.take(n);
    d.free = (b) => {
      given.push(b);
      p.give(b);
    };
    const f = encodeFrame(0x10, crypto.getRandomValues(new Uint8Array(100_000)));
    f[50_000] ^= 1;
    const ev = d.push(f);
    expect(ev[0]).toMatchObject({ kind: "corrupt", length: 100_000 });
    expect(given.length).toBe(1);
    expect(given[0]!.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(() => s.give(given[0]!)).toThrow(/twice/); // it is free already
  });
});

test("a payload abandoned mid-frame (its sender gone on a lossy link) goes back to the pool too", () => {
  const s = new SharedSlots(256 * 1024, 2);
  const p = new SlotPayloads(s);
  const d = new FrameDecoder();
  d.alloc = (n) => p.take(n);
  d.free = (b) => p.give(b);
  const f = encodeFrame(0x10, crypto.getRandomValues(new Uint8Array(100_000)));
  for (let i = 0; i < 5; i++) {
    d.push(f.subarray(0, 50_000));
    expect(d.abandon()[0]).toMatchObject({ kind: "corrupt" });
  }
  // the same slot every time: none was kept
  let arenas = 0;
  s.shareWith(() => arenas++);
  expect(arenas).toBe(1);
});

test("a job that cannot be handed to a worker fails alone; the worker's later replies still reach their own jobs", async () => {
  const pool = new WorkerPool(1);
  try {
    // a SharedArrayBuffer cannot be transferred: postMessage throws
    const bad = await pool.run({ op: "hash", index: 0, buf: new ArrayBuffer(8), length: 8 }, [new SharedArrayBuffer(8) as unknown as ArrayBuffer]);
    expect(bad).toMatchObject({ op: "failed", error: expect.stringContaining("cannot hand the job") });
    const h = await pool.run({ op: "hash", index: 1, buf: new ArrayBuffer(3), length: 3 });
    expect(h.op).toBe("hashed");
    const d = await pool.run({ op: "digest" });
    expect(d).toEqual({ op: "digest", sha256: createHash("sha256").update(new Uint8Array(3)).digest("hex") });
  } finally {
    pool.terminate();
  }
});

test("workers that are gone hear of no more arenas", () => {
  const s = new SharedSlots(4096, 1);
  const heard: number[] = [];
  const stop = s.shareWith((id) => heard.push(id));
  s.take();
  stop();
  s.take();
  expect(heard.length).toBe(1);
});

describe("the chunk worker on shared slots", () => {
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i += 4096) chunk.set(crypto.getRandomValues(new Uint8Array(512)), i);

  test("compress reads a slot and builds the frame in another; check reads it there and writes nothing back", async () => {
    const pool = new WorkerPool(2);
    const raws = new SharedSlots(chunk.length, 1);
    const frames = new SharedSlots(dataFrameSize(compressBound(chunk.length)), 1);
    pool.share(raws);
    pool.share(frames);
    try {
      pool.broadcast({ op: "level", level: 1 });
      const raw = raws.take();
      raw.set(chunk);
      const out = frames.take();
      const r = await pool.run({ op: "compress", index: 3, offset: 3 << 20, rawLength: chunk.length, raw: raws.ref(raw)!, out: frames.ref(out)!, digest: "sha256" });
      if (r.op !== "compressed") throw new Error(JSON.stringify(r));
      expect("frame" in r || "raw" in r).toBe(false); // built in the slot, nothing handed over
      expect(r.digest).toBe(createHash("sha256").update(chunk).digest("hex"));
      const z = out.subarray(DATA_PAYLOAD_AT, DATA_PAYLOAD_AT + r.compressedSize);
      const back = new Uint8Array(chunk.length);
      expect(new (zstd().DCtx)().decompress(back, z)).toBe(chunk.length);
      expect(Buffer.from(back).equals(Buffer.from(chunk))).toBe(true);
      // the other worker checks the frame where it lies
      const c = await pool.run({ op: "check", index: 3, rawLength: chunk.length, checksum: Bun.hash.xxHash3(chunk), buf: frames.ref(z)!, at: 0, length: z.length, hash: false, digest: "blake3", wantRaw: false }, [], 1);
      expect(c).toMatchObject({ op: "checked", ok: true, digest: chunkDigest(chunk, "blake3") });
      expect((c as { buf?: unknown }).buf).toBeUndefined();
      // a damaged byte in the slot is seen there
      z[z.length >> 1] ^= 0xff;
      const bad = await pool.run({ op: "check", index: 3, rawLength: chunk.length, checksum: Bun.hash.xxHash3(chunk), buf: frames.ref(z)!, at: 0, length: z.length, hash: false, digest: "blake3", wantRaw: false }, [], 0);
      expect(bad).toMatchObject({ op: "checked", ok: false });
    } finally {
      pool.terminate();
    }
  });

  test("the SHA-256 thread hashes slots in order and hands each back", async () => {
    const raws = new SharedSlots(chunk.length, 2);
    const back: unknown[] = [];
    const h = new Hasher((b) => back.push(b), raws);
    try {
      const want = createHash("sha256");
      for (let i = 0; i < 3; i++) {
        const v = raws.take();
        v.set(chunk);
        v[0] = i;
        want.update(v);
        await h.data(i, raws.ref(v)!, v.length);
      }
      const buf = new ArrayBuffer(10);
      new Uint8Array(buf).fill(9);
      want.update(new Uint8Array(buf));
      await h.data(3, buf, 10);
      expect(await h.digest()).toBe(want.digest("hex"));
      expect(back.length).toBe(4);
      expect(back.slice(0, 3).every((b) => typeof b === "object" && b !== null && "arena" in b)).toBe(true);
      expect(back[3]).toBeInstanceOf(ArrayBuffer); // the transferred one, handed back
    } finally {
      h.terminate();
    }
  });
});
