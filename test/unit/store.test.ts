import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeSeekTable, parseSeekTable, parseFooter, frameChecksum, frameHasChecksum } from "../../src/store/seekable.ts";
import { sanitizeName, within, createBackupDir, resolveBackupId, timestampName } from "../../src/store/layout.ts";
import { writeManifest, readManifest } from "../../src/store/manifest.ts";
import { readChunkHeader, writeChunkHeader, CHUNK_HEADER_SIZE } from "../../src/protocol/messages.ts";
import { partitionTableType } from "../../src/core/identity.ts";
import { tempDir, cleanup, sh } from "../helpers/cli.ts";

describe("seek table", () => {
  test("literal vector of a one-frame table", () => {
    const t = encodeSeekTable([{ compressedSize: 0x10, rawSize: 0x1000, checksum: 0xdeadbeef }]);
    expect(Buffer.from(t).toString("hex")).toBe(
      "5e2a4d18" + "15000000" + "10000000" + "00100000" + "efbeadde" + "01000000" + "80" + "b1ea928f",
    );
    expect(parseSeekTable(t)).toEqual([{ compressedSize: 16, rawSize: 4096, checksum: 0xdeadbeef }]);
  });

  test("round trip and footer", () => {
    const entries = Array.from({ length: 50 }, (_, i) => ({ compressedSize: i * 3 + 1, rawSize: 1 << 20, checksum: (i * 2654435761) >>> 0 }));
    const t = encodeSeekTable(entries);
    expect(parseFooter(t.subarray(t.length - 9)).tableSize).toBe(t.length);
    expect(parseSeekTable(t)).toEqual(entries);
  });

  test("rejects a wrong magic and a wrong size", () => {
    const t = encodeSeekTable([{ compressedSize: 1, rawSize: 1, checksum: 1 }]);
    const bad = t.slice();
    bad[bad.length - 1] ^= 0xff;
    expect(() => parseSeekTable(bad)).toThrow(/seek table/);
    expect(() => parseSeekTable(t.subarray(1))).toThrow(/seek table size/);
  });

  test("a zstd CLI frame with --check exposes its checksum like the seek table wants", () => {
    const dir = tempDir();
    try {
      fs.writeFileSync(path.join(dir, "a"), "hello hello hello\n");
      sh(`zstd -q --check -f a -o a.zst`, dir);
      const z = new Uint8Array(fs.readFileSync(path.join(dir, "a.zst")));
      expect(frameHasChecksum(z)).toBe(true);
      // XXH64("hello hello hello\n") low 32 bits, as stored by zstd itself
      expect(frameChecksum(z)).toBe(0xce74aaa3);
      expect(frameChecksum(z)).toBe(Number(Bun.hash.xxHash64("hello hello hello\n") & 0xffffffffn));
      sh(`zstd -q --no-check -f a -o b.zst`, dir);
      expect(frameHasChecksum(new Uint8Array(fs.readFileSync(path.join(dir, "b.zst"))))).toBe(false);
    } finally {
      cleanup(dir);
    }
  });
});

describe("naming", () => {
  test("sanitizeName keeps safe names and defuses hostile ones", () => {
    expect(sanitizeName("nvme0n1")).toBe("nvme0n1");
    expect(sanitizeName("../../etc")).toBe("etc");
    expect(sanitizeName("..")).toBe("unknown");
    expect(sanitizeName("/")).toBe("unknown");
    expect(sanitizeName("a/b\\c d")).toBe("a_b_c_d");
    expect(sanitizeName(".hidden")).toBe("hidden");
    expect(sanitizeName("x".repeat(300)).length).toBe(64);
    expect(sanitizeName("")).toBe("unknown");
  });

  test("within refuses paths that leave the root", () => {
    expect(within("/srv/b", "h", "d")).toBe("/srv/b/h/d");
    expect(() => within("/srv/b", "..", "x")).toThrow();
    expect(() => within("/srv/b", "/etc")).toThrow();
  });

  test("timestamps are UTC and sortable", () => {
    expect(timestampName(new Date("2026-11-25T01:02:03.456Z"))).toBe("20261125T010203Z");
  });

  test("createBackupDir never collides and resolveBackupId stays inside", () => {
    const root = tempDir();
    try {
      const when = new Date("2026-01-01T00:00:00Z");
      const a = createBackupDir(root, "../evil", "../../disk", when);
      expect(a.id).toBe("evil/disk/20260101T000000Z");
      expect(a.dir.startsWith(root + "/")).toBe(true);
      fs.renameSync(a.dir, a.dir.replace(/\.partial$/, ""));
      const b = createBackupDir(root, "../evil", "../../disk", when);
      expect(b.id).toBe("evil/disk/20260101T000000Z-1");
      expect(resolveBackupId(root, a.id)).toBe(fs.realpathSync(path.join(root, a.id)));
      for (const bad of ["../x/y", "/etc/passwd/x", "evil/disk/..", "evil/../disk", "a/b", "evil/disk/20260101T000000Z/../../.."]) {
        expect(resolveBackupId(root, bad)).toBeNull();
      }
      // a symlink that leads out of the store is refused
      const outside = tempDir();
      fs.symlinkSync(outside, path.join(root, "evil/disk/escape"));
      expect(resolveBackupId(root, "evil/disk/escape")).toBeNull();
      cleanup(outside);
    } finally {
      cleanup(root);
    }
  });
});

describe("manifest and records", () => {
  test("manifest round trip, and a newer format is refused", () => {
    const dir = tempDir();
    try {
      const m = { format: 1, id: "h/d/t", status: "complete" } as never;
      writeManifest(dir, m);
      expect(readManifest(dir)).toEqual(m);
      fs.writeFileSync(path.join(dir, "manifest.json"), JSON.stringify({ format: 99 }));
      expect(() => readManifest(dir)).toThrow(/newer/);
    } finally {
      cleanup(dir);
    }
  });

  test("chunk header literal vector", () => {
    const b = new Uint8Array(CHUNK_HEADER_SIZE);
    writeChunkHeader(b, 0, { index: 2, rawLength: 0x100000, offset: 0x200000, checksum: 0x0123456789abcdefn });
    expect(Buffer.from(b).toString("hex")).toBe("02000000" + "00001000" + "0000200000000000" + "efcdab8967452301");
    expect(readChunkHeader(b)).toEqual({ index: 2, rawLength: 0x100000, offset: 0x200000, checksum: 0x0123456789abcdefn });
    expect(readChunkHeader(b.subarray(0, 10))).toBeNull();
  });

  test("partition table detection", () => {
    const mbr = new Uint8Array(1024);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    expect(partitionTableType(mbr)).toBe("mbr");
    const gpt = mbr.slice();
    gpt.set(new TextEncoder().encode("EFI PART"), 512);
    expect(partitionTableType(gpt)).toBe("gpt");
    expect(partitionTableType(new Uint8Array(1024))).toBeNull();
  });
});
