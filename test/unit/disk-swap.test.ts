// analyzeSwap on areas made by mkswap, and the hibernation signatures that
// turn "header only" into "whole"; identifyWhole on real LUKS/LVM headers when
// their tools are there, and on the other signatures it names.
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeSwap } from "../../src/disk/swap.ts";
import { identifyWhole } from "../../src/disk/signatures.ts";
import { countUsed } from "../../src/disk/types.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";
import { fileReader } from "../helpers/disk.ts";

const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const dir = tempDir("tbb-swap-");
afterAll(() => cleanup(dir));

function withFile<T>(img: string, f: (r: ReturnType<typeof fileReader>) => T): T {
  const r = fileReader(img);
  try {
    return f(r);
  } finally {
    r.close();
  }
}

function patch(img: string, off: number, text: string): void {
  const fd = fs.openSync(img, "r+");
  fs.writeSync(fd, Buffer.from(text, "latin1"), 0, text.length, off);
  fs.closeSync(fd);
}

describe.skipIf(!has("mkswap"))("swap (needs mkswap)", () => {
  test("mkswap: the header page only, with label and UUID", () => {
    const img = path.join(dir, "swap.img");
    sh(`head -c 16M /dev/urandom > ${img} && mkswap -L tbswap -U 0b7e5ad7-1111-4222-8333-444455556666 ${img} >/dev/null`);
    const a = withFile(img, (r) => analyzeSwap(r.read, r.size))!;
    expect(a).toMatchObject({ fs: "swap", method: "header-only", label: "tbswap", uuid: "0b7e5ad7-1111-4222-8333-444455556666", usedBytes: 4096 });
    expect(countUsed(a.used!)).toBe(1);
  });

  for (const sig of ["S1SUSPEND\0", "S2SUSPEND\0", "ULSUSPEND\0", "LINHIB0001"]) {
    test(`a hibernation image (${sig.replace("\0", "")}): whole`, () => {
      const img = path.join(dir, "hib.img");
      sh(`truncate -s 8M ${img} && mkswap ${img} >/dev/null`);
      patch(img, 4096 - 10, sig);
      expect(withFile(img, (r) => analyzeSwap(r.read, r.size))).toMatchObject({ fs: "swap", method: "whole", reason: expect.stringContaining("hibernation") });
    });
  }

  test("not swap: null", () => {
    const img = path.join(dir, "zero.img");
    sh(`truncate -s 8M ${img}`);
    expect(withFile(img, (r) => analyzeSwap(r.read, r.size))).toBeNull();
  });
});

describe("things imaged whole, named", () => {
  test.skipIf(!has("cryptsetup"))("LUKS2 and LUKS1 made by cryptsetup (needs cryptsetup)", () => {
    for (const type of ["luks2", "luks1"]) {
      const img = path.join(dir, `${type}.img`);
      sh(`truncate -s 24M ${img} && printf 'pw' | cryptsetup luksFormat -q --type ${type} --pbkdf-force-iterations 1000 ${type === "luks2" ? "--pbkdf pbkdf2 " : ""}${img} -`);
      expect(withFile(img, (r) => identifyWhole(r.read, r.size))).toMatchObject({ fs: "luks", method: "whole", reason: "encrypted (LUKS): content cannot be read" });
    }
  });

  test.skipIf(!has("pvcreate") || process.getuid?.() !== 0)("an LVM physical volume made by pvcreate on a loop device (needs lvm2 and root)", () => {
    const img = path.join(dir, "pv.img");
    sh(`truncate -s 16M ${img}`);
    const loop = sh(`losetup -f --show ${img}`).trim();
    try {
      sh(`pvcreate -q -y ${loop}`);
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(withFile(img, (r) => identifyWhole(r.read, r.size))).toMatchObject({ fs: "lvm2", method: "whole" });
  });

  test("signatures written by hand: BitLocker, md 1.2, bcache, ZFS, unknown", () => {
    const cases: [string, number, string][] = [
      ["bitlocker", 3, "-FVE-FS-"],
      ["linux_raid_member", 4096, "\xfc\x4e\x2b\xa9"],
      ["bcache", 4096 + 24, "\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81"],
      ["zfs_member", 128 * 1024, "\x0c\xb1\xba\x00"],
    ];
    for (const [fsName, off, sig] of cases) {
      const img = path.join(dir, `${fsName}.img`);
      sh(`truncate -s 4M ${img}`);
      patch(img, off, sig);
      expect(withFile(img, (r) => identifyWhole(r.read, r.size))).toMatchObject({ fs: fsName, method: "whole" });
    }
    const img = path.join(dir, "blank.img");
    sh(`truncate -s 4M ${img}`);
    expect(withFile(img, (r) => identifyWhole(r.read, r.size))).toMatchObject({ fs: "unknown", method: "whole", usedBytes: 4 * 1024 * 1024 });
  });
});
