// The one "same disk" rule (src/core/identity.ts) and what each use asks of it:
// push resume and incremental base (`recorded`), the restore choice
// (`hardware`, strictPath) and the restore target check (`hardware`).
import { describe, expect, test } from "bun:test";
import { compareDisks, sameDisk, type DiskNames, type SameDiskRule } from "../../src/core/identity.ts";
import { backupOfThisDisk } from "../../src/core/resume.ts";
import type { Hello } from "../../src/protocol/messages.ts";
import type { Manifest } from "../../src/store/manifest.ts";

const disk: DiskNames = { path: "/dev/sda", kind: "block", size: 1 << 30, serial: "S123", wwn: "naa.5000c500a1b2c3d4" };
const noNames: DiskNames = { ...disk, serial: null, wwn: null };
const file: DiskNames = { path: "/srv/disk.img", kind: "file", size: 1 << 20, serial: null, wwn: null };

const PUSH: SameDiskRule = { by: "recorded" };
const CHOICE: SameDiskRule = { by: "hardware", strictPath: true };
const TARGET: SameDiskRule = { by: "hardware", strictPath: false };

// [what, recorded (a backup's disk), at hand, push, restore choice, restore target check]
const table: [string, DiskNames, DiskNames, boolean, boolean, boolean][] = [
  ["the same disk, every name equal", disk, { ...disk }, true, true, true],
  ["same WWN and serial, another path (renamed at boot)", disk, { ...disk, path: "/dev/sdb" }, false, true, true],
  ["same serial, another path, no WWN", { ...disk, wwn: null }, { ...disk, wwn: null, path: "/dev/sdb" }, false, true, true],
  ["same path, another serial (another disk put in its place)", { ...disk, wwn: null }, { ...disk, wwn: null, serial: "S999" }, false, false, false],
  ["same path and serial, another WWN: the WWN decides", disk, { ...disk, wwn: "naa.5000c500ffffffff" }, false, false, false],
  ["same WWN, another serial: the WWN decides", disk, { ...disk, serial: "S999" }, false, true, true],
  ["WWN on one side only, same serial: the serial decides", disk, { ...disk, wwn: null }, false, true, true],
  ["serial missing on one side, no WWN: the path decides", { ...disk, wwn: null }, { ...disk, wwn: null, serial: null }, false, true, true],
  ["no hardware names, same path and size", noNames, { ...noNames }, true, true, true],
  ["no hardware names, same path, larger target", noNames, { ...noNames, size: 2 ** 31 }, false, true, true],
  ["no hardware names, same path, target too small", noNames, { ...noNames, size: 1 << 29 }, false, false, true],
  ["different size, same hardware names", disk, { ...disk, size: 2 ** 31 }, false, true, true],
  ["no hardware names, another path", noNames, { ...noNames, path: "/dev/sdb" }, false, false, false],
  ["an image file, same path", file, { ...file }, true, true, true],
  ["an image file, same path, the file now smaller (it grows)", file, { ...file, size: 4096 }, false, true, true],
  ["an image file backed up, a disk at that path now (push does not compare the kind)", file, { ...file, kind: "block" }, true, false, true],
];

describe("the same-disk rule", () => {
  for (const [what, a, b, push, choice, target] of table) {
    test(what, () => {
      expect([sameDisk(a, b, PUSH), sameDisk(a, b, CHOICE), sameDisk(a, b, TARGET)]).toEqual([push, choice, target]);
    });
  }

  test("the hardware comparison: WWN, else serial, else it cannot tell", () => {
    expect(compareDisks(disk, { ...disk, path: "/dev/sdz" }).hardware).toBe(true);
    expect(compareDisks(disk, { ...disk, wwn: "other" }).hardware).toBe(false);
    expect(compareDisks(disk, { ...disk, wwn: null, serial: "other" }).hardware).toBe(false);
    expect(compareDisks(noNames, disk).hardware).toBeNull();
    // an empty name is no name
    expect(compareDisks({ ...disk, wwn: "", serial: "" }, disk).hardware).toBeNull();
  });
});

describe("a push's backup of the same disk (resume, incremental base)", () => {
  const host = { hostname: "pc", machineId: "m1", productUuid: null };
  const hello = { role: "push", session: "s", host, chunkSize: 1 << 20, disk: { ...disk, name: "sda", model: null, logicalBlockSize: 512, partitionTable: "gpt" } } as unknown as Hello;
  const manifest = { kind: "image", chunkSize: 1 << 20, host, disk: { ...hello.disk } } as unknown as Manifest;

  test("same host, chunk size and disk as recorded", () => {
    expect(backupOfThisDisk(manifest, hello)).toBe(true);
  });
  test("another machine-id, chunk size, kind or disk path is not it", () => {
    expect(backupOfThisDisk({ ...manifest, host: { ...host, machineId: "m2" } }, hello)).toBe(false);
    expect(backupOfThisDisk({ ...manifest, chunkSize: 1 << 21 }, hello)).toBe(false);
    expect(backupOfThisDisk({ ...manifest, kind: "files" } as Manifest, hello)).toBe(false);
    expect(backupOfThisDisk({ ...manifest, disk: { ...manifest.disk, path: "/dev/sdb" } }, hello)).toBe(false);
    expect(backupOfThisDisk({ ...manifest, disk: undefined } as unknown as Manifest, hello)).toBe(false);
  });
});
