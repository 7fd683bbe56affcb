// readPartitionTable on tables written by sfdisk: GPT (512- and 4096-byte
// sectors), MBR with an extended partition holding two logicals, damaged GPT
// headers (the backup is used; both damaged throws), an EBR loop, no table.
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { readPartitionTable } from "../../src/disk/partitions.ts";
import { DiskFormatError } from "../../src/disk/types.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";
import { fileReader } from "../helpers/disk.ts";

const hasSfdisk = Bun.spawnSync(["sh", "-c", "command -v sfdisk"]).exitCode === 0;
const dir = tempDir("tbb-parts-");
const canLoop4k = process.getuid?.() === 0 && Bun.spawnSync(["sh", "-c", "command -v losetup"]).exitCode === 0;
afterAll(() => cleanup(dir));

function table(img: string, sector = 512) {
  const r = fileReader(img);
  try {
    return readPartitionTable(r.read, r.size, sector);
  } finally {
    r.close();
  }
}

function patch(img: string, off: number, bytes: number[]): void {
  const fd = fs.openSync(img, "r+");
  fs.writeSync(fd, new Uint8Array(bytes), 0, bytes.length, off);
  fs.closeSync(fd);
}

/** sfdisk's own view: start and size in sectors, type, per partition node. */
function sfdiskView(img: string): { start: number; size: number; type: string; uuid?: string; name?: string }[] {
  const j = JSON.parse(sh(`sfdisk -J ${img}`)) as { partitiontable: { partitions: { start: number; size: number; type: string; uuid?: string; name?: string }[] } };
  return j.partitiontable.partitions;
}

describe.skipIf(!hasSfdisk)("partition tables (needs sfdisk)", () => {
  test("GPT with four partitions, names and GUIDs as sfdisk wrote them", () => {
    const img = path.join(dir, "gpt.img");
    sh(`truncate -s 64M ${img} && printf 'label: gpt\\nsize=8M, type=uefi, name=EFI\\nsize=20M, type=linux, name=root\\nsize=4M, type=swap\\nsize=10M, type=linux\\n' | sfdisk -q ${img}`);
    const t = table(img);
    expect(t.type).toBe("gpt");
    expect(t.note).toBeUndefined();
    const v = sfdiskView(img);
    expect(t.partitions.map((p) => [p.index, p.start, p.length, p.type.toUpperCase(), p.uuid?.toUpperCase()])).toEqual(v.map((p, i) => [i + 1, p.start * 512, p.size * 512, p.type, p.uuid]));
    expect(t.partitions.map((p) => p.name)).toEqual(["EFI", "root", undefined, undefined]);
  });

  test.skipIf(!canLoop4k)("GPT on 4096-byte sectors, written through a 4 KiB-sector loop device (needs root and losetup)", () => {
    const img = path.join(dir, "gpt4k.img");
    sh(`truncate -s 64M ${img}`);
    const loop = sh(`losetup -b 4096 -f --show ${img}`).trim();
    let v;
    try {
      sh(`printf 'label: gpt\\nsize=16M\\nsize=16M\\n' | sfdisk -q ${loop}`);
      v = sfdiskView(loop);
    } finally {
      sh(`losetup -d ${loop}`);
    }
    for (const hint of [4096, 512]) {
      const t = table(img, hint);
      expect(t.type).toBe("gpt");
      expect(t.sectorSize).toBe(4096);
      expect(t.partitions.map((p) => [p.start, p.length])).toEqual(v.map((p) => [p.start * 4096, p.size * 4096]));
    }
  });

  test("a damaged primary GPT header: the backup is used, with a note; both damaged throws", () => {
    const img = path.join(dir, "gpt-bad.img");
    sh(`truncate -s 32M ${img} && printf 'label: gpt\\nsize=8M\\nsize=8M\\n' | sfdisk -q ${img}`);
    const good = table(img);
    patch(img, 512 + 40, [0x55]); // first usable LBA: the header CRC no longer matches
    const t = table(img);
    expect(t.note).toContain("primary GPT header damaged");
    expect(t.partitions).toEqual(good.partitions);
    const size = fs.statSync(img).size;
    patch(img, size - 512 + 3, [0x21]); // the backup's signature
    expect(() => table(img)).toThrow(DiskFormatError);
  });

  test("a damaged primary entry array: the backup is used", () => {
    const img = path.join(dir, "gpt-entries.img");
    sh(`truncate -s 32M ${img} && printf 'label: gpt\\nsize=8M\\n' | sfdisk -q ${img}`);
    const good = table(img);
    patch(img, 1024 + 32, [0x99]); // partition 1's first LBA in the primary array
    const t = table(img);
    expect(t.note).toContain("entry array checksum");
    expect(t.partitions).toEqual(good.partitions);
  });

  test("MBR with two primaries and an extended partition holding two logicals", () => {
    const img = path.join(dir, "mbr.img");
    sh(`truncate -s 64M ${img} && printf 'label: dos\\nsize=8M, type=83\\nsize=8M, type=82\\ntype=5\\nsize=10M, type=83\\nsize=12M, type=7\\n' | sfdisk -q ${img}`);
    const t = table(img);
    expect(t.type).toBe("mbr");
    const v = sfdiskView(img).filter((p) => p.type !== "5");
    expect(t.partitions.map((p) => [p.start, p.length, p.type])).toEqual(v.map((p) => [p.start * 512, p.size * 512, `0x${p.type.padStart(2, "0")}`]));
    expect(t.partitions.map((p) => p.index)).toEqual([1, 2, 5, 6]);
  });

  test("an EBR chain that loops is an error, not a hang", () => {
    const img = path.join(dir, "mbr-loop.img");
    sh(`truncate -s 64M ${img} && printf 'label: dos\\nsize=8M, type=83\\ntype=5\\nsize=10M, type=83\\nsize=12M, type=83\\n' | sfdisk -q ${img}`);
    const ext = sfdiskView(img).find((p) => p.type === "5")!;
    const logicals = sfdiskView(img).filter((p) => p.type === "83").slice(1);
    // the second EBR's link entry points back to the first EBR (relative 0)
    const secondEbr = (logicals[1]!.start - 2048) * 512; // sfdisk leaves 1 MiB before each logical
    expect(ext.start).toBeGreaterThan(0);
    patch(img, secondEbr + 446 + 16, [0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
    expect(() => table(img)).toThrow(/loops/);
  });

  test("no table, and a file system on the whole disk: none", () => {
    const img = path.join(dir, "none.img");
    sh(`truncate -s 8M ${img}`);
    expect(table(img).type).toBe("none");
    sh(`mkfs.vfat -C ${path.join(dir, "fat.img")} 8192 >/dev/null`);
    expect(table(path.join(dir, "fat.img")).type).toBe("none");
    sh(`mkfs.ext4 -q -F ${img}`);
    expect(table(img).type).toBe("none");
  });

  test("a protective MBR with no GPT behind it throws", () => {
    const img = path.join(dir, "pmbr.img");
    sh(`truncate -s 32M ${img} && printf 'label: gpt\\nsize=8M\\n' | sfdisk -q ${img}`);
    patch(img, 512, [0]);
    patch(img, fs.statSync(img).size - 512, [0]);
    expect(() => table(img)).toThrow(/protective/);
  });
});

describe.skipIf(!hasSfdisk)("a GPT left over from an earlier table (review finding: data was zeroed)", () => {
  test("a new MBR over an old GPT disk: the MBR is the table (the kernel's view), the leftover backup GPT is ignored with a note", () => {
    const img = path.join(dir, "leftover.img");
    sh(`truncate -s 64M ${img} && printf 'label: gpt\\nsize=8M\\nsize=20M\\nsize=20M\\n' | sfdisk -q ${img}`);
    // what "zero the start, make a new MBR" leaves: the backup GPT header at the end survives
    sh(`dd if=/dev/zero of=${img} bs=1M count=1 conv=notrunc status=none && printf 'label: dos\\nstart=2048, type=83\\n' | sfdisk -q --wipe never ${img}`);
    const t = table(img);
    expect(t.type).toBe("mbr");
    expect(t.partitions.length).toBe(1);
    expect(t.partitions[0]!.start).toBe(2048 * 512);
    expect(t.note).toMatch(/GPT without a protective MBR/);
  });

  test("no MBR at all and only a leftover backup GPT: nothing is trusted (the disk is imaged whole)", () => {
    const img = path.join(dir, "leftover2.img");
    sh(`truncate -s 64M ${img} && printf 'label: gpt\\nsize=8M\\nsize=20M\\n' | sfdisk -q ${img}`);
    sh(`dd if=/dev/zero of=${img} bs=1M count=1 conv=notrunc status=none`);
    expect(() => table(img)).toThrow(DiskFormatError);
  });
});
