// analyzeDisk's byte-range answers (usedRanges, zeroUnused, unused) against a
// byte-by-byte reference on random used maps, partitions at odd offsets and a
// map shorter than its partition; a parser that throws makes its partition
// whole; layoutFrom keeps only well-typed fields of a peer's layout.
import { describe, expect, test } from "bun:test";
import { analyzeDisk, analyzeRegion, planQueries, usedRanges, zeroUnused, type DiskPlan } from "../../src/disk/analyze.ts";
import { DiskFormatError, countUsed, markBlocks, newUsedBlocks, type FsAnalysis, type UsedBlocks } from "../../src/disk/types.ts";
import { layoutFrom } from "../../src/protocol/messages.ts";

function rnd(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a * 1664525 + 1013904223) >>> 0;
    return a / 4294967296;
  };
}

/** Blocks used at random, or (`runs`) in runs of used and free blocks, as file systems have them: whole map bytes of 0x00 and 0xff. */
function randomMap(r: () => number, blockSize: number, blocks: number, runs = false): UsedBlocks {
  const u = newUsedBlocks(blockSize, blocks);
  let used = false;
  let left = 0;
  for (let i = 0; i < blocks; i++) {
    if (runs && left-- <= 0) [used, left] = [!used, Math.floor(r() * 40)];
    if (runs ? used : r() < 0.3) u.bitmap[i >> 3]! |= 1 << (i & 7);
  }
  return u;
}

function plan(size: number, parts: { start: number; length: number; used?: UsedBlocks; method?: FsAnalysis["method"] }[]): DiskPlan {
  return {
    size,
    table: { type: "gpt", sectorSize: 512, partitions: [] },
    parts: parts.map((p, i) => ({
      partition: { index: i + 1, start: p.start, length: p.length, type: "" },
      analysis: { fs: "test", method: p.method ?? "used-blocks", used: p.used, usedBytes: 0, size: p.length },
    })),
    outsideBytes: 0,
    usedBytes: 0,
  };
}

/** byte-level reference: is byte `b` of the disk kept? */
function keptRef(p: DiskPlan, b: number): boolean {
  for (const { partition: q, analysis: a } of p.parts) {
    if (b < q.start || b >= q.start + q.length) continue;
    if (a.method === "whole" || !a.used) return true;
    const i = Math.floor((b - q.start) / a.used.blockSize);
    return i >= a.used.blocks || (a.used.bitmap[i >> 3]! & (1 << (i & 7))) !== 0;
  }
  return true;
}

describe("used ranges of a plan", () => {
  test("a file system of more than 2^31 blocks (8 TiB at 4 KiB): its blocks past 2^31 are found used, not taken for free", () => {
    const blocks = 2 ** 31 + 64;
    const u = newUsedBlocks(4096, blocks);
    const at = 2 ** 31 + 9; // past what a 32-bit shift can index
    markBlocks(u, at, at + 3);
    expect(countUsed(u)).toBe(3);
    const size = blocks * 4096;
    const p = plan(size, [{ start: 0, length: size, used: u }]);
    const chunk = Math.floor((at * 4096) / 1048576) * 1048576;
    expect(usedRanges(p, chunk, size - chunk)).toEqual([[at * 4096, (at + 3) * 4096]]); // (the disk ends inside this chunk)
    expect(planQueries(p).unused(0, 1048576)).toBe(true);
    // the same bytes 2^32 blocks earlier (where a wrapped index would land) stay free
    expect(usedRanges(p, (at - 2 ** 31) * 4096 - 4096, 65536)).toEqual([]);
  });

  test("match a byte-by-byte reference on random maps", () => {
    const r = rnd(5);
    for (let round = 0; round < 80; round++) {
      const size = 256 * 1024;
      const bs = [512, 1024, 4096][Math.floor(r() * 3)]!;
      const runs = round >= 40;
      // three partitions at sector (not block) offsets; the second's map stops short of its end
      const p = plan(size, [
        { start: 3 * 512, length: 40 * 1024, used: randomMap(r, bs, Math.floor((40 * 1024) / bs), runs) },
        { start: 64 * 1024 + 512, length: 70 * 1024, used: randomMap(r, bs, Math.floor((50 * 1024) / bs), runs) },
        { start: 150 * 1024, length: 60 * 1024, method: round % 2 ? "whole" : "used-blocks", used: randomMap(r, bs, Math.floor((60 * 1024) / bs), runs) },
      ]);
      const q = planQueries(p);
      const disk = new Uint8Array(size).fill(0xaa);
      for (let k = 0; k < 30; k++) {
        const off = Math.floor(r() * size);
        const len = 1 + Math.floor(r() * Math.min(size - off, 20000));
        const ranges = usedRanges(p, off, len);
        const kept = new Uint8Array(len);
        let last = off;
        for (const [a, b] of ranges) {
          expect(a).toBeGreaterThanOrEqual(last);
          expect(b).toBeGreaterThan(a);
          expect(b).toBeLessThanOrEqual(off + len);
          kept.fill(1, a - off, b - off);
          last = b;
        }
        for (let i = 0; i < len; i++) if ((kept[i] === 1) !== keptRef(p, off + i)) throw new Error(`byte ${off + i}: ${kept[i]} vs reference, round ${round}`);
        expect(q.unused(off, len)).toBe(ranges.length === 0);
        const buf = disk.slice(off, off + len);
        zeroUnused(p, buf, off);
        for (let i = 0; i < len; i++) if (buf[i] !== (keptRef(p, off + i) ? 0xaa : 0)) throw new Error(`zeroUnused byte ${off + i}`);
      }
    }
  });

  test("a parser that throws makes its partition whole, with the reason; no table: one region", () => {
    const thrower = () => {
      throw new DiskFormatError("bitmap unreadable");
    };
    const bug = () => {
      throw new TypeError("boom");
    };
    const read = (o: number, l: number) => new Uint8Array(l).fill(o === 0 ? 0 : 0);
    expect(analyzeRegion(read, 1 << 20, [thrower])).toMatchObject({ method: "whole", reason: "bitmap unreadable", usedBytes: 1 << 20 });
    expect(analyzeRegion(read, 1 << 20, [bug])).toMatchObject({ method: "whole", reason: expect.stringContaining("boom") });
    const oversized = (): FsAnalysis => ({ fs: "x", method: "used-blocks", used: newUsedBlocks(4096, 1024), usedBytes: 0, size: 0 });
    expect(analyzeRegion(read, 1 << 20, [oversized])).toMatchObject({ method: "whole", reason: "analysis inconsistent with the partition" });
    const d = analyzeDisk(read, 1 << 20, 512, undefined, [thrower]);
    expect(d.table.type).toBe("none");
    expect(d.parts).toHaveLength(1);
    expect(d.usedBytes).toBe(1 << 20);
  });
});

describe("layoutFrom (a peer's layout)", () => {
  const good = { table: "gpt", sectorSize: 512, partitions: [{ index: 1, start: 1048576, length: 2097152, type: "x", fs: "ext4", method: "used-blocks", usedBytes: 4096, label: "root", extra: "dropped" }], outsideBytes: 1, usedBytes: 4097 };
  test("keeps known fields, drops others", () => {
    const l = layoutFrom(good)!;
    expect(l.partitions[0]).toEqual({ index: 1, start: 1048576, length: 2097152, type: "x", fs: "ext4", label: "root", method: "used-blocks", usedBytes: 4096 });
  });
  test("refuses what is not a layout", () => {
    for (const bad of [null, 7, "x", { ...good, table: "zfs" }, { ...good, partitions: [{ ...good.partitions[0], start: -1 }] }, { ...good, partitions: [{ ...good.partitions[0], method: "all" }] }, { ...good, partitions: new Array(300).fill(good.partitions[0]) }, { ...good, usedBytes: 1e300 }])
      expect(layoutFrom(bad)).toBeUndefined();
    expect(layoutFrom({ ...good, note: "n".repeat(10000) })!.note!.length).toBe(256);
  });
});

describe("a container over an old file system (review finding: an md member's data was zeroed)", () => {
  test("an md superblock at 4 KiB wins over an ext4 superblock left at 1 KiB: the partition is imaged whole", () => {
    const { mkdtempSync, rmSync, readFileSync } = require("node:fs") as typeof import("node:fs");
    const d = mkdtempSync("/tmp/tbb-md-");
    try {
      const img = `${d}/ext.img`;
      expect(Bun.spawnSync(["bash", "-c", `truncate -s 32M ${img} && mkfs.ext4 -q -F ${img}`]).exitCode).toBe(0);
      const data = new Uint8Array(readFileSync(img));
      const read = (o: number, n: number) => data.subarray(o, o + n);
      expect(analyzeRegion(read, data.length).method).toBe("used-blocks");
      new DataView(data.buffer).setUint32(4096, 0xa92b4efc, true); // md 1.2 magic
      const a = analyzeRegion(read, data.length);
      expect(a.method).toBe("whole");
      expect(a.fs).toBe("linux_raid_member");
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
