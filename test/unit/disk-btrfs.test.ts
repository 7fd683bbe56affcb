// analyzeBtrfs on real btrfs file systems (mkfs.btrfs over random bytes,
// filled through a loop mount): every extent btrfs-progs lists is in our map
// at each of its copies; a copy with everything our map calls unused zeroed
// passes `btrfs check --check-data-csum` and mounts with identical files.
// A log tree, more devices, RAID chunks and unknown features give "whole";
// damage gives "whole" or a thrown Error, never a crash or a hang.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { analyzeBtrfs } from "../../src/disk/btrfs.ts";
import type { FsAnalysis, ReadAt } from "../../src/disk/types.ts";
import { cleanup, tempDir } from "../helpers/cli.ts";
import { xorshift as prng } from "../helpers/prng.ts";
import { domainUsed } from "../helpers/usedmap.ts";

const have = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const TOOLS = ["mkfs.btrfs", "btrfs", "partclone.btrfs", "blkid"].filter((t) => !have(t));
const KERNEL = (() => {
  try {
    return /\bbtrfs\b/.test(readFileSync("/proc/filesystems", "utf8"));
  } catch {
    return false;
  }
})();
const SKIP = TOOLS.length > 0 || !KERNEL || process.getuid?.() !== 0;
if (SKIP) console.warn(`disk-btrfs tests skipped: ${TOOLS.length ? `missing ${TOOLS.join(", ")} (apt-get install btrfs-progs partclone)` : "needs root and the kernel's btrfs for loop mounts"}`);

function sh(cmd: string): string {
  const r = Bun.spawnSync(["bash", "-c", `set -o pipefail; ${cmd}`], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd} failed (${r.exitCode}): ${r.stderr.toString()}${r.stdout.toString()}`);
  return r.stdout.toString();
}

function memReader(img: Uint8Array, limit = img.length): ReadAt {
  return (off, len) => {
    if (off < 0 || len < 0 || off + len > limit) throw new Error(`read past the end (${off}+${len} of ${limit})`);
    return img.slice(off, off + len);
  };
}

function analyzeFile(file: string): FsAnalysis | null {
  const img = new Uint8Array(readFileSync(file));
  return analyzeBtrfs(memReader(img), img.length);
}

/** Loop-mounts, runs fn, always unmounts (the loop device goes with it). */
async function withMount<T>(img: string, dir: string, opts: string, fn: (mnt: string) => T | Promise<T>): Promise<T> {
  const mnt = path.join(dir, `mnt-${Math.random().toString(36).slice(2)}`);
  mkdirSync(mnt);
  sh(`mount -t btrfs -o loop${opts ? `,${opts}` : ""} '${img}' '${mnt}'`);
  try {
    return await fn(mnt);
  } finally {
    sh(`umount '${mnt}'`);
  }
}

function hashTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(path.relative(root, p), new Bun.CryptoHasher("sha256").update(readFileSync(p)).digest("hex"));
    }
  };
  walk(root);
  return out;
}


const CRC = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** Rewrites the crc32c of a superblock (4 KiB) or tree block at `off`. */
function resum(img: Uint8Array, off: number, len: number): void {
  let c = 0xffffffff;
  for (let i = off + 32; i < off + len; i++) c = CRC[(c ^ img[i]!) & 0xff]! ^ (c >>> 8);
  new DataView(img.buffer, img.byteOffset).setUint32(off, (c ^ 0xffffffff) >>> 0, true);
}

interface ChunkMap {
  logical: number;
  length: number;
  type: string;
  stripes: number[];
}

/** The chunk map as btrfs-progs prints it. */
function progsChunks(img: string): ChunkMap[] {
  const out: ChunkMap[] = [];
  for (const line of sh(`btrfs inspect-internal dump-tree -t chunk '${img}'`).split("\n")) {
    let m = /item \d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)/.exec(line);
    if (m) out.push({ logical: Number(m[1]), length: 0, type: "", stripes: [] });
    m = /^\s+length (\d+) owner \d+ stripe_len \d+ type (\S+)/.exec(line);
    if (m) Object.assign(out[out.length - 1]!, { length: Number(m[1]), type: m[2] });
    m = /^\s+stripe \d+ devid \d+ offset (\d+)/.exec(line);
    if (m) out[out.length - 1]!.stripes.push(Number(m[1]));
  }
  return out;
}

/** Every allocated extent (logical start, length) as btrfs-progs prints the extent tree. */
function progsExtents(img: string, nodeSize: number): [number, number][] {
  const out: [number, number][] = [];
  for (const line of sh(`btrfs inspect-internal dump-tree -t extent '${img}'`).split("\n")) {
    const m = /item \d+ key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)/.exec(line);
    if (m) out.push([Number(m[1]), m[2] === "EXTENT_ITEM" ? Number(m[3]) : nodeSize]);
  }
  return out;
}

function isUsed(a: FsAnalysis, byte: number): boolean {
  const u = a.used!;
  const i = Math.floor(byte / u.blockSize);
  if (i >= u.blocks) return true;
  return (u.bitmap[i >> 3]! & (1 << (i & 7))) !== 0;
}

interface Fixture {
  img: string;
  nodeSize: number;
  label: string;
  files: Map<string, string>;
}

describe.skipIf(SKIP)("btrfs used-block map", () => {
  let dir = "";
  const fx: Fixture[] = [];

  beforeAll(async () => {
    dir = tempDir("tbb-btrfs-");
    const kinds: [string, number, string][] = [
      ["-m dup -d single", 16384, "dup"],
      ["-m single -d single -n 65536", 65536, "single64k"],
      ["--mixed", 4096, "mixed"],
    ];
    for (const [opts, nodeSize, label] of kinds) {
      const img = path.join(dir, `${label}.img`);
      // random bytes first, and no discard: a wrong map keeps garbage or loses data visibly
      sh(`head -c 192M /dev/urandom > '${img}' && mkfs.btrfs -q -K -f -L ${label} ${opts} '${img}'`);
      const files = await withMount(img, dir, "", async (mnt) => {
        sh(`head -c 24M /dev/urandom > '${mnt}/big' && head -c 30M /dev/urandom > '${mnt}/deleted'`);
        mkdirSync(path.join(mnt, "dir"));
        for (let i = 0; i < 400; i++) writeFileSync(path.join(mnt, "dir", `f${i}`), `inline file ${i}\n`.repeat(1 + (i % 50)));
        sh(`btrfs subvolume create '${mnt}/sub' >/dev/null && head -c 5M /dev/urandom > '${mnt}/sub/data' && btrfs subvolume snapshot '${mnt}/sub' '${mnt}/snap' >/dev/null`);
        sh(`sync && rm '${mnt}/deleted' && head -c 3M /dev/urandom >> '${mnt}/snap/data' && head -c 20M /dev/urandom > '${mnt}/big2' && sync`);
        return hashTree(mnt);
      });
      fx.push({ img, nodeSize, label, files });
    }
  }, 300_000);

  afterAll(() => {
    if (dir) cleanup(dir);
  });

  test("label, UUID (the fsid, as blkid prints it) and a used map at the sector size", () => {
    for (const f of fx) {
      const a = analyzeFile(f.img)!;
      expect(a).toMatchObject({ fs: "btrfs", label: f.label, method: "used-blocks" });
      expect(a.reason).toBeUndefined();
      expect(a.uuid).toBe(sh(`blkid -o value -s UUID '${f.img}'`).trim());
      expect(a.used!.blockSize).toBe(4096);
      expect(a.usedBytes).toBeLessThan(a.size);
    }
  });

  test("every extent btrfs-progs lists is in our map at each copy; we keep no more than partclone.btrfs plus the first MiB", () => {
    for (const f of fx) {
      const a = analyzeFile(f.img)!;
      const chunks = progsChunks(f.img);
      expect(chunks.length).toBeGreaterThan(2);
      const extents = progsExtents(f.img, f.nodeSize);
      expect(extents.length).toBeGreaterThan(10);
      let copies = 0;
      for (const [start, len] of extents) {
        const c = chunks.find((x) => start >= x.logical && start + len <= x.logical + x.length);
        if (!c) throw new Error(`btrfs-progs lists extent ${start}+${len} outside every chunk`);
        for (const p of c.stripes) {
          copies++;
          for (let b = p + (start - c.logical); b < p + (start - c.logical) + len; b += 4096) {
            if (!isUsed(a, b)) throw new Error(`${f.label}: extent ${start}+${len} (${c.type}) at physical ${b} is not in our map`);
          }
        }
      }
      // DUP metadata: those extents are checked at both copies
      if (f.label === "dup") expect(copies).toBeGreaterThan(extents.length);
      // partclone.btrfs over-marks (64 KiB per tree block, file extents at their logical address), so it is
      // a referee only the other way round: what we keep, it keeps too, except the reserved first MiB
      const log = path.join(dir, `pc-${f.label}.log`);
      sh(`partclone.btrfs -D -s '${f.img}' -o '${log}' -L /dev/null`);
      const theirs = new Uint8Array(a.used!.blocks);
      let theirBytes = 0;
      for (const [pos, len] of domainUsed(readFileSync(log, "utf8"))) {
        theirBytes += len;
        for (let b = pos; b < pos + len; b += 4096) theirs[b / 4096] = 1;
      }
      // partclone.btrfs 0.3.23 also leaves out some second copies of DUP blocks: those count when their first copy is kept
      const firstCopy = (b: number): number | null => {
        for (const c of chunks) {
          const k = c.stripes.findIndex((p, j) => j > 0 && b * 4096 >= p && b * 4096 < p + c.length);
          if (k > 0) return (c.stripes[0]! + (b * 4096 - c.stripes[k]!)) / 4096;
        }
        return null;
      };
      const extra: number[] = [];
      for (let i = 256; i < a.used!.blocks; i++) {
        if (!(a.used!.bitmap[i >> 3]! & (1 << (i & 7))) || theirs[i]) continue;
        const first = firstCopy(i);
        if (first === null || !theirs[first]) extra.push(i);
      }
      expect(extra.map((b) => `block ${b} (${b * 4096})`)).toEqual([]);
      console.log(`btrfs ${f.label}: partclone keeps ${theirBytes} bytes, we keep ${a.usedBytes} of ${a.size}`);
    }
  }, 60_000);

  test("with everything our map calls unused zeroed, btrfs check --check-data-csum passes and every file reads back identical", async () => {
    for (const f of fx) {
      const img = new Uint8Array(readFileSync(f.img));
      const a = analyzeBtrfs(memReader(img), img.length)!;
      const u = a.used!;
      let zeroed = 0;
      for (let i = 0; i < u.blocks; i++) {
        if (!(u.bitmap[i >> 3]! & (1 << (i & 7)))) {
          img.fill(0, i * u.blockSize, (i + 1) * u.blockSize);
          zeroed++;
        }
      }
      expect(zeroed * 4096).toBeGreaterThan(40 << 20);
      const copy = path.join(dir, "zeroed.img");
      writeFileSync(copy, img);
      sh(`btrfs check --readonly --check-data-csum '${copy}'`);
      const got = await withMount(copy, dir, "ro", (mnt) => hashTree(mnt));
      expect(got).toEqual(f.files);
    }
  }, 120_000);

  /** The image with its primary superblock changed by `edit` (checksum rewritten). */
  function withSuper(f: Fixture, edit: (sb: DataView) => void): Uint8Array {
    const img = new Uint8Array(readFileSync(f.img));
    edit(new DataView(img.buffer, 0x10000, 4096));
    resum(img, 0x10000, 4096);
    return img;
  }

  test("a log tree to replay, a second device, a RAID chunk, unknown features or flags: whole, saying why", () => {
    const f = fx[0]!;
    const cases: [string, (sb: DataView) => void, string][] = [
      ["log tree", (sb) => sb.setBigUint64(0x60, 0x1234000n, true), "log tree"],
      ["two devices", (sb) => sb.setBigUint64(0x88, 2n, true), "2 devices"],
      ["unknown incompat", (sb) => sb.setBigUint64(0xbc, sb.getBigUint64(0xbc, true) | 0x2000n, true), "incompat features 0x2000"],
      ["xxhash", (sb) => sb.setUint16(0xc4, 1, true), "checksum type 1"],
      ["error flag", (sb) => sb.setBigUint64(0x38, sb.getBigUint64(0x38, true) | 4n, true), "superblock flags 0x4"],
      ["unknown compat_ro", (sb) => sb.setBigUint64(0xb4, sb.getBigUint64(0xb4, true) | 0x100n, true), "read-only compatible features 0x100"],
      // the first system chunk in sys_chunk_array: type RAID1
      ["RAID1 chunk", (sb) => sb.setBigUint64(0x32b + 17 + 24, 2n | 16n, true), "RAID profile"],
    ];
    for (const [name, edit, reason] of cases) {
      const img = withSuper(f, edit);
      const a = analyzeBtrfs(memReader(img), img.length)!;
      expect({ name, method: a.method, usedBytes: a.usedBytes }).toEqual({ name, method: "whole", usedBytes: img.length });
      expect(a.reason).toContain(reason);
      expect(a.label).toBe(f.label);
    }
  });

  test("a file system caught right after an fsync (its log tree not yet replayed) is imaged whole", async () => {
    const copy = path.join(dir, "fsync.img");
    const caught = path.join(dir, "caught.img");
    sh(`cp --sparse=always '${fx[0]!.img}' '${copy}'`);
    // a long commit interval: the fsync goes to the log tree, and the copy is taken before any commit
    await withMount(copy, dir, "commit=300", (mnt) => {
      sh(`dd if=/dev/urandom of='${mnt}/fsynced' bs=4k count=10 conv=fsync status=none && cp --sparse=always '${copy}' '${caught}'`);
    });
    expect(sh(`btrfs inspect-internal dump-super '${caught}'`)).toMatch(/^log_root\s+[1-9]/m);
    const a = analyzeFile(caught)!;
    expect(a.method).toBe("whole");
    expect(a.reason).toContain("log tree holds fsynced changes");
    expect(analyzeFile(copy)!.method).toBe("used-blocks");
  }, 60_000);

  test("damage: a bad superblock checksum, a tree block with a bad checksum, a truncated image: whole", () => {
    const f = fx[0]!;
    const img = new Uint8Array(readFileSync(f.img));
    img[0x10000 + 0x100]! ^= 1;
    expect(analyzeBtrfs(memReader(img), img.length)!.reason).toBe("btrfs: superblock: bad checksum");
    img[0x10000 + 0x100]! ^= 1;
    // the extent tree's root block, both copies
    const chunks = progsChunks(f.img);
    const root = /^(?:node|leaf) (\d+) /m.exec(sh(`btrfs inspect-internal dump-tree -t extent '${f.img}'`).slice(0, 1000));
    const logical = Number(root?.[1]);
    expect(logical).toBeGreaterThan(0);
    const c = chunks.find((x) => logical >= x.logical && logical < x.logical + x.length)!;
    for (const p of c.stripes) img[p + (logical - c.logical) + 200]! ^= 0xff;
    const a = analyzeBtrfs(memReader(img), img.length)!;
    expect(a.method).toBe("whole");
    expect(a.reason).toBe(`btrfs: extent tree: tree block ${logical} has a bad checksum`);
    const small = analyzeBtrfs(memReader(img), 64 << 20)!;
    expect(small.reason).toContain("larger than its partition");
    const cut = analyzeBtrfs(memReader(img, 32 << 20), img.length)!;
    expect(cut.method).toBe("whole");
    expect(cut.reason).toContain("read past the end");
    expect(analyzeBtrfs(memReader(new Uint8Array(1 << 20)), 1 << 20)).toBeNull();
  });

  test("fuzz: byte flips in the superblock and in tree blocks, checksums rewritten so the parsers see them, and truncated reads: never a crash", () => {
    for (const f of fx) {
      const img = new Uint8Array(readFileSync(f.img));
      const chunks = progsChunks(f.img).filter((c) => !c.type.startsWith("DATA") || c.type.includes("METADATA"));
      // tree blocks in use: the chunk, root and extent trees' blocks among them
      const nodes: number[] = [];
      for (const [start] of progsExtents(f.img, f.nodeSize).filter(([, len]) => len === f.nodeSize)) {
        const c = chunks.find((x) => start >= x.logical && start < x.logical + x.length);
        if (c) nodes.push(c.stripes[0]! + (start - c.logical));
      }
      expect(nodes.length).toBeGreaterThan(3);
      const rnd = prng(f.nodeSize);
      let whole = 0;
      let used = 0;
      let thrown = 0;
      for (let i = 0; i < 1000; i++) {
        const inSuper = rnd() % 3 === 0;
        const base = inSuper ? 0x10000 : nodes[rnd() % nodes.length]!;
        const len = inSuper ? 4096 : f.nodeSize;
        const saved = img.slice(base, base + len);
        const flips = 1 + (rnd() % 6);
        for (let k = 0; k < flips; k++) {
          // mostly the header and item headers, where the numbers are
          const at = rnd() % 2 ? rnd() % Math.min(len, 1024) : rnd() % len;
          img[base + at] = rnd() & 0xff;
        }
        if (rnd() % 8) resum(img, base, len);
        const limit = rnd() % 10 === 0 ? rnd() % img.length : img.length;
        try {
          const a = analyzeBtrfs(memReader(img, limit), img.length);
          if (a?.method === "whole") {
            whole++;
            expect(a.usedBytes).toBe(img.length);
            expect(a.reason).toBeTruthy();
          } else if (a) {
            used++;
            const u = a.used!;
            expect(u.blocks * u.blockSize).toBeLessThanOrEqual(img.length);
            expect(u.bitmap.length).toBe(Math.ceil(u.blocks / 8));
          }
        } catch (e) {
          if (!(e instanceof Error) || e instanceof TypeError || e instanceof RangeError) throw e;
          thrown++;
        }
        img.set(saved, base);
      }
      console.log(`fuzz btrfs ${f.label}: ${used} used-blocks, ${whole} whole, ${thrown} thrown`);
      expect(whole).toBeGreaterThan(0);
      expect(used).toBeGreaterThan(0);
    }
  }, 60_000);
});

