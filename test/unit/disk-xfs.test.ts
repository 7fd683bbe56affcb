// src/disk/xfs.ts against real XFS file systems: mkfs.xfs on image files (v5
// and v4, four AGs), filled through a loop mount with files, a deleted random
// file leaving garbage in free space. Referees: partclone.xfs's domain log
// (every block it keeps must be in our map), and a copy with every block our
// map calls unused zeroed (xfs_repair -n clean, every file equal). Then a
// dirty log, damaged structures and a deterministic fuzz loop.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeXfs } from "../../src/disk/xfs.ts";
import { type FsAnalysis, type UsedBlocks, countUsed } from "../../src/disk/types.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";
import { type ImageReader, compareWithPartclone, domainUsed, imageReader, isUsed, patched, rng, subsetOf, zeroUnused } from "../helpers/usedmap.ts";

const have = (cmd: string): boolean => Bun.spawnSync(["bash", "-c", `command -v ${cmd}`]).exitCode === 0;
const missing = ["mkfs.xfs", "xfs_repair", "xfs_io", "partclone.xfs", "losetup"].filter((c) => !have(c));
const isRoot = process.getuid?.() === 0;
const xfsInKernel = Bun.spawnSync(["bash", "-c", "grep -qw xfs /proc/filesystems || modprobe -n xfs"]).exitCode === 0;
const canMount = isRoot && missing.length === 0 && xfsInKernel;
const skipWhy = missing.length ? `missing ${missing.join(", ")}` : !isRoot ? "needs root for loop mounts" : "kernel cannot mount xfs";

const MiB = 1024 * 1024;
let dir = "";
const mounts: string[] = [];

const readers = new Map<string, ImageReader>();

/** analyzeXfs over an image file (its pages cached across calls), with optional patched bytes, failing reads past `limit`, a smaller size. */
function analyze(img: string, patches?: Map<number, number>, limit?: number, size?: number, short = false): FsAnalysis | null {
  let r = readers.get(img);
  if (!r) readers.set(img, (r = imageReader(img)));
  return analyzeXfs(patched(r.read, patches, limit, short), size ?? r.size);
}

function forget(img: string): void {
  readers.get(img)?.close();
  readers.delete(img);
}

function mount(img: string, at: string, opts: string): void {
  fs.mkdirSync(at, { recursive: true });
  sh(`mount -o loop,${opts} ${img} ${at}`);
  mounts.push(at);
}

function umount(at: string): void {
  sh(`umount ${at}`);
  mounts.splice(mounts.indexOf(at), 1);
}

/** sha256 of every file under a mount point, sorted by path. */
function sums(at: string): string {
  return sh(`cd ${at} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum`);
}

/** An image file (300 MiB unless told) that starts full of non-zero bytes, so a block wrongly called unused shows when zeroed. */
function garbageImage(img: string, mib = 300): void {
  sh(`yes "old data, not zeros" | head -c ${mib * MiB} > ${img}`);
}

/**
 * v5: mkfs.xfs (no discard, so old bytes stay), then files through a loop
 * mount, a big random file written and deleted; returns the files' sums.
 */
function makeXfsV5(img: string, label: string, opts = "", mib = 300): string {
  garbageImage(img, mib);
  sh(`mkfs.xfs -q -f -K -d agcount=4 -L ${label} ${opts} ${img} 2>&1`);
  const m = path.join(dir, "m-" + path.basename(img));
  mount(img, m, "rw");
  try {
    sh(`set -e; cd ${m}; mkdir -p a/b c; head -c 60M /dev/urandom > big; sync;
      for i in $(seq 1 40); do head -c $((i * 37000)) /dev/urandom > a/f$i; done;
      for i in $(seq 1 300); do echo "small file $i" > a/b/s$i; done;
      seq 1 200000 > c/numbers; ln -s ../c/numbers a/link; ln c/numbers c/hard;
      rm big; for i in $(seq 1 40 3); do rm a/f$i; done; sync;
      head -c 9M /dev/urandom > c/after-delete`);
    return sums(m);
  } finally {
    umount(m);
  }
}

/**
 * v4: this kernel (like newer ones) cannot mount v4 XFS, so mkfs.xfs fills it
 * from a proto file: random files, many small ones, a directory tree.
 */
function makeXfsV4(img: string): void {
  const tree = path.join(dir, "v4-tree");
  sh(`set -e; mkdir -p ${tree}/b; for i in $(seq 1 40); do head -c $((i * 37000)) /dev/urandom > ${tree}/f$i; done;
    for i in $(seq 1 300); do echo "small file $i" > ${tree}/b/s$i; done; seq 1 200000 > ${tree}/numbers`);
  const lines = ["/dev/null", "0 0", "d--755 0 0"];
  for (let i = 1; i <= 40; i++) lines.push(`f${i} ---644 0 0 ${tree}/f${i}`);
  lines.push(`numbers ---644 0 0 ${tree}/numbers`, "b d--755 0 0");
  for (let i = 1; i <= 300; i++) lines.push(`s${i} ---644 0 0 ${tree}/b/s${i}`);
  lines.push("$", "$", "");
  const proto = path.join(dir, "v4.proto");
  fs.writeFileSync(proto, lines.join("\n"));
  garbageImage(img);
  sh(`mkfs.xfs -q -f -K -m crc=0 -d agcount=4 -L tbbv4 -p ${proto} ${img} 2>&1`);
}

/** Bytes in blocks the map calls unused that are not zero: proof the test image has something to lose. */
function garbageInUnused(img: string, u: UsedBlocks): number {
  const fd = fs.openSync(img, "r");
  const b = new Uint8Array(u.blockSize);
  let n = 0;
  try {
    for (let i = 0; i < u.blocks; i++) {
      if (isUsed(u, i)) continue;
      fs.readSync(fd, b, 0, u.blockSize, i * u.blockSize);
      if (b.some((x) => x !== 0)) n += u.blockSize;
    }
  } finally {
    fs.closeSync(fd);
  }
  return n;
}

/** The internal log's cycle numbers, read by the test itself: the first block's, and the head (after the last block of the highest cycle). */
function logCycles(img: string): { first: number; head: number; blocks: number; start: number } {
  const fd = fs.openSync(img, "r");
  const sb = Buffer.alloc(512);
  fs.readSync(fd, sb, 0, 512, 0);
  const bs = sb.readUInt32BE(4);
  const agBlocks = sb.readUInt32BE(84);
  const agBlkLog = sb[124]!;
  const fsb = Number(sb.readBigUInt64BE(48));
  const blocks = (sb.readUInt32BE(96) * bs) / 512;
  const b = Buffer.alloc(blocks * 512);
  const start = (Math.floor(fsb / 2 ** agBlkLog) * agBlocks + (fsb % 2 ** agBlkLog)) * bs;
  fs.readSync(fd, b, 0, b.length, start);
  fs.closeSync(fd);
  const cycle = (i: number): number => {
    const o = i * 512;
    return b.readUInt32BE(o) === 0xfeedbabe ? b.readUInt32BE(o + 4) : b.readUInt32BE(o);
  };
  let max = 0;
  let head = 0;
  for (let i = 0; i < blocks; i++) {
    const c = cycle(i);
    if (c > max) max = c;
    if (c === max) head = i + 1;
  }
  return { first: cycle(0), head, blocks, start };
}

function be32(img: string, off: number): number {
  const b = Buffer.alloc(4);
  const fd = fs.openSync(img, "r");
  fs.readSync(fd, b, 0, 4, off);
  fs.closeSync(fd);
  return b.readUInt32BE(0);
}

describe.skipIf(!canMount)(`XFS used blocks${canMount ? "" : ` (skipped: ${skipWhy})`}`, () => {
  const img: Record<"v5" | "v4" | "v5-4k", { file: string; sums: string; a: FsAnalysis }> = {} as never;

  beforeAll(() => {
    dir = tempDir("tbb-xfs-");
    for (const v of ["v5", "v4", "v5-4k"] as const) {
      const file = path.join(dir, `${v}.img`);
      const s = v === "v5" ? makeXfsV5(file, "tbbv5") : v === "v5-4k" ? makeXfsV5(file, "tbbv5-4k", "-s size=4096 -d size=81917b", 320) : (makeXfsV4(file), "");
      img[v] = { file, sums: s, a: analyze(file)! };
    }
  });

  afterAll(() => {
    for (const f of [...readers.keys()]) forget(f);
    for (const m of [...mounts].reverse()) Bun.spawnSync(["umount", m]);
    if (dir) cleanup(dir);
  });

  test("not XFS: null", () => {
    const f = path.join(dir, "zeros.img");
    fs.writeFileSync(f, new Uint8Array(MiB));
    expect(analyze(f)).toBeNull();
    forget(f);
  });

  for (const v of ["v5", "v4", "v5-4k"] as const) {
    test(`${v}: label, UUID, used map at the block size`, () => {
      const { a, file } = img[v];
      expect(a.method).toBe("used-blocks");
      expect(a.fs).toBe("xfs");
      expect(a.label).toBe(`tbb${v}`);
      expect(a.uuid).toBe(sh(`blkid -o value -s UUID ${file}`).trim());
      expect(a.used!.blockSize).toBe(4096);
      // v5-4k: 3 blocks short of its 320 MiB partition, so its last AG is 3 blocks shorter; the 12 KiB after it are imaged.
      expect(a.used!.blocks).toBe(v === "v5-4k" ? (320 * MiB) / 4096 - 3 : (300 * MiB) / 4096);
      expect(a.usedBytes).toBe(countUsed(a.used!) * 4096 + (a.size - a.used!.blocks * 4096));
      expect(a.usedBytes).toBeLessThan(a.size / 2);
    });

    test(`${v}: every block partclone.xfs keeps is in the map`, () => {
      const { a, file } = img[v];
      const log = path.join(dir, `${v}.domain`);
      sh(`partclone.xfs -q -D -s ${file} -o ${log} -L ${dir}/partclone-${v}.log >/dev/null 2>&1`);
      const cmp = compareWithPartclone(a.used!, domainUsed(fs.readFileSync(log, "utf8")), a.size);
      console.log(`xfs ${v}: partclone keeps ${(a.usedBytes - cmp.extra) / MiB} MiB, we keep ${a.usedBytes / MiB} MiB (${cmp.extra / 1024} KiB more)`);
      expect(cmp.missing).toBe(0);
    });

    test(`${v}: with every unused block zeroed, xfs_repair -n is clean${v === "v5" ? " and every file is equal" : " (the kernel cannot mount v4 to compare files)"}`, () => {
      const { a, file, sums: want } = img[v];
      expect(garbageInUnused(file, a.used!)).toBeGreaterThan(10 * MiB);
      const copy = path.join(dir, `${v}-zeroed.img`);
      zeroUnused(file, copy, a.used!);
      sh(`xfs_repair -n ${copy} 2>&1`);
      if (v === "v4") return fs.rmSync(copy);
      const m = path.join(dir, `m-${v}-zeroed`);
      mount(copy, m, "ro,nouuid");
      try {
        expect(sums(m)).toBe(want);
      } finally {
        umount(m);
      }
      fs.rmSync(copy);
    });
  }

  test("a log that needs recovery: whole; after a mount replays it, used blocks again", () => {
    const f = path.join(dir, "dirty.img");
    fs.copyFileSync(img.v5.file, f);
    const m = path.join(dir, "m-dirty");
    mount(f, m, "rw,nouuid");
    try {
      sh(`head -c 3M /dev/urandom > ${m}/new; rm ${m}/c/numbers; sync; xfs_io -x -c shutdown ${m}`);
    } finally {
      umount(m);
    }
    const a = analyze(f)!;
    forget(f);
    expect(a.method).toBe("whole");
    expect(a.reason).toMatch(/log needs recovery/);
    expect(a.usedBytes).toBe(a.size);
    // xfs_repair agrees that the log holds changes.
    const rep = Bun.spawnSync(["xfs_repair", "-n", f], { stderr: "pipe", stdout: "pipe" });
    expect(rep.stderr.toString() + rep.stdout.toString()).toMatch(/metadata changes in a log/);
    mount(f, m, "rw,nouuid");
    umount(m);
    expect(analyze(f)!.method).toBe("used-blocks");
    forget(f);
    fs.rmSync(f);
  });

  test("a log that has wrapped round (the head found by binary search): clean gives used blocks, dirty gives whole", () => {
    const f = path.join(dir, "wrapped.img");
    fs.copyFileSync(img.v5.file, f);
    const m = path.join(dir, "m-wrapped");
    mount(f, m, "rw,nouuid");
    try {
      // Each round logs about a tenth of the 64 MiB log; go on until the log's first block has the second cycle, and a bit more.
      for (let round = 0; round < 30 && logCycles(f).first < 2; round++) sh(`cd ${m} && mkdir d && (cd d && seq 1 20000 | xargs touch) && rm -rf d && sync`);
      sh(`cd ${m} && mkdir d && (cd d && seq 1 20000 | xargs touch) && rm -rf d`);
    } finally {
      umount(m);
    }
    const log = logCycles(f);
    expect(log.first).toBeGreaterThan(1);
    expect(log.head).toBeGreaterThan(0);
    expect(log.head).toBeLessThan(log.blocks - 8192);
    const r = imageReader(f);
    let bytesRead = 0;
    const a = analyzeXfs((o, l) => ((bytesRead += l), r.read(o, l)), r.size)!;
    r.close();
    expect(a.method).toBe("used-blocks");
    // The log head is found without reading the 64 MiB log whole.
    expect(bytesRead).toBeLessThan(16 * MiB);
    const cmp = compareWithPartclone(a.used!, domainUsed(sh(`partclone.xfs -q -D -s ${f} -o - -L ${dir}/partclone-wrapped.log 2>/dev/null`)), a.size);
    expect(cmp.missing).toBe(0);
    mount(f, m, "rw,nouuid");
    try {
      sh(`cd ${m} && mkdir e && (cd e && seq 1 3000 | xargs touch) && sync && xfs_io -x -c shutdown ${m}`);
    } finally {
      umount(m);
    }
    expect(logCycles(f).first).toBe(log.first);
    const dirty = analyze(f)!;
    forget(f);
    expect(dirty.method).toBe("whole");
    expect(dirty.reason).toMatch(/log needs recovery/);
    fs.rmSync(f);
  });

  test("damage: AGF, free-space btree, superblock fields, a short partition: whole, never a crash", () => {
    for (const v of ["v5", "v4"] as const) {
      const { file, a } = img[v];
      const agBytes = (a.size / 4) | 0; // four AGs of equal size here
      const bnoRoot = be32(file, agBytes + 512 + 16); // AG 1's by-block btree root
      const rootByte = agBytes + bnoRoot * 4096;
      const leafHdr = v === "v5" ? 56 : 16;
      const cases: [string, Map<number, number>, RegExp][] = [
        ["AGF magic", new Map([[2 * agBytes + 512, 0]]), /AGF magic/],
        ["AGF free-space root outside the AG", new Map([[agBytes + 512 + 16, 0xff]]), v === "v5" ? /checksum/ : /out of range/],
        ["btree record length", new Map([[rootByte + leafHdr + 4, 0x7f]]), v === "v5" ? /checksum/ : /out of order or out of range|free blocks/],
        ["btree level", new Map([[rootByte + 5, 3]]), v === "v5" ? /checksum|level/ : /level/],
        ["superblock AG count", new Map([[88, 0x7f]]), v === "v5" ? /checksum/ : /AG count|AGs of/],
        ["superblock block size", new Map([[6, 0x11]]), /block size/],
      ];
      for (const [what, patches, reason] of cases) {
        const r = analyze(file, patches)!;
        expect({ what, v, method: r.method }).toEqual({ what, v, method: "whole" });
        expect(r.reason).toMatch(reason);
      }
      // A partition shorter than the file system, and a device whose reads fail half way.
      expect(analyze(file, undefined, undefined, a.size - 4096)!.reason).toMatch(/larger than its partition/);
      const cut = analyze(file, undefined, a.size / 2)!;
      expect(cut.method).toBe("whole");
      expect(cut.reason).toMatch(/cannot read/);
    }
  });

  test("fuzz: byte flips in the superblock, AGFs, AGFLs, btree roots and the log, and short reads, always end in a result; with v5 checksums a used map never loses a block", () => {
    for (const v of ["v5", "v4"] as const) {
      const { file, a } = img[v];
      const agBytes = a.size / 4;
      const regions: [number, number][] = [[0, 512]];
      for (let ag = 0; ag < 4; ag++) {
        regions.push([ag * agBytes + 512, 512], [ag * agBytes + 1536, 512]);
        regions.push([ag * agBytes + be32(file, ag * agBytes + 512 + 16) * 4096, 4096]);
      }
      // Somewhere in file data and free space of AG 3: flips there change nothing.
      regions.push([3 * agBytes + 8 * MiB, 8 * MiB]);
      // The log's first blocks and the blocks before its head (the newest record): a clean log may turn unknown or dirty, never a crash.
      const log = logCycles(file);
      regions.push([log.start, 4096], [log.start + Math.max(0, log.head - 8) * 512, 8 * 512]);
      const rand = rng(v === "v5" ? 17 : 29);
      let whole = 0;
      let used = 0;
      let lost = 0;
      const rounds = 2000;
      for (let i = 0; i < rounds; i++) {
        const patches = new Map<number, number>();
        const flips = 1 + Math.floor(rand() * 4);
        for (let k = 0; k < flips; k++) {
          const [start, len] = regions[Math.floor(rand() * regions.length)]!;
          const off = start + Math.floor(rand() * len);
          patches.set(off, readers.get(file)!.read(off, 1)[0]! ^ (1 + Math.floor(rand() * 255)));
        }
        // Every tenth round a device that ends early, every tenth another whose reads come back short there.
        const limit = i % 5 === 0 ? Math.floor(rand() * a.size) : undefined;
        const r = analyze(file, patches, limit, undefined, i % 10 === 5);
        if (r === null) continue;
        if (r.method === "whole") {
          whole++;
          expect(r.usedBytes).toBe(r.size);
          continue;
        }
        used++;
        expect(r.method).toBe("used-blocks");
        if (v === "v5") expect(subsetOf(a.used!, r.used!)).toBe(true);
        else if (!subsetOf(a.used!, r.used!)) lost++;
      }
      console.log(`xfs ${v} fuzz: ${rounds} rounds, ${whole} whole, ${used} used-blocks${v === "v4" ? ` (${lost} of them miss a block)` : ""}`);
      expect(whole).toBeGreaterThan(v === "v5" ? rounds / 2 : rounds / 10);
      // v4 has no checksums: the cross-checks (record order, AG bounds, the AGF's free count) caught every flip that would have cost a block, with this seed.
      expect(lost).toBe(0);
      expect(used).toBeGreaterThan(0);
    }
  });
});
