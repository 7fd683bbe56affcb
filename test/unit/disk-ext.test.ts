// analyzeExt on real ext2/3/4 images made by mke2fs over random bytes (the
// free space holds "deleted data"). Referees: partclone's used-block map
// (every block it copies must be in ours), and e2fsck + debugfs on a copy in
// which every block outside our map is zeroed.
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeExt } from "../../src/disk/ext.ts";
import { countUsed } from "../../src/disk/types.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";
import { copyUsedOnly, fileReader, partcloneUsed, rangeKept } from "../helpers/disk.ts";

const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const hasMke2fs = has("mkfs.ext4") && has("e2fsck") && has("debugfs");
const hasPartclone = has("partclone.ext4");
const dir = tempDir("tbb-ext-");
afterAll(() => cleanup(dir));

function randomFill(file: string, mib: number): void {
  const fd = fs.openSync(file, "w");
  const buf = new Uint8Array(1024 * 1024);
  for (let i = 0; i < mib; i++) {
    for (let k = 0; k < buf.length; k += 65536) crypto.getRandomValues(buf.subarray(k, k + 65536));
    fs.writeSync(fd, buf);
  }
  fs.closeSync(fd);
}

/** A tree of known files: text, random data, a directory of small files, a symlink. */
function makeTree(name: string): Map<string, Uint8Array> {
  const tree = path.join(dir, `tree-${name}`);
  fs.mkdirSync(path.join(tree, "many"), { recursive: true });
  const files = new Map<string, Uint8Array>();
  const add = (rel: string, data: Uint8Array) => {
    fs.writeFileSync(path.join(tree, rel), data);
    files.set(rel, data);
  };
  add("readme.txt", new TextEncoder().encode("tbbackup used-block test\n".repeat(4000)));
  const rnd = new Uint8Array(5 * 1024 * 1024 + 1234);
  for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, Math.min(rnd.length, i + 65536)));
  add("random.bin", rnd);
  for (let i = 0; i < 60; i++) add(`many/f${i}`, new TextEncoder().encode(`file ${i}\n`.repeat(i * 40 + 1)));
  fs.symlinkSync("readme.txt", path.join(tree, "link"));
  return files;
}

const cases: { name: string; opts: string; mib: number; partclone: boolean }[] = [
  { name: "ext4 1K blocks", opts: "-t ext4", mib: 96, partclone: true },
  { name: "ext4 4K 64bit", opts: "-t ext4 -b 4096 -O 64bit", mib: 160, partclone: true },
  { name: "ext4 no flex_bg", opts: "-t ext4 -b 4096 -O ^flex_bg", mib: 160, partclone: true },
  { name: "ext4 no flex_bg, gdt_csum", opts: "-t ext4 -O ^flex_bg,^metadata_csum,uninit_bg", mib: 96, partclone: true },
  { name: "ext4 bigalloc", opts: "-t ext4 -b 4096 -O bigalloc -C 16384", mib: 160, partclone: false },
  { name: "ext4 meta_bg", opts: "-t ext4 -b 1024 -O meta_bg,^resize_inode", mib: 96, partclone: true },
  { name: "ext3", opts: "-t ext3", mib: 96, partclone: true },
  { name: "ext2", opts: "-t ext2 -b 4096", mib: 96, partclone: true },
];

describe.skipIf(!hasMke2fs)("ext analysis (needs mkfs.ext4, e2fsck, debugfs)", () => {
  for (const c of cases) {
    test(c.name, () => {
      const img = path.join(dir, `${c.name.replace(/\W+/g, "_")}.img`);
      randomFill(img, c.mib);
      const files = makeTree(c.name.replace(/\W+/g, "_"));
      sh(`mke2fs -q -F -E nodiscard ${c.opts} -L tb-${c.mib} -d ${JSON.stringify(path.join(dir, `tree-${c.name.replace(/\W+/g, "_")}`))} ${JSON.stringify(img)}`);
      const r = fileReader(img);
      let a;
      try {
        a = analyzeExt(r.read, r.size);
      } finally {
        r.close();
      }
      expect(a).not.toBeNull();
      expect(a!.method).toBe("used-blocks");
      expect(a!.fs).toBe(c.opts.match(/-t (ext\d)/)![1]!);
      expect(a!.label).toBe(`tb-${c.mib}`);
      expect(a!.uuid).toBe(sh(`blkid -o value -s UUID ${JSON.stringify(img)}`).trim());
      const u = a!.used!;
      expect(a!.usedBytes).toBe(Math.min(r.size, countUsed(u) * u.blockSize) + Math.max(0, r.size - u.blocks * u.blockSize));
      // the files take ~6 MiB: most of the random free space is left out
      expect(a!.usedBytes).toBeLessThan(r.size / 2);
      if (c.partclone && hasPartclone) {
        const pc = partcloneUsed("partclone.ext4", img, dir);
        let pcBytes = 0;
        for (const [o, l] of pc) {
          pcBytes += l;
          expect(rangeKept(u, o, l)).toBe(true);
        }
        expect(pcBytes).toBeGreaterThan(0); // (a log read as empty would check nothing)
        console.log(`${c.name}: we keep ${a!.usedBytes} bytes, partclone ${pcBytes} (+${a!.usedBytes - pcBytes})`);
      }
      const copy = img + ".used";
      copyUsedOnly(img, copy, u);
      const fsck = Bun.spawnSync(["e2fsck", "-fn", copy], { stdout: "pipe", stderr: "pipe" });
      expect(fsck.exitCode, fsck.stdout.toString() + fsck.stderr.toString()).toBe(0);
      const out = path.join(dir, `out-${c.name.replace(/\W+/g, "_")}`);
      fs.mkdirSync(out);
      sh(`debugfs -R 'rdump / ${out}' ${JSON.stringify(copy)} 2>/dev/null`);
      for (const [rel, data] of files) expect(Buffer.from(fs.readFileSync(path.join(out, rel))).equals(Buffer.from(data))).toBe(true);
      fs.rmSync(copy);
      fs.rmSync(img);
    });
  }

  test("files written then deleted on a mounted ext4: their blocks are left out, the rest passes fsck", () => {
    const img = path.join(dir, "mounted.img");
    randomFill(img, 128);
    sh(`mkfs.ext4 -q -F -E nodiscard ${JSON.stringify(img)}`);
    const mnt = path.join(dir, "mnt");
    fs.mkdirSync(mnt);
    let mounted = false;
    try {
      const m = Bun.spawnSync(["mount", "-o", "loop", img, mnt]);
      if (m.exitCode !== 0) {
        console.log("mount failed here: skipping the mounted part");
        return;
      }
      mounted = true;
      sh(`head -c 40M /dev/urandom > ${mnt}/gone && sync && head -c 3M /dev/urandom > ${mnt}/kept && rm ${mnt}/gone && sync`);
      const kept = fs.readFileSync(`${mnt}/kept`);
      sh(`umount ${mnt}`);
      mounted = false;
      const r = fileReader(img);
      const a = analyzeExt(r.read, r.size)!;
      r.close();
      expect(a.method).toBe("used-blocks");
      expect(a.usedBytes).toBeLessThan(30 * 1024 * 1024);
      const copy = img + ".used";
      copyUsedOnly(img, copy, a.used!);
      expect(Bun.spawnSync(["e2fsck", "-fn", copy]).exitCode).toBe(0);
      sh(`debugfs -R 'dump /kept ${dir}/kept.out' ${copy} 2>/dev/null`);
      expect(fs.readFileSync(`${dir}/kept.out`).equals(kept)).toBe(true);
    } finally {
      if (mounted) Bun.spawnSync(["umount", mnt]);
    }
  });

  test("journal needing recovery, errors recorded, not ext: whole or null", () => {
    const img = path.join(dir, "flags.img");
    sh(`truncate -s 16M ${img} && mkfs.ext4 -q -F ${img}`);
    const patch = (off: number, bytes: number[]) => {
      const fd = fs.openSync(img, "r+");
      fs.writeSync(fd, new Uint8Array(bytes), 0, bytes.length, off);
      fs.closeSync(fd);
    };
    const analyze = () => {
      const r = fileReader(img);
      try {
        return analyzeExt(r.read, r.size);
      } finally {
        r.close();
      }
    };
    expect(analyze()!.method).toBe("used-blocks");
    // the errors bit in s_state (debugfs writes the checksum again)
    sh(`debugfs -w -R 'ssv state 3' ${img}`);
    expect(analyze()).toMatchObject({ method: "whole", reason: expect.stringContaining("errors") });
    sh(`debugfs -w -R 'ssv state 1' ${img} && debugfs -w -R 'feature needs_recovery' ${img}`);
    expect(analyze()).toMatchObject({ method: "whole", reason: expect.stringContaining("recovery") });
    sh(`debugfs -w -R 'feature ^needs_recovery' ${img} && debugfs -w -R 'ssv error_count 2' ${img}`);
    expect(analyze()).toMatchObject({ method: "whole", reason: expect.stringContaining("errors") });
    sh(`debugfs -w -R 'ssv error_count 0' ${img} && debugfs -w -R 'ssv state 0' ${img}`);
    expect(analyze()).toMatchObject({ method: "whole", reason: expect.stringContaining("not cleanly unmounted") });
    sh(`debugfs -w -R 'ssv state 1' ${img}`);
    expect(analyze()!.method).toBe("used-blocks");
    // a damaged superblock (metadata_csum catches it)
    patch(1024 + 0x20, [0x13]);
    expect(analyze()).toMatchObject({ method: "whole", reason: expect.stringContaining("checksum") });
    patch(1024 + 0x38, [0, 0]);
    expect(analyze()).toBeNull();
  });
});
