// Deterministic fuzzing of the used-block parsers: random bytes of the
// metadata of real images (superblock, group descriptors, bitmaps, GPT/MBR
// headers, swap header) are overwritten, and the read function is cut short,
// a few thousand times per module. Every call must return (an analysis or
// null) or throw DiskFormatError; the used map stays within the region; the
// bytes read stay bounded (no loop driven by a damaged field).
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeExt } from "../../src/disk/ext.ts";
import { analyzeSwap } from "../../src/disk/swap.ts";
import { identifyWhole } from "../../src/disk/signatures.ts";
import { readPartitionTable } from "../../src/disk/partitions.ts";
import { DiskFormatError, type FsAnalysis, type ReadAt } from "../../src/disk/types.ts";
import { rng as prng } from "../helpers/prng.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";

const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const dir = tempDir("tbb-fuzz-");
afterAll(() => cleanup(dir));

const ROUNDS = 2500;


interface Budget {
  bytes: number;
  calls: number;
}

function reader(img: Uint8Array, limit: number, budget: Budget): ReadAt {
  return (offset, length) => {
    budget.calls++;
    budget.bytes += length;
    if (offset < 0 || length < 0 || offset + length > limit) throw new RangeError("read past the end");
    return img.slice(offset, offset + length);
  };
}

function checkAnalysis(a: FsAnalysis | null, size: number): void {
  if (a === null) return;
  expect(["used-blocks", "whole", "header-only"]).toContain(a.method);
  expect(a.usedBytes).toBeGreaterThanOrEqual(0);
  expect(a.usedBytes).toBeLessThanOrEqual(size);
  if (a.method === "whole") expect(typeof a.reason).toBe("string");
  if (a.used) {
    expect(a.used.blockSize).toBeGreaterThan(0);
    expect(a.used.bitmap.length).toBe(Math.ceil(a.used.blocks / 8));
    // the map never covers more than the region (plus one partial block)
    expect((a.used.blocks - 1) * a.used.blockSize).toBeLessThan(size);
  }
}

/**
 * Runs `f` ROUNDS times on `img` with a few random bytes of `areas` overwritten
 * (restored after each round), and every 8th round a read function cut short.
 */
function fuzz(name: string, img: Uint8Array, areas: [number, number][], f: (read: ReadAt, size: number) => FsAnalysis | null | unknown, seed: number): { ok: number; whole: number; thrown: number } {
  const rnd = prng(seed);
  const counts = { ok: 0, whole: 0, thrown: 0 };
  const total = areas.reduce((s, [a, b]) => s + (b - a), 0);
  for (let round = 0; round < ROUNDS; round++) {
    const saved: [number, number][] = [];
    const flips = 1 + Math.floor(rnd() * 8);
    for (let k = 0; k < flips; k++) {
      let pos = Math.floor(rnd() * total);
      let off = 0;
      for (const [a, b] of areas) {
        if (pos < b - a) {
          off = a + pos;
          break;
        }
        pos -= b - a;
      }
      saved.push([off, img[off]!]);
      const kind = rnd();
      img[off] = kind < 0.4 ? img[off]! ^ (1 << Math.floor(rnd() * 8)) : kind < 0.7 ? Math.floor(rnd() * 256) : kind < 0.85 ? 0xff : 0;
    }
    const limit = round % 8 === 7 ? Math.floor(rnd() * img.length) : img.length;
    const budget = { bytes: 0, calls: 0 };
    try {
      const a = f(reader(img, limit, budget), img.length) as FsAnalysis | null;
      if (a && typeof a === "object" && "method" in a) {
        checkAnalysis(a, img.length);
        if (a.method === "whole") counts.whole++;
        else counts.ok++;
      } else counts.ok++;
    } catch (e) {
      if (!(e instanceof DiskFormatError)) throw new Error(`${name}, round ${round}: ${String(e)}`);
      counts.thrown++;
    }
    // a damaged field never makes a parser read more than the image a few times over
    expect(budget.bytes).toBeLessThanOrEqual(4 * img.length + 1024 * 1024);
    for (let k = saved.length - 1; k >= 0; k--) img[saved[k]![0]] = saved[k]![1];
  }
  console.log(`${name}: ${counts.ok} analysed, ${counts.whole} whole, ${counts.thrown} refused`);
  return counts;
}

/** The metadata of an ext image as dumpe2fs lists it: superblock, descriptors, bitmaps. */
function extAreas(img: string, blockSize: number): [number, number][] {
  const d = sh(`dumpe2fs ${img} 2>/dev/null`);
  const areas: [number, number][] = [[0, 2048]];
  for (const m of d.matchAll(/Group descriptors at (\d+)-(\d+)/g)) areas.push([Number(m[1]) * blockSize, (Number(m[2]) + 1) * blockSize]);
  for (const m of d.matchAll(/(Block|Inode) bitmap at (\d+)/g)) areas.push([Number(m[2]) * blockSize, (Number(m[2]) + 1) * blockSize]);
  return areas.slice(0, 40);
}

describe.skipIf(!has("mkfs.ext4") || !has("dumpe2fs"))("fuzz: ext (needs mkfs.ext4, dumpe2fs)", () => {
  for (const [name, opts, bs] of [
    ["ext4 metadata_csum 1K", "-t ext4 -b 1024", 1024],
    ["ext4 64bit 4K", "-t ext4 -b 4096 -O 64bit", 4096],
    ["ext4 no checksums", "-t ext4 -b 1024 -O ^metadata_csum,^uninit_bg", 1024],
    ["ext4 meta_bg bigalloc", "-t ext4 -b 4096 -O meta_bg,^resize_inode,bigalloc -C 16384", 4096],
  ] as const) {
    test(name, () => {
      const file = path.join(dir, "ext.img");
      sh(`rm -f ${file} && truncate -s 48M ${file} && mke2fs -q -F ${opts} -d ${path.join(import.meta.dir, "..", "helpers")} ${file}`);
      const img = new Uint8Array(fs.readFileSync(file));
      const c = fuzz(name, img, extAreas(file, bs), analyzeExt, 17);
      expect(c.ok + c.whole + c.thrown).toBe(ROUNDS);
    });
  }
});

describe.skipIf(!has("sfdisk"))("fuzz: partition tables (needs sfdisk)", () => {
  test("GPT", () => {
    const file = path.join(dir, "gpt.img");
    sh(`rm -f ${file} && truncate -s 8M ${file} && printf 'label: gpt\\nsize=2M\\nsize=2M\\n' | sfdisk -q ${file}`);
    const img = new Uint8Array(fs.readFileSync(file));
    const n = img.length;
    fuzz("GPT", img, [[0, 1024 + 512], [n - 33 * 512, n]], (r, s) => readPartitionTable(r, s, 512), 23);
  });
  test("MBR with logical partitions", () => {
    const file = path.join(dir, "mbr.img");
    sh(`rm -f ${file} && truncate -s 16M ${file} && printf 'label: dos\\nsize=2M\\ntype=5\\nsize=2M\\nsize=2M\\nsize=2M\\n' | sfdisk -q ${file}`);
    const img = new Uint8Array(fs.readFileSync(file));
    const ebrs = JSON.parse(sh(`sfdisk -J ${file}`)).partitiontable.partitions.slice(2).map((p: { start: number }) => [(p.start - 2048) * 512 + 446, (p.start - 2048) * 512 + 512] as [number, number]);
    fuzz("MBR", img, [[446, 512], ...ebrs], (r, s) => readPartitionTable(r, s, 512), 29);
  });
});

describe.skipIf(!has("mkswap"))("fuzz: swap and signatures (needs mkswap)", () => {
  test("swap header", () => {
    const file = path.join(dir, "swap.img");
    sh(`rm -f ${file} && truncate -s 4M ${file} && mkswap -L fuzz ${file} >/dev/null`);
    const img = new Uint8Array(fs.readFileSync(file));
    fuzz("swap", img, [[1024, 1600], [4086, 4096]], analyzeSwap, 31);
    fuzz("signatures", img, [[0, 8192], [128 * 1024, 128 * 1024 + 16]], identifyWhole, 37);
  });
});
