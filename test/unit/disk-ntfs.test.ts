// analyzeNtfs on real NTFS volumes (mkfs.ntfs, filled through an ntfs-3g
// mount): every cluster partclone.ntfs keeps is in our map, and a copy with
// every cluster our map calls unused zeroed still mounts and reads back
// identical. Dirty, unclean-$LogFile and hibernated volumes are imaged whole;
// damaged ones give "whole" or a thrown Error, never a crash or a hang.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, statSync, writeFileSync, writeSync } from "node:fs";
import * as path from "node:path";
import { analyzeNtfs } from "../../src/disk/ntfs.ts";
import type { FsAnalysis, ReadAt } from "../../src/disk/types.ts";
import { cleanup, tempDir } from "../helpers/cli.ts";
import { xorshift as prng } from "../helpers/prng.ts";
import { domainUsed } from "../helpers/usedmap.ts";

const have = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const TOOLS = ["mkfs.ntfs", "ntfs-3g", "partclone.ntfs", "ntfsfix", "ntfsinfo"].filter((t) => !have(t));
const NO_FUSE = !statSync("/dev/fuse", { throwIfNoEntry: false }) || process.getuid?.() !== 0;
const SKIP = TOOLS.length > 0 || NO_FUSE;
if (SKIP) console.warn(`disk-ntfs tests skipped: ${TOOLS.length ? `missing ${TOOLS.join(", ")} (apt-get install ntfs-3g partclone)` : "needs root and /dev/fuse for ntfs-3g mounts"}`);

function sh(cmd: string): string {
  const r = Bun.spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd} failed (${r.exitCode}): ${r.stderr.toString()}${r.stdout.toString()}`);
  return r.stdout.toString();
}

function fileReader(file: string): { read: ReadAt; size: number; close: () => void } {
  const fd = openSync(file, "r");
  const size = statSync(file).size;
  const read: ReadAt = (off, len) => {
    if (off < 0 || off + len > size) throw new Error(`read past the end (${off}+${len} of ${size})`);
    const b = new Uint8Array(len);
    if (readSync(fd, b, 0, len, off) !== len) throw new Error("short read");
    return b;
  };
  return { read, size, close: () => closeSync(fd) };
}

function analyzeFile(file: string): FsAnalysis | null {
  const f = fileReader(file);
  try {
    return analyzeNtfs(f.read, f.size);
  } finally {
    f.close();
  }
}

function memReader(img: Uint8Array, limit = img.length): ReadAt {
  return (off, len) => {
    if (off < 0 || len < 0 || off + len > limit) throw new Error(`read past the end (${off}+${len} of ${limit})`);
    return img.slice(off, off + len);
  };
}

/** Mounts with ntfs-3g, runs fn, always unmounts. */
async function withMount<T>(img: string, dir: string, opts: string, fn: (mnt: string) => T | Promise<T>): Promise<T> {
  const mnt = path.join(dir, `mnt-${Math.random().toString(36).slice(2)}`);
  mkdirSync(mnt);
  sh(`ntfs-3g ${opts ? `-o ${opts}` : ""} '${img}' '${mnt}'`);
  try {
    return await fn(mnt);
  } finally {
    sh(`umount '${mnt}' || fusermount -u '${mnt}'`);
  }
}

/** Tries an ntfs-3g mount on a fresh mount point (the referee); unmounts it again if it worked. */
function tryMount(img: string, dir: string, opts: string[]): { code: number; stderr: string; ro: boolean } {
  const mnt = path.join(dir, `ref-${Math.random().toString(36).slice(2)}`);
  mkdirSync(mnt);
  const r = Bun.spawnSync(["ntfs-3g", ...opts, img, mnt], { stdout: "pipe", stderr: "pipe" });
  const line = r.exitCode === 0 ? sh(`grep ' ${mnt} ' /proc/mounts || true`) : "";
  if (line) sh(`umount '${mnt}' || fusermount -u '${mnt}'`);
  return { code: r.exitCode, stderr: r.stderr.toString(), ro: /\bro\b/.test(line.split(" ")[3] ?? "") };
}


function bytes(n: number, seed: number): Uint8Array {
  const r = prng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const v = r();
    b[i] = v;
    b[i + 1] = v >> 8;
    b[i + 2] = v >> 16;
    b[i + 3] = v >> 24;
  }
  return b;
}

/** Every file under root, relative path -> SHA-256. */
function hashTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(root, p), new Bun.CryptoHasher("sha256").update(readFileSync(p)).digest("hex"));
    }
  };
  walk(root);
  return out;
}

/** Fills a mounted volume: resident and large files, a fragmented pair, many small files, deleted random data. */
function fill(mnt: string, seed: number, rootFiles: number): void {
  writeFileSync(path.join(mnt, "tiny.txt"), "resident data lives in the MFT record\n");
  writeFileSync(path.join(mnt, "big.bin"), bytes(6 << 20, seed));
  mkdirSync(path.join(mnt, "dir/sub"), { recursive: true });
  writeFileSync(path.join(mnt, "dir/sub/mid.bin"), bytes(300_000, seed + 1));
  // deleted data: the clusters keep random bytes the map must call unused
  writeFileSync(path.join(mnt, "deleted.bin"), bytes(12 << 20, seed + 2));
  // two files appended in turns, so each is fragmented
  const a = openSync(path.join(mnt, "frag-a.bin"), "w");
  const b = openSync(path.join(mnt, "frag-b.bin"), "w");
  for (let i = 0; i < 40; i++) {
    writeSync(a, bytes(64 * 1024, seed + 100 + i));
    writeSync(b, bytes(48 * 1024, seed + 200 + i));
  }
  closeSync(a);
  closeSync(b);
  // many small files: the MFT grows past its first extent
  mkdirSync(path.join(mnt, "many"));
  for (let i = 0; i < 1500; i++) writeFileSync(path.join(mnt, "many", `f${i}.txt`), `file ${i} `.repeat(1 + (i % 200)));
  for (let i = 0; i < rootFiles; i++) writeFileSync(path.join(mnt, `root-${i}.txt`), `root file ${i}\n`);
  sh(`sync; rm '${path.join(mnt, "deleted.bin")}'`);
}

interface Fixture {
  img: string;
  clusterSize: number;
  sectorSize: number;
  files: Map<string, string>;
}

/** Reads MFT record n from a fresh volume (records 0..15 lie in $MFT's first run), fixups applied. */
function rawRecord(img: Uint8Array, n: number): { off: number; rec: Uint8Array } {
  const dv = new DataView(img.buffer, img.byteOffset);
  const bps = dv.getUint16(0x0b, true);
  const spcRaw = img[0x0d]!;
  const cs = bps * (spcRaw > 128 ? 2 ** (256 - spcRaw) : spcRaw);
  const cpr = dv.getInt8(0x40);
  const rs = cpr > 0 ? cpr * cs : 2 ** -cpr;
  const off = Number(dv.getBigUint64(0x30, true)) * cs + n * rs;
  const rec = img.slice(off, off + rs);
  const usaOfs = rec[4]! | (rec[5]! << 8);
  for (let i = 1; i <= rs / 512; i++) {
    rec[i * 512 - 2] = rec[usaOfs + 2 * i]!;
    rec[i * 512 - 1] = rec[usaOfs + 2 * i + 1]!;
  }
  return { off, rec };
}

/** Writes a (modified, fixed-up) record back, protecting it again with its USN. */
function putRecord(img: Uint8Array, off: number, rec: Uint8Array): void {
  const usaOfs = rec[4]! | (rec[5]! << 8);
  const out = rec.slice();
  for (let i = 1; i <= rec.length / 512; i++) {
    out[usaOfs + 2 * i] = rec[i * 512 - 2]!;
    out[usaOfs + 2 * i + 1] = rec[i * 512 - 1]!;
    out[i * 512 - 2] = rec[usaOfs]!;
    out[i * 512 - 1] = rec[usaOfs + 1]!;
  }
  img.set(out, off);
}

/** Offset of the first attribute of `type` in a fixed-up record. */
function attrOffset(rec: Uint8Array, type: number): number {
  const dv = new DataView(rec.buffer, rec.byteOffset);
  for (let off = dv.getUint16(0x14, true); off < rec.length; off += dv.getUint32(off + 4, true)) {
    const t = dv.getUint32(off, true);
    if (t === type) return off;
    if (t === 0xffffffff) break;
  }
  throw new Error(`attribute 0x${type.toString(16)} not found`);
}

/** Byte offset on the volume of a non-resident attribute's first run. */
function firstRunOffset(img: Uint8Array, rec: Uint8Array, type: number): number {
  const a = attrOffset(rec, type);
  const mp = a + (rec[a + 0x20]! | (rec[a + 0x21]! << 8));
  const h = rec[mp]!;
  const lb = h & 15;
  const ob = h >> 4;
  let lcn = 0;
  for (let i = ob - 1; i >= 0; i--) lcn = lcn * 256 + rec[mp + 1 + lb + i]!;
  const dv = new DataView(img.buffer, img.byteOffset);
  const spcRaw = img[0x0d]!;
  return lcn * dv.getUint16(0x0b, true) * (spcRaw > 128 ? 2 ** (256 - spcRaw) : spcRaw);
}

function u32le(b: Uint8Array, o: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(o, true);
}

function isUsed(a: FsAnalysis, byte: number): boolean {
  const u = a.used!;
  const i = Math.floor(byte / u.blockSize);
  if (i >= u.blocks) return true;
  return (u.bitmap[i >> 3]! & (1 << (i & 7))) !== 0;
}

describe.skipIf(SKIP)("NTFS used-block map", () => {
  let dir = "";
  const fx: Fixture[] = [];

  beforeAll(async () => {
    dir = tempDir("tbb-ntfs-");
    for (const [i, [mib, cs, ss]] of ([[96, 4096, 512], [96, 65536, 512], [64, 512, 512], [64, 8192, 4096]] as const).entries()) {
      const img = path.join(dir, `c${cs}.img`);
      sh(`truncate -s ${mib}M '${img}' && mkfs.ntfs -F -f -Q -s ${ss} -c ${cs} -L 'Vol ${cs}' '${img}'`);
      const files = await withMount(img, dir, "", (mnt) => {
        fill(mnt, 1000 * (i + 1), i === 0 ? 400 : 3);
        return hashTree(mnt);
      });
      fx.push({ img, clusterSize: cs, sectorSize: ss, files });
    }
    // fragmented: the volume filled with 64 KiB files, every other one deleted, then a
    // 20 MiB hiberfil.sys (header zeros) written into the holes: its $DATA spreads over
    // MFT records through an attribute list
    const img = path.join(dir, "frag.img");
    sh(`truncate -s 64M '${img}' && mkfs.ntfs -F -f -Q -L Frag '${img}'`);
    const files = await withMount(img, dir, "", (mnt) => {
      let n = 0;
      try {
        for (; n < 4000; n++) writeFileSync(path.join(mnt, `s${n}`), bytes(65536, n));
      } catch {
        // full
      }
      for (let i = 0; i < n; i += 2) sh(`rm '${path.join(mnt, `s${i}`)}'`);
      const hib = bytes(20 << 20, 7);
      hib.fill(0, 0, 4096);
      writeFileSync(path.join(mnt, "hiberfil.sys"), hib);
      return hashTree(mnt);
    });
    expect(sh(`ntfsinfo -v -F hiberfil.sys '${img}'`)).toContain("$ATTRIBUTE_LIST");
    fx.push({ img, clusterSize: 4096, sectorSize: 512, files });
  }, 300_000);

  afterAll(() => {
    if (dir) cleanup(dir);
  });

  const named = (file: string): Fixture => fx.find((f) => path.basename(f.img) === file)!;

  test("label, UUID (the serial, as blkid prints it) and a used map at the cluster size", () => {
    for (const f of fx) {
      const a = analyzeFile(f.img)!;
      expect(a.fs).toBe("ntfs");
      expect(a.reason).toBeUndefined();
      expect(a.method).toBe("used-blocks");
      expect(a.label).toBe(f.img.endsWith("frag.img") ? "Frag" : `Vol ${f.clusterSize}`);
      if (f.sectorSize === 4096) expect(sh(`ntfsinfo -m '${f.img}'`)).toContain("MFT Record Size: 4096");
      expect(a.uuid).toBe(sh(`blkid -o value -s UUID '${f.img}'`).trim());
      expect(a.used!.blockSize).toBe(f.clusterSize);
      expect(a.used!.blocks).toBe(Math.floor((a.size - f.sectorSize) / f.clusterSize));
    }
  });

  test("every block partclone.ntfs keeps is in our map; the backup boot sector past the last cluster is imaged", () => {
    for (const f of fx) {
      const a = analyzeFile(f.img)!;
      const log = path.join(dir, `pc-${path.basename(f.img)}.log`);
      sh(`partclone.ntfs -D -s '${f.img}' -o '${log}' -L /dev/null`);
      let theirs = 0;
      for (const [pos, len] of domainUsed(readFileSync(log, "utf8"))) {
        theirs += len;
        for (let b = pos; b < pos + len; b += 512) if (!isUsed(a, b)) throw new Error(`partclone keeps byte ${b} of ${f.img}, our map does not`);
      }
      expect(theirs).toBeGreaterThan(0);
      expect(isUsed(a, a.size - 512)).toBe(true);
      // and not much more: the tail past the last cluster, $MFTMirr's cluster, the boot area
      expect(a.usedBytes - theirs).toBeLessThanOrEqual(a.size - a.used!.blocks * f.clusterSize + 4 * Math.max(f.clusterSize, 8192));
      console.log(`cluster ${f.clusterSize}: partclone keeps ${theirs} bytes, we keep ${a.usedBytes} (${a.usedBytes - theirs} more) of ${a.size}`);
    }
  });

  test("with every cluster our map calls unused zeroed, ntfsfix finds nothing to do and every file reads back identical", async () => {
    for (const f of fx) {
      const a = analyzeFile(f.img)!;
      const img = new Uint8Array(readFileSync(f.img));
      const cs = a.used!.blockSize;
      let zeroed = 0;
      for (let i = 0; i < a.used!.blocks; i++) {
        if (!(a.used!.bitmap[i >> 3]! & (1 << (i & 7)))) {
          img.fill(0, i * cs, (i + 1) * cs);
          zeroed++;
        }
      }
      expect(zeroed).toBeGreaterThan(0);
      const copy = path.join(dir, "zeroed.img");
      writeFileSync(copy, img);
      sh(`ntfsfix -n '${copy}'`);
      const got = await withMount(copy, dir, "ro", (mnt) => hashTree(mnt));
      expect(got).toEqual(f.files);
    }
  }, 120_000);

  test("a volume marked dirty is imaged whole", () => {
    const f = fx[0]!;
    const img = new Uint8Array(readFileSync(f.img));
    const { off, rec } = rawRecord(img, 3);
    const vi = attrOffset(rec, 0x70);
    const voff = vi + (rec[vi + 0x14]! | (rec[vi + 0x15]! << 8));
    rec[voff + 10]! |= 1;
    putRecord(img, off, rec);
    // $MFTMirr holds a copy of records 0-3; ntfs-3g compares them
    const dv = new DataView(img.buffer);
    const cs = f.clusterSize;
    putRecord(img, Number(dv.getBigUint64(0x38, true)) * cs + 3 * rec.length, rec);
    const copy = path.join(dir, "dirty.img");
    writeFileSync(copy, img);
    // the referee: ntfs-3g's tools refuse a volume scheduled for check
    expect(() => sh(`ntfsinfo -m '${copy}'`)).toThrow("Volume is scheduled for check");
    const a = analyzeFile(copy)!;
    expect(a).toMatchObject({ fs: "ntfs", method: "whole", reason: "volume marked dirty (run chkdsk)", usedBytes: a.size });
  });

  test("an unclean $LogFile gives whole; a clean restart page gives the used map", async () => {
    const f = fx[0]!;
    const img = new Uint8Array(readFileSync(f.img));
    const { rec } = rawRecord(img, 2);
    const log = firstRunOffset(img, rec, 0x80);
    const size = u32le(rec, attrOffset(rec, 0x80) + 0x30); // $LogFile's data size
    // a restart page as Windows writes it (logfile.h), with valid fixups so ntfs-3g reads it
    const page = (clean: boolean) => {
      const p = new Uint8Array(4096);
      const dv = new DataView(p.buffer);
      p.set(new TextEncoder().encode("RSTR"), 0);
      dv.setUint16(4, 0x1e, true); // usa offset
      dv.setUint16(6, 9, true); // usa count: 8 strides + the USN
      dv.setUint32(16, 4096, true); // system page size
      dv.setUint32(20, 4096, true); // log page size
      dv.setUint16(24, 0x30, true); // restart area offset
      dv.setInt16(26, 1, true);
      dv.setInt16(28, 1, true);
      const ra = 0x30;
      dv.setBigInt64(ra, 0x12345n, true); // current LSN
      dv.setUint16(ra + 8, 1, true); // log clients
      dv.setUint16(ra + 10, 0xffff, true); // free list: none
      dv.setUint16(ra + 12, 0, true); // in use: client 0
      dv.setUint16(ra + 14, clean ? 2 : 0, true); // flags: volume is clean
      dv.setUint32(ra + 16, 67 - size.toString(2).length, true); // sequence number bits: 67 - bits of the file size
      dv.setUint16(ra + 20, 0x30 + 0xa0, true); // restart area length
      dv.setUint16(ra + 22, 0x30, true); // client array offset
      dv.setBigInt64(ra + 24, BigInt(size), true); // file size
      dv.setUint32(ra + 32, 0, true);
      dv.setUint16(ra + 36, 0x30, true); // log record header length
      dv.setUint16(ra + 38, 0x40, true); // log page data offset
      const client = ra + 0x30;
      dv.setUint16(client + 16, 0xffff, true); // prev
      dv.setUint16(client + 18, 0xffff, true); // next
      dv.setUint32(client + 28, 8, true);
      p.set(new Uint8Array([78, 0, 84, 0, 70, 0, 83, 0]), client + 32); // "NTFS"
      // fixups: every stride ends in the USN (1), the saved bytes (0) go in the array
      dv.setUint16(0x1e, 1, true);
      for (let i = 1; i <= 8; i++) dv.setUint16(i * 512 - 2, 1, true);
      return p;
    };
    for (const clean of [false, true]) {
      img.set(page(clean), log);
      img.set(page(clean), log + 4096);
      const copy = path.join(dir, "log.img");
      writeFileSync(copy, img);
      const a = analyzeFile(copy)!;
      // the referee: without "recover", ntfs-3g mounts an unclean volume read-only only
      const ref = tryMount(copy, dir, ["-o", "norecover"]);
      expect(ref.code).toBe(0);
      if (clean) {
        expect(a.method).toBe("used-blocks");
        expect(ref).toMatchObject({ ro: false });
      } else {
        expect(a.method).toBe("whole");
        expect(a.reason).toContain("$LogFile holds changes");
        expect(ref.stderr).toContain("unsafe state");
        expect(ref.ro).toBe(true);
      }
    }
  });

  test("hiberfil.sys starting with HIBR (Windows hibernated or fast-started) gives whole; one starting with zeros does not", async () => {
    // the root directories are large indexes (index blocks); fx[0]'s, with 400 extra files, has many
    for (const f of [fx[0]!, fx[1]!]) {
      const idx = sh(`ntfsinfo -v -i 5 '${f.img}'`);
      expect(idx).toContain("$INDEX_ALLOCATION");
      for (const head of ["\0\0\0\0", "HIBR", "hibr"]) {
        const copy = path.join(dir, "hib.img");
        sh(`cp --sparse=always '${f.img}' '${copy}'`);
        await withMount(copy, dir, "", (mnt) => {
          const data = new Uint8Array(64 * 1024);
          data.set(new TextEncoder().encode(head));
          writeFileSync(path.join(mnt, "hiberfil.sys"), data);
        });
        const a = analyzeFile(copy)!;
        if (head === "\0\0\0\0") expect(a.method).toBe("used-blocks");
        else {
          expect(a.method).toBe("whole");
          expect(a.reason).toContain("hibernated");
          // the referee: ntfs-3g mounts it read-only only, saying why
          const ref = tryMount(copy, dir, []);
          expect(ref.stderr).toContain("hibernated");
          expect(ref.code !== 0 || ref.ro).toBe(true);
        }
      }
    }
  }, 60_000);

  test("a fragmented hiberfil.sys is followed through its attribute list: HIBR at its start gives whole", () => {
    const f = named("frag.img");
    expect(analyzeFile(f.img)!.method).toBe("used-blocks");
    const copy = path.join(dir, "frag-hib.img");
    sh(`cp --sparse=always '${f.img}' '${copy}'`);
    // the first cluster of hiberfil.sys, as ntfs-3g's ntfsinfo reports it
    const runs = sh(`ntfsinfo -v -F hiberfil.sys '${copy}'`);
    const m = /Dumping attribute \$DATA[\s\S]*?Runlist:\s+VCN\s+LCN\s+Length\s+0x0\s+0x([0-9a-f]+)/i.exec(runs);
    expect(m).not.toBeNull();
    const fd = openSync(copy, "r+");
    writeSync(fd, new TextEncoder().encode("HIBR"), 0, 4, parseInt(m![1]!, 16) * 4096);
    closeSync(fd);
    const a = analyzeFile(copy)!;
    expect(a.method).toBe("whole");
    expect(a.reason).toContain("hibernated");
    expect(tryMount(copy, dir, []).stderr).toContain("hibernated");
  });

  test("an MFT record with a bad update sequence gives whole with the reason", () => {
    const img = new Uint8Array(readFileSync(fx[0]!.img));
    const { off } = rawRecord(img, 6);
    img[off + 510]! ^= 0xff;
    const a = analyzeNtfs(memReader(img), img.length)!;
    expect(a.method).toBe("whole");
    expect(a.reason).toBe("MFT record 6: update sequence mismatch in sector 0 (a torn or damaged write)");
  });

  test("a $Bitmap runlist that points past the volume gives whole", () => {
    const img = new Uint8Array(readFileSync(fx[0]!.img));
    const { off, rec } = rawRecord(img, 6);
    const a0 = attrOffset(rec, 0x80);
    const mp = a0 + (rec[a0 + 0x20]! | (rec[a0 + 0x21]! << 8));
    const lb = rec[mp]! & 15;
    const ob = rec[mp]! >> 4;
    rec[mp + lb + ob] = 0x7f; // the top byte of the first LCN
    putRecord(img, off, rec);
    const a = analyzeNtfs(memReader(img), img.length)!;
    expect(a.method).toBe("whole");
    expect(a.reason).toContain("$Bitmap: a run points past the volume");
  });

  test("a truncated image: the partition smaller than the boot sector says, or reads that fail", () => {
    const img = new Uint8Array(readFileSync(fx[0]!.img));
    const small = analyzeNtfs(memReader(img), img.length - 4096)!;
    expect(small.method).toBe("whole");
    expect(small.reason).toContain("larger than its partition");
    const cut = analyzeNtfs(memReader(img, 1 << 20), img.length)!;
    expect(cut.method).toBe("whole");
    expect(cut.reason).toContain("read past the end");
    expect(analyzeNtfs(memReader(img), 100)).toBeNull();
  });

  test("not NTFS: null", () => {
    expect(analyzeNtfs(memReader(new Uint8Array(1 << 20)), 1 << 20)).toBeNull();
  });

  test("fuzz: thousands of byte flips in the boot sector, MFT records, $LogFile, root index and $Bitmap, and truncated reads, never crash", () => {
    for (const f of [named("c4096.img"), named("c512.img"), named("frag.img"), named("c8192.img")]) {
      const img = new Uint8Array(readFileSync(f.img));
      const { off: mft, rec: r0 } = rawRecord(img, 0);
      const areas: [number, number][] = [
        [0, 512],
        [mft, 16 * r0.length],
        [firstRunOffset(img, rawRecord(img, 2).rec, 0x80), 8192],
        [firstRunOffset(img, rawRecord(img, 6).rec, 0x80), 4096],
      ];
      const root = rawRecord(img, 5).rec;
      try {
        areas.push([firstRunOffset(img, root, 0xa0), 8192]);
      } catch {
        // no index allocation: the root index is in the MFT record
      }
      const rnd = prng(f.clusterSize + img.length);
      let whole = 0;
      let used = 0;
      let thrown = 0;
      for (let i = 0; i < 1200; i++) {
        const [start, len] = areas[rnd() % areas.length]!;
        const flips = 1 + (rnd() % 4);
        const saved: [number, number][] = [];
        for (let k = 0; k < flips; k++) {
          const at = start + (rnd() % len);
          saved.push([at, img[at]!]);
          img[at] = rnd() & 0xff;
        }
        const limit = rnd() % 8 === 0 ? rnd() % img.length : img.length;
        try {
          const a = analyzeNtfs(memReader(img, limit), img.length);
          if (a) {
            if (a.method === "whole") {
              whole++;
              expect(a.usedBytes).toBe(img.length);
              expect(a.reason).toBeTruthy();
            } else {
              used++;
              const u = a.used!;
              expect(u.blocks * u.blockSize).toBeLessThanOrEqual(img.length);
              expect(u.bitmap.length).toBe(Math.ceil(u.blocks / 8));
              expect(a.usedBytes).toBeLessThanOrEqual(img.length);
            }
          }
        } catch (e) {
          if (!(e instanceof Error) || e instanceof TypeError || e instanceof RangeError) throw e;
          thrown++;
        }
        for (const [at, v] of saved.reverse()) img[at] = v;
      }
      console.log(`fuzz ${path.basename(f.img)}: ${used} used-blocks, ${whole} whole, ${thrown} thrown`);
      expect(whole).toBeGreaterThan(0);
      expect(used).toBeGreaterThan(0);
    }
  }, 60_000);
});
