// Used-block imaging end to end: the compiled binary pushes a partitioned disk
// image (ext4 + swap + more, free space full of random "deleted" data) to a
// receiver over unix:, and the stored image is checked with plain tools:
// zstd -dc gives a disk whose ext4 partitions pass e2fsck -fn with every file
// identical, whose unused blocks are zeros, and whose bytes outside the
// partitions are the source's; --all-blocks stores every byte.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { cleanup, finish, run, sh, start, tempDir, waitFor } from "../helpers/cli.ts";
import type { Layout } from "../../src/protocol/messages.ts";

const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const tools = has("mkfs.ext4") && has("e2fsck") && has("debugfs") && has("sfdisk") && has("mkswap") && has("zstd");
const MiB = 1024 * 1024;

let dir: string;
beforeAll(() => {
  dir = tempDir("tbb-used-");
});
afterAll(() => cleanup(dir));

function randomFile(file: string, bytes: number): void {
  const fd = fs.openSync(file, "w");
  const buf = new Uint8Array(MiB);
  for (let done = 0; done < bytes; done += MiB) {
    for (let k = 0; k < buf.length; k += 65536) crypto.getRandomValues(buf.subarray(k, k + 65536));
    fs.writeSync(fd, buf, 0, Math.min(MiB, bytes - done));
  }
  fs.closeSync(fd);
}

/** A tree of known files for mkfs -d; returns relative path -> content. */
function tree(name: string): { dir: string; files: Map<string, Buffer> } {
  const root = path.join(dir, `tree-${name}`);
  fs.mkdirSync(path.join(root, "etc"), { recursive: true });
  const files = new Map<string, Buffer>();
  const add = (rel: string, data: Buffer) => {
    fs.writeFileSync(path.join(root, rel), data);
    files.set(rel, data);
  };
  add("etc/hostname", Buffer.from(`${name}\n`));
  add("etc/notes.txt", Buffer.from("used-block imaging\n".repeat(3000)));
  const rnd = Buffer.alloc(3 * MiB + 777);
  for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, Math.min(rnd.length, i + 65536)));
  add("data.bin", rnd);
  return { dir: root, files };
}

/** A file system made in its own file over random bytes, then copied into the disk at `offset`. */
function placeFs(disk: string, offset: number, bytes: number, mkfs: string): void {
  const part = path.join(dir, `part-${offset}.img`);
  randomFile(part, bytes);
  sh(`${mkfs} ${part} >/dev/null`);
  sh(`dd if=${part} of=${disk} bs=1M seek=${offset / MiB} conv=notrunc status=none`);
  fs.rmSync(part);
}

async function pushTo(img: string, out: string, extra: string[] = []): Promise<{ push: { code: number; stdout: string; stderr: string }; dir: string }> {
  const sock = path.join(dir, `s-${Math.random().toString(36).slice(2)}.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "receiver socket");
  const push = await run(["push", img, "--stream", `unix:${sock}`, ...extra]);
  const r = await finish(recv);
  expect(push.code, push.stderr).toBe(0);
  expect(r.code, r.stderr).toBe(0);
  const manifests = (fs.readdirSync(out, { recursive: true }) as string[]).map(String).filter((p) => p.endsWith("manifest.json"));
  expect(manifests.length).toBe(1);
  return { push, dir: path.join(out, path.dirname(manifests[0]!)) };
}

/** How many bytes of the first `length` of a file or disk are in the page cache (mmap + mincore). */
function residentBytes(fd: number, length: number): number {
  const libc = dlopen("libc.so.6", {
    mmap: { args: [FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.ptr },
    munmap: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
    mincore: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  });
  try {
    const PROT_READ = 1;
    const MAP_SHARED = 1;
    const at = libc.symbols.mmap(null, length, PROT_READ, MAP_SHARED, fd, 0);
    if (!at || Number(at) === -1) throw new Error("mmap failed");
    const pages = new Uint8Array(Math.ceil(length / 4096));
    try {
      if (libc.symbols.mincore(at, length, ptr(pages)) !== 0) throw new Error("mincore failed");
    } finally {
      libc.symbols.munmap(at, length);
    }
    return pages.reduce((n, v) => n + (v & 1), 0) * 4096;
  } finally {
    libc.close();
  }
}

function slice(file: string, start: number, length: number): Buffer {
  const fd = fs.openSync(file, "r");
  const b = Buffer.alloc(length);
  fs.readSync(fd, b, 0, length, start);
  fs.closeSync(fd);
  return b;
}

/** Checks an ext partition of the restored disk: fsck clean, the files identical. */
function checkExt(raw: string, start: number, length: number, files: Map<string, Buffer>, name: string): void {
  const part = path.join(dir, `check-${name}.img`);
  fs.writeFileSync(part, slice(raw, start, length));
  const fsck = Bun.spawnSync(["e2fsck", "-fn", part], { stdout: "pipe", stderr: "pipe" });
  expect(fsck.exitCode, fsck.stdout.toString() + fsck.stderr.toString()).toBe(0);
  const out = path.join(dir, `rdump-${name}`);
  fs.mkdirSync(out);
  sh(`debugfs -R 'rdump / ${out}' ${part} 2>/dev/null`);
  for (const [rel, data] of files) expect(fs.readFileSync(path.join(out, rel)).equals(data), rel).toBe(true);
  fs.rmSync(part);
}

/** Every 1 KiB block (the smallest ext block) of [start, start+length) in `raw` either equals the source or is all zeros; returns the zeroed bytes. */
function zeroedOrEqual(src: string, raw: string, start: number, length: number): number {
  const a = slice(src, start, length);
  const b = slice(raw, start, length);
  let zeroed = 0;
  for (let o = 0; o < length; o += 1024) {
    const x = a.subarray(o, o + 1024);
    const y = b.subarray(o, o + 1024);
    if (x.equals(y)) continue;
    expect(y.every((v) => v === 0)).toBe(true);
    zeroed += y.length;
  }
  return zeroed;
}

describe.skipIf(!tools)("used-block imaging (needs mkfs.ext4, e2fsck, debugfs, sfdisk, mkswap, zstd)", () => {
  test("GPT disk with ext4 (1 KiB and 4 KiB blocks) and swap: far fewer bytes stored; fsck-clean, identical files, zeros elsewhere", async () => {
    const disk = path.join(dir, "gpt.img");
    randomFile(disk, 160 * MiB);
    sh(`printf 'label: gpt\\nsize=64M, type=linux, name=root\\nsize=16M, type=swap, name=swap\\ntype=linux, name=data\\n' | sfdisk -q ${disk}`);
    const parts = JSON.parse(sh(`sfdisk -J ${disk}`)).partitiontable.partitions as { start: number; size: number }[];
    const [p1, p2, p3] = parts.map((p) => ({ start: p.start * 512, length: p.size * 512 })) as [{ start: number; length: number }, { start: number; length: number }, { start: number; length: number }];
    const t1 = tree("root");
    const t3 = tree("data");
    placeFs(disk, p1.start, p1.length, `mkfs.ext4 -q -F -E nodiscard -L root -d ${t1.dir}`);
    placeFs(disk, p2.start, p2.length, "mkswap -L swap");
    placeFs(disk, p3.start, p3.length, `mkfs.ext4 -q -F -b 4096 -O 64bit -E nodiscard -d ${t3.dir}`);

    const used = await pushTo(disk, path.join(dir, "store-used"), ["--json"]);
    const all = await pushTo(disk, path.join(dir, "store-all"), ["--all-blocks"]);
    const mUsed = JSON.parse(fs.readFileSync(path.join(used.dir, "manifest.json"), "utf8"));
    const mAll = JSON.parse(fs.readFileSync(path.join(all.dir, "manifest.json"), "utf8"));
    console.log(`stored: ${mUsed.storedBytes} bytes with used blocks, ${mAll.storedBytes} with --all-blocks`);
    expect(mUsed.storedBytes).toBeLessThan(mAll.storedBytes / 5);
    expect(mAll.layout).toBeUndefined();

    // the layout: in push --json, and the same in the manifest
    const result = JSON.parse(used.push.stdout) as { layout: Layout };
    expect(mUsed.layout).toEqual(result.layout);
    const l = result.layout;
    expect(l.table).toBe("gpt");
    expect(l.partitions.map((p) => [p.index, p.start, p.length, p.fs, p.method, p.label])).toEqual([
      [1, p1.start, p1.length, "ext4", "used-blocks", "root"],
      [2, p2.start, p2.length, "swap", "header-only", "swap"],
      [3, p3.start, p3.length, "ext4", "used-blocks", undefined],
    ]);
    expect(l.partitions[0]!.name).toBe("root");
    expect(l.outsideBytes).toBe(160 * MiB - p1.length - p2.length - p3.length);
    const listed = JSON.parse((await run(["list", "--out", path.join(dir, "store-used"), "--json"])).stdout);
    expect(listed[0].unusedAsZeros).toBe(true);

    const raw = path.join(dir, "restored.raw");
    sh(`zstd -dcq ${path.join(used.dir, "image.zst")} > ${raw}`);
    expect(fs.statSync(raw).size).toBe(160 * MiB);
    checkExt(raw, p1.start, p1.length, t1.files, "p1");
    checkExt(raw, p3.start, p3.length, t3.files, "p3");
    // free space: the random bytes are gone (zeros), everything else is as on the disk
    expect(zeroedOrEqual(disk, raw, p1.start, p1.length)).toBeGreaterThan(40 * MiB);
    expect(zeroedOrEqual(disk, raw, p3.start, p3.length)).toBeGreaterThan(60 * MiB);
    // swap: the header page only
    expect(slice(raw, p2.start, 4096).equals(slice(disk, p2.start, 4096))).toBe(true);
    expect(slice(raw, p2.start + 4096, p2.length - 4096).every((v) => v === 0)).toBe(true);
    // outside the partitions (protective MBR, GPT, gaps, the backup GPT): the source's bytes
    for (const [a, b] of [[0, p1.start], [p1.start + p1.length, p2.start], [p2.start + p2.length, p3.start], [p3.start + p3.length, 160 * MiB]] as [number, number][])
      if (b > a) expect(slice(raw, a, b - a).equals(slice(disk, a, b - a))).toBe(true);
    // the plan a user sees before sending (without --json)
    fs.rmSync(raw);
  });

  test("MBR disk with a logical partition; an image with no table is one file system", async () => {
    const disk = path.join(dir, "mbr.img");
    randomFile(disk, 96 * MiB);
    sh(`printf 'label: dos\\nsize=32M, type=83\\ntype=5\\nsize=40M, type=83\\n' | sfdisk -q ${disk}`);
    const parts = (JSON.parse(sh(`sfdisk -J ${disk}`)).partitiontable.partitions as { start: number; size: number; type: string }[]).filter((p) => p.type !== "5");
    const [p1, p5] = parts.map((p) => ({ start: p.start * 512, length: p.size * 512 })) as [{ start: number; length: number }, { start: number; length: number }];
    const t1 = tree("mbr1");
    const t5 = tree("mbr5");
    placeFs(disk, p1.start, p1.length, `mkfs.ext4 -q -F -E nodiscard -d ${t1.dir}`);
    placeFs(disk, p5.start, p5.length, `mkfs.ext3 -q -F -E nodiscard -d ${t5.dir}`);
    const used = await pushTo(disk, path.join(dir, "store-mbr"));
    expect(used.push.stderr).toMatch(/mbr\.img: MBR, 2 partitions\n\s+p1\s+ext4\s+32\.0 MiB\s+[\d.]+ MiB used\n\s+p5\s+ext3\s+40\.0 MiB\s+[\d.]+ MiB used\n\s+outside partitions: 24\.0 MiB \(kept whole\)\nsending [\d.]+ MiB of 96\.0 MiB/);
    const raw = path.join(dir, "restored-mbr.raw");
    sh(`zstd -dcq ${path.join(used.dir, "image.zst")} > ${raw}`);
    checkExt(raw, p1.start, p1.length, t1.files, "m1");
    checkExt(raw, p5.start, p5.length, t5.files, "m5");
    expect(zeroedOrEqual(disk, raw, 0, 96 * MiB)).toBeGreaterThan(50 * MiB);
    // the extended boot record lies outside both partitions: kept
    const ebr = p5.start - 2048 * 512;
    expect(slice(raw, ebr, 512).equals(slice(disk, ebr, 512))).toBe(true);
    fs.rmSync(raw);

    // a bare file system (no table): one partition, index 0
    const bare = path.join(dir, "bare.img");
    randomFile(bare, 32 * MiB);
    sh(`mkfs.ext4 -q -F -E nodiscard -d ${t1.dir} ${bare}`);
    const b = await pushTo(bare, path.join(dir, "store-bare"), ["--json"]);
    const l = (JSON.parse(b.push.stdout) as { layout: Layout }).layout;
    expect(l.table).toBe("none");
    expect(l.partitions).toMatchObject([{ index: 0, start: 0, length: 32 * MiB, fs: "ext4", method: "used-blocks" }]);
    const rawBare = path.join(dir, "restored-bare.raw");
    sh(`zstd -dcq ${path.join(b.dir, "image.zst")} > ${rawBare}`);
    checkExt(rawBare, 0, 32 * MiB, t1.files, "bare");
  });

  test.skipIf(process.getuid?.() !== 0 || !has("losetup"))("a loop device is imaged as its backing file is (read with O_DIRECT: aligned, misaligned, a 512-byte tail, 4 KiB logical blocks), and its page cache is not filled (needs root and losetup)", async () => {
    // a GPT disk whose size ends 1536 bytes past a 4 KiB boundary, with 1 KiB-block ext4, swap and 4 KiB-block ext4
    const disk = path.join(dir, "direct.img");
    randomFile(disk, 96 * MiB + 1536);
    sh(`printf 'label: gpt\\nsize=40M, type=linux\\nsize=8M, type=swap\\ntype=linux\\n' | sfdisk -q ${disk}`);
    const parts = JSON.parse(sh(`sfdisk -J ${disk}`)).partitiontable.partitions as { start: number; size: number }[];
    const [p1, p2, p3] = parts.map((p) => ({ start: p.start * 512, length: p.size * 512 })) as [{ start: number; length: number }, { start: number; length: number }, { start: number; length: number }];
    placeFs(disk, p1.start, p1.length, `mkfs.ext4 -q -F -b 1024 -E nodiscard -d ${tree("direct1").dir}`);
    placeFs(disk, p2.start, p2.length, "mkswap");
    placeFs(disk, p3.start, p3.length, `mkfs.ext4 -q -F -b 4096 -E nodiscard -d ${tree("direct3").dir}`);
    // zeros written (not holes) after the swap header: chunks read, found zero and sent as such
    sh(`dd if=/dev/zero of=${disk} bs=4096 seek=${p2.start / 4096 + 1} count=${(p2.length - 4096) / 4096} conv=notrunc status=none`);
    // a bare ext4 of 1 KiB blocks on a device of 4 KiB logical blocks: its used ranges are not aligned to them
    const bare = path.join(dir, "direct-bare.img");
    randomFile(bare, 32 * MiB);
    sh(`mkfs.ext4 -q -F -b 1024 -E nodiscard -d ${tree("direct-bare").dir} ${bare}`);
    const rootOf = (r: { push: { stdout: string } }) => (JSON.parse(r.push.stdout) as { root: string }).root;
    const loops: string[] = [];
    try {
      loops.push(sh(`losetup -f --show ${disk}`).trim());
      loops.push(sh(`losetup -f --show -b 4096 ${bare}`).trim());
      const [loop, loop4k] = loops as [string, string];
      expect(fs.readFileSync(`/sys/class/block/${path.basename(loop4k)}/queue/logical_block_size`, "utf8").trim()).toBe("4096");
      for (const [name, file, dev] of [["gpt", disk, loop], ["bare4k", bare, loop4k]] as const) {
        for (const extra of [[], ["--all-blocks", "--sha256"]]) {
          const tag = `${name}${extra.length ? "-all" : ""}`;
          const fromFile = await pushTo(file, path.join(dir, `store-direct-file-${tag}`), ["--json", ...extra]);
          const fromDev = await pushTo(dev, path.join(dir, `store-direct-dev-${tag}`), ["--json", ...extra]);
          expect(rootOf(fromDev), tag).toBe(rootOf(fromFile));
          if (extra.length) {
            const r = JSON.parse(fromDev.push.stdout) as { sha256: string; zeroChunks: number };
            expect(r.sha256, tag).toBe(sh(`sha256sum ${file}`).split(" ")[0]!);
            if (name === "gpt") expect(r.zeroChunks).toBeGreaterThanOrEqual(6);
          }
        }
      }
      // the device's page cache: kept while the test holds the device open (the kernel drops it at the last close)
      const held = fs.openSync(loop, "r");
      try {
        sh(`blockdev --flushbufs ${loop}`);
        await pushTo(loop, path.join(dir, "store-direct-cache"), ["--all-blocks"]);
        const cached = residentBytes(held, 96 * MiB);
        console.log(`pages of ${loop} cached after push --all-blocks: ${cached} bytes`);
        expect(cached).toBeLessThan(4 * MiB);
      } finally {
        fs.closeSync(held);
      }
    } finally {
      for (const l of loops) Bun.spawnSync(["losetup", "-d", l]);
    }
  });

  test.skipIf(process.getuid?.() !== 0 || !has("losetup"))("a partition mounted read-write is imaged whole (loop device; needs root and losetup)", async () => {
    const disk = path.join(dir, "mounted.img");
    randomFile(disk, 64 * MiB);
    sh(`printf 'label: gpt\\nsize=24M\\nsize=24M\\n' | sfdisk -q ${disk}`);
    const parts = JSON.parse(sh(`sfdisk -J ${disk}`)).partitiontable.partitions as { start: number; size: number }[];
    for (const p of parts) placeFs(disk, p.start * 512, p.size * 512, "mkfs.ext4 -q -F -E nodiscard");
    const loop = sh(`losetup -P -f --show ${disk}`).trim();
    const mnt = path.join(dir, "mnt");
    fs.mkdirSync(mnt);
    let mounted = false;
    try {
      Bun.spawnSync(["partx", "-a", loop]);
      await waitFor(() => fs.existsSync(`${loop}p1`), "partition device", 5000);
      sh(`mount ${loop}p1 ${mnt}`);
      mounted = true;
      const r = await pushTo(loop, path.join(dir, "store-mounted"), ["--json"]);
      const l = (JSON.parse(r.push.stdout) as { layout: Layout }).layout;
      expect(l.partitions[0]).toMatchObject({ method: "whole", reason: `mounted read-write on ${mnt}` });
      expect(l.partitions[1]).toMatchObject({ method: "used-blocks" });
    } finally {
      if (mounted) Bun.spawnSync(["umount", mnt]);
      Bun.spawnSync(["losetup", "-d", loop]);
    }
  });
  test.skipIf(process.getuid?.() !== 0 || !has("losetup") || !has("mkfs.btrfs"))("a btrfs mounted read-write (the kernel reports an anonymous 0:N device for it) is imaged whole (needs root, losetup, mkfs.btrfs)", async () => {
    const disk = path.join(dir, "btrfs-mounted.img");
    sh(`truncate -s 160M ${disk} && mkfs.btrfs -q -f ${disk}`);
    const loop = sh(`losetup -f --show ${disk}`).trim();
    const mnt = path.join(dir, "mnt-btrfs");
    fs.mkdirSync(mnt, { recursive: true });
    let mounted = false;
    try {
      const m = Bun.spawnSync(["mount", loop, mnt]);
      if (m.exitCode !== 0) return; // no btrfs driver in this kernel: nothing to show
      mounted = true;
      const r = await pushTo(loop, path.join(dir, "store-btrfs-mounted"), ["--json"]);
      const l = (JSON.parse(r.push.stdout) as { layout: Layout }).layout;
      expect(l.partitions[0]).toMatchObject({ fs: "btrfs", method: "whole", reason: `mounted read-write on ${mnt}` });
    } finally {
      if (mounted) Bun.spawnSync(["umount", mnt]);
      Bun.spawnSync(["losetup", "-d", loop]);
    }
  });
});
