// Shared frames in the store (docs/FORMAT.md §3.5, README "Incremental
// backups and delta restore"): on a btrfs and on an XFS made with reflink=1,
// each on a loop device, a second push of a disk that changed by a few MiB
// shares almost all its image's blocks with the first (FICLONERANGE), the
// file system grows by little more than the change, every image alone is the
// whole disk for `zstd -dc` and `tbbackup verify`, and deleting the first
// leaves the second whole. On ext4 (a loop device too) nothing is padded:
// the image is laid out as before. Run with the compiled binary over a unix
// socket.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, randomImage, run, sh, start, storeBackup, tempDir, waitFor, zstdSha, sha256File } from "../helpers/cli.ts";
import { startProxy } from "../helpers/proxy.ts";
import { ImageReader } from "../../src/store/image-reader.ts";
import { zstd } from "../../src/util/zstd.ts";

const MiB = 1024 * 1024;
const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const canLoop = process.getuid?.() === 0 && has("losetup") && fs.existsSync("/dev/loop-control");

let dir: string;
/** the disk pushed, and a copy of it as first pushed */
let disk: string;
let first: string;
/** bytes changed between the two pushes */
const CHANGED = 3 * MiB;

/** 40 MiB: a chunk of zeros every fifth, a compressible chunk (a small frame) every fifth, random data in the rest (1 MiB frames) */
function makeDisk(file: string): void {
  const buf = Buffer.alloc(40 * MiB);
  for (let i = 0; i < 40; i++) {
    const c = buf.subarray(i * MiB, (i + 1) * MiB);
    if (i % 5 === 0) continue;
    if (i % 5 === 1) {
      // text with some random words: a frame of a few KiB to tens of KiB
      const words = new Uint8Array(4096);
      crypto.getRandomValues(words);
      for (let at = 0; at < c.length; at += 64) c.write(`chunk ${i} line ${at} ${words[(at / 64) % 4096]}\n`.padEnd(64, "."), at, "latin1");
      continue;
    }
    for (let at = 0; at < c.length; at += 65536) crypto.getRandomValues(c.subarray(at, at + 65536));
  }
  fs.writeFileSync(file, buf);
}

beforeAll(() => {
  dir = tempDir("tbb-reflink-");
  disk = path.join(dir, "disk.img");
  makeDisk(disk);
  first = path.join(dir, "first.img");
  fs.copyFileSync(disk, first);
});
afterAll(() => cleanup(dir));

/** Bytes in use on the file system holding `p`, after everything is written out. */
function used(p: string): number {
  sh("sync");
  const s = fs.statfsSync(p);
  return (Number(s.blocks) - Number(s.bfree)) * Number(s.bsize);
}

/** Bytes of `file` in extents that FIEMAP marks shared, and its bytes in all extents (filefrag -v, in its block size). */
function sharedExtents(file: string): { shared: number; total: number } {
  const out = sh(`filefrag -v ${JSON.stringify(file)}`);
  const bs = Number(/blocksize of (\d+) bytes/.exec(out)?.[1] ?? 4096);
  let shared = 0;
  let total = 0;
  for (const line of out.split("\n")) {
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):/.exec(line);
    if (!m) continue;
    total += Number(m[1]) * bs;
    if (/\bshared\b/.test(line)) shared += Number(m[1]) * bs;
  }
  return { shared, total };
}

const manifest = (d: string) => JSON.parse(fs.readFileSync(path.join(d, "manifest.json"), "utf8"));
const sameFile = (a: string, b: string) => sh(`cmp ${a} ${b} >/dev/null && echo same || echo differ`).trim();

/** The complete backups of disk.img under a store, oldest first. */
function backups(out: string): string[] {
  const parent = path.join(out, fs.readdirSync(out)[0]!, "disk.img");
  return fs.readdirSync(parent).sort().map((n) => path.join(parent, n));
}

/** A file system made by `mkfs` on a fresh loop device, mounted for `body`; unmounted and detached after. */
async function withLoopFs<T>(name: string, mkfs: string, body: (mnt: string) => Promise<T>): Promise<T> {
  const file = path.join(dir, `${name}.fs`);
  const mnt = path.join(dir, `${name}.mnt`);
  fs.mkdirSync(mnt);
  sh(`truncate -s 400M ${file}`);
  const loop = sh(`losetup -f --show ${file}`).trim();
  let mounted = false;
  try {
    sh(`${mkfs} ${loop} >/dev/null 2>&1`);
    sh(`mount ${loop} ${mnt}`);
    mounted = true;
    return await body(mnt);
  } finally {
    if (mounted) Bun.spawnSync(["umount", mnt]);
    Bun.spawnSync(["losetup", "-d", loop]);
    fs.rmSync(file, { force: true });
  }
}

/** Two pushes into a store on `mnt`: the disk, then the disk with CHANGED bytes rewritten. */
async function twoPushes(mnt: string, tag: string) {
  const out = path.join(mnt, "store");
  fs.copyFileSync(first, disk);
  const u0 = used(mnt);
  await storeBackup(disk, out, path.join(dir, `${tag}-1.sock`), ["--all-blocks"]);
  const u1 = used(mnt);
  // rewrite 3 MiB across chunk boundaries (chunks 7..10), among data
  const fd = fs.openSync(disk, "r+");
  const rnd = Buffer.alloc(CHANGED);
  for (let at = 0; at < rnd.length; at += 65536) crypto.getRandomValues(rnd.subarray(at, at + 65536));
  fs.writeSync(fd, rnd, 0, rnd.length, 7 * MiB + 12345);
  fs.closeSync(fd);
  const sock = path.join(dir, `${tag}-2.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "receiver socket");
  const p = await run(["push", disk, "--stream", `unix:${sock}`, "--all-blocks"]);
  const r = await finish(recv);
  expect(p.code, p.stderr).toBe(0);
  expect(r.code, r.stderr).toBe(0);
  const u2 = used(mnt);
  const [a, b] = backups(out);
  return { out, a: a!, b: b!, grewFirst: u1 - u0, grewSecond: u2 - u1, log: r.stderr };
}

/** What every store must show, whatever its file system does: each image alone is its disk, checks, and outlives the other. */
async function checkWhole(a: string, b: string) {
  sh(`zstd -dcq ${a}/image.zst > ${dir}/a.raw && zstd -dcq ${b}/image.zst > ${dir}/b.raw`);
  expect(sameFile(`${dir}/a.raw`, first)).toBe("same");
  expect(sameFile(`${dir}/b.raw`, disk)).toBe("same");
  sh(`zstd -tq ${a}/image.zst && zstd -tq ${b}/image.zst`);
  for (const d of [a, b]) {
    const v = await run(["verify", d]);
    expect(v.code, v.stderr).toBe(0);
  }
}

/** Deletes the first backup: the second, which shares its blocks, still verifies and restores. */
async function deleteFirst(out: string, a: string, b: string, tag: string) {
  const before = used(out);
  const del = await run(["delete", path.relative(out, a), "--out", out]);
  expect(del.code, del.stderr).toBe(0);
  expect(fs.existsSync(a)).toBe(false);
  // (XFS frees an unlinked file's blocks in the background, in a few seconds at
  // most; btrfs keeps an extent while any part of it is used, and the second
  // image shares most of the first's extents: it frees next to nothing)
  let freed = 0;
  for (let i = 0; i < 50 && (freed = before - used(out)) < 1024 * 1024; i++) await Bun.sleep(100);
  console.log(`${tag}: deleting the first backup freed ${freed} bytes`);
  const v = await run(["verify", b]);
  expect(v.code, v.stderr).toBe(0);
  const t = path.join(dir, `restored-${tag}.img`);
  const rs = await run(["restore", t, "--from", b, "--yes"]);
  expect(rs.code, rs.stderr).toBe(0);
  expect(sameFile(t, disk)).toBe("same");
}

/** Every large frame starts on a block, and every entry holding one ends on a block; the padding is what readers leave off. */
function checkAligned(image: string, align: number): { padded: number; frames: number } {
  const r = ImageReader.open(image);
  let padded = 0;
  try {
    for (let i = 0; i < r.entries.length; i++) {
      const entry = r.readEntry(i);
      const frame = r.readFrame(i);
      expect(zstd().findFrameCompressedSize(entry)).toBe(frame.length);
      padded += entry.length - frame.length;
      if (frame.length >= align) {
        expect(r.offsets[i]! % align).toBe(0);
        expect((r.offsets[i]! + entry.length) % align).toBe(0);
      }
    }
    return { padded, frames: r.entries.length };
  } finally {
    r.close();
  }
}

describe.skipIf(!canLoop || !has("mkfs.btrfs") || !has("filefrag"))("a store on btrfs", () => {
  test("the second backup shares all but the changed chunks' blocks with the first; each stays whole; deleting the first leaves the second", async () => {
    await withLoopFs("btrfs", "mkfs.btrfs -f", async (mnt) => {
      const { out, a, b, grewFirst, grewSecond, log } = await twoPushes(mnt, "btrfs");
      expect(log).toMatch(/copied from \S+, \d+ of them as blocks shared with it\)/);
      for (const d of [a, b]) {
        expect(manifest(d).format).toBe(4); // (BLAKE3 chunk digests; with SHA-256 ones an aligned image is format 3)
        expect(manifest(d).align).toBe(4096);
      }
      expect(manifest(b).base).toBe(path.relative(out, a));
      const pad = checkAligned(path.join(b, "image.zst"), 4096);
      // btrfs's own account: the second image's exclusive bytes are about the change
      const du = sh(`btrfs filesystem du -s --raw ${a}/image.zst ${b}/image.zst`);
      const row = du.split("\n").find((l) => l.endsWith(`${b}/image.zst`))!.trim().split(/\s+/);
      const [total, exclusive] = [Number(row[0]), Number(row[1])];
      const ext = sharedExtents(path.join(b, "image.zst"));
      const duStore = sh(`du -sb ${out}`).split("\t")[0];
      console.log(`btrfs: du -sb of the store (counts shared blocks twice) ${duStore}; first push grew the fs by ${grewFirst}, the second by ${grewSecond}; image 2: ${total} bytes, ${exclusive} exclusive; filefrag: ${ext.shared} of ${ext.total} bytes in shared extents; padding ${pad.padded} bytes in ${pad.frames} entries`);
      expect(total).toBeGreaterThan(20 * MiB);
      expect(exclusive).toBeLessThan(CHANGED + 2 * MiB);
      expect(ext.shared).toBeGreaterThan(ext.total - CHANGED - 2 * MiB);
      expect(grewSecond).toBeLessThan(grewFirst / 4);
      await checkWhole(a, b);
      await deleteFirst(out, a, b, "btrfs");
    });
  });
});

describe.skipIf(!canLoop || !has("mkfs.xfs") || !has("filefrag"))("a store on XFS with reflink", () => {
  test("the second backup shares all but the changed chunks' blocks with the first; each stays whole; deleting the first leaves the second", async () => {
    await withLoopFs("xfs", "mkfs.xfs -f -m reflink=1", async (mnt) => {
      const { out, a, b, grewFirst, grewSecond } = await twoPushes(mnt, "xfs");
      expect(manifest(b).format).toBe(4);
      expect(manifest(b).align).toBe(4096);
      checkAligned(path.join(a, "image.zst"), 4096);
      const pad = checkAligned(path.join(b, "image.zst"), 4096);
      const ext = sharedExtents(path.join(b, "image.zst"));
      const duStore = sh(`du -sb ${out}`).split("\t")[0];
      console.log(`xfs: du -sb of the store (counts shared blocks twice) ${duStore}; first push grew the fs by ${grewFirst}, the second by ${grewSecond}; filefrag: ${ext.shared} of ${ext.total} bytes of image 2 in shared extents; padding ${pad.padded} bytes in ${pad.frames} entries`);
      expect(ext.shared).toBeGreaterThan(ext.total - CHANGED - 2 * MiB);
      expect(grewSecond).toBeLessThan(grewFirst / 4);
      await checkWhole(a, b);
      await deleteFirst(out, a, b, "xfs");
      // chunks of fewer than 32 blocks are not aligned: their padding would cost more than sharing saves
      const small = path.join(mnt, "small-store");
      await storeBackup(disk, small, path.join(dir, "xfs-small.sock"), ["--all-blocks", "--chunk-size", "64K"]);
      const [s] = backups(small);
      expect(manifest(s!).format).toBe(4);
      expect(manifest(s!).align).toBeUndefined();
    });
  });
});

describe.skipIf(!canLoop || !has("mkfs.ext4") || !has("filefrag"))("a store on a file system without reflink", () => {
  test("ext4: nothing is padded, the manifest has no align, and the second backup is a plain copy", async () => {
    await withLoopFs("ext4", "mkfs.ext4 -q -F", async (mnt) => {
      const { a, b, log, grewFirst, grewSecond } = await twoPushes(mnt, "ext4");
      expect(log).toContain("copied from");
      expect(log).not.toContain("blocks shared");
      for (const d of [a, b]) {
        const m = manifest(d);
        expect(m.format).toBe(4);
        expect(m.align).toBeUndefined();
        // every entry is exactly its frame: frames back to back, as before
        const r = ImageReader.open(path.join(d, "image.zst"));
        for (let i = 0; i < r.entries.length; i++) expect(zstd().findFrameCompressedSize(r.readEntry(i))).toBe(r.entries[i]!.compressedSize);
        r.close();
        expect(sh(`zstd -lv ${d}/image.zst 2>&1`)).toMatch(/Skippable Frames: 1\b/);
      }
      // a plain copy: nothing shared, and the file system grows by a whole image again
      console.log(`ext4: first push grew the fs by ${grewFirst}, the second by ${grewSecond}`);
      expect(sharedExtents(path.join(b, "image.zst")).shared).toBe(0);
      expect(grewSecond).toBeGreaterThan(20 * MiB);
      await checkWhole(a, b);
    });
  });
});

describe("the padded layout on any store (TBBACKUP_REFLINK=4096 forces it)", () => {
  const env = { TBBACKUP_REFLINK: "4096" };

  /** A receiver (padding forced) holding the partial of a push of a 6 MiB random image cut after 3 MB, in 4 KiB chunks (every frame a little over a block: every one padded). */
  async function interrupted(tag: string) {
    const img = randomImage(dir, 6, `${tag}.img`);
    const out = path.join(dir, `store-${tag}`);
    const sock = path.join(dir, `${tag}.sock`);
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`], { env });
    await waitFor(() => fs.existsSync(sock), "socket");
    const proxy = await startProxy(`${sock}.cut`, sock, { cutAfterBytes: 3_000_000 });
    const first = await run(["push", img, "--stream", `unix:${sock}.cut`, "--chunk-size", "4K"]);
    proxy.close();
    expect(first.code).toBe(7);
    const partialDir = () => {
      const p = fs.readdirSync(out, { recursive: true }).map(String).find((x) => x.endsWith(".partial"));
      return p ? path.join(out, p) : null;
    };
    const partialManifest = () => {
      try {
        return JSON.parse(fs.readFileSync(path.join(partialDir()!, "manifest.json"), "utf8"));
      } catch {
        return null;
      }
    };
    await waitFor(() => typeof partialManifest()?.reason === "string", "the receiver to record the partial");
    return { img, out, sock, recv, partial: partialDir()!, pm: partialManifest() };
  }

  test("an interrupted push of a padded image is resumed after its durable prefix; the result is whole and aligned", async () => {
    const { img, out, sock, recv, pm } = await interrupted("resume");
    try {
      expect(pm.format).toBe(4);
      expect(pm.align).toBe(4096);
      expect(pm.durable.chunks).toBeGreaterThan(0);
      const second = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "4K", "--json"]);
      expect(second.code, second.stderr).toBe(0);
      const j = JSON.parse(second.stdout);
      expect(j.resumedFrom).toBe(pm.durable.chunks);
      const b = path.join(out, j.id);
      expect(manifest(b).align).toBe(4096);
      expect(zstdSha(path.join(b, "image.zst"))).toBe(sha256File(img));
      const pad = checkAligned(path.join(b, "image.zst"), 4096);
      expect(pad.padded).toBeGreaterThan(pad.frames * 3000);
      const v = await run(["verify", b]);
      expect(v.code, v.stderr).toBe(0);
    } finally {
      recv.kill();
      await finish(recv);
    }
  });

  test("a partial whose manifest claims an align that is no block size is not continued; the next push makes a whole backup", async () => {
    const { img, out, sock, recv, partial, pm } = await interrupted("badalign");
    try {
      fs.writeFileSync(path.join(partial, "manifest.json"), JSON.stringify({ ...pm, align: 3 }, null, 2) + "\n");
      const second = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "4K"]);
      expect(second.code).toBe(10);
      expect(second.stderr).toContain("align 3 is not a block size");
      const third = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "4K", "--json"]);
      expect(third.code, third.stderr).toBe(0);
      const j = JSON.parse(third.stdout);
      expect(j.resumedFrom).toBe(0);
      expect(zstdSha(path.join(out, j.id, "image.zst"))).toBe(sha256File(img));
    } finally {
      recv.kill();
      await finish(recv);
    }
  });

  test("padding that is not a skippable frame makes verify fail on that chunk", async () => {
    const img = randomImage(dir, 2, "pad.img");
    const out = path.join(dir, "store-pad");
    const sock = path.join(dir, "pad.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"], { env });
    await waitFor(() => fs.existsSync(sock), "socket");
    const p = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "64K", "--json"]);
    await finish(recv);
    expect(p.code, p.stderr).toBe(0);
    const b = path.join(out, JSON.parse(p.stdout).id);
    const image = path.join(b, "image.zst");
    expect((await run(["verify", b])).code).toBe(0);
    // the padding after chunk 5's frame: its magic's last byte changed (0x184D2A5x are all skippable)
    const r = ImageReader.open(image);
    const at = r.offsets[5]! + r.readFrame(5).length;
    expect(r.entries[5]!.compressedSize).toBeGreaterThan(r.readFrame(5).length);
    r.close();
    const fd = fs.openSync(image, "r+");
    fs.writeSync(fd, Buffer.from([0x19]), 0, 1, at + 3);
    fs.closeSync(fd);
    const v = await run(["verify", b]);
    expect(v.code).toBe(10);
    expect(v.stderr).toMatch(/chunk 5\b.*not exactly one zstd frame/);
  });
});
