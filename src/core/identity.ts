// Host and disk identity: who made a backup, and of which disk.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { DiskIdentity, HostIdentity } from "../protocol/messages.ts";
import { blockSysDir, sysPath } from "../util/sysroot.ts";

function readTrim(p: string): string | null {
  try {
    const s = fs.readFileSync(p, "utf8").trim();
    return s || null;
  } catch {
    return null;
  }
}

/**
 * Whether two disks are the same by their hardware names: WWN when both have
 * one, else serial when both have one; null when that cannot tell (then the
 * caller decides by path).
 */
export function sameHardware(a: { wwn: string | null; serial: string | null }, b: { wwn: string | null; serial: string | null }): boolean | null {
  if (a.wwn && b.wwn) return a.wwn === b.wwn;
  if (a.serial && b.serial) return a.serial === b.serial;
  return null;
}

export function hostIdentity(): HostIdentity {
  return {
    hostname: os.hostname(),
    // (under TBBACKUP_SYSROOT like /sys: a test can be a machine without one)
    machineId: readTrim(sysPath("/etc/machine-id")),
    productUuid: readTrim(sysPath("/sys/class/dmi/id/product_uuid")),
  };
}

/** Partition table type from the first sectors: "gpt", "mbr" or null. */
export function partitionTableType(head: Uint8Array): string | null {
  const ascii = (at: number) => new TextDecoder("latin1").decode(head.subarray(at, at + 8));
  for (const lbs of [512, 4096]) if (head.length >= lbs + 8 && ascii(lbs) === "EFI PART") return "gpt";
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return "mbr";
  return null;
}

export { blockSysDir };

export function blockDeviceSize(devPath: string): number | null {
  const dir = blockSysDir(devPath);
  const sectors = dir ? readTrim(path.join(dir, "size")) : null;
  return sectors ? Number(sectors) * 512 : null;
}

export function diskIdentity(devPath: string, size: number, head: Uint8Array, isBlock: boolean): DiskIdentity {
  const name = path.basename(devPath);
  if (!isBlock) {
    return { path: path.resolve(devPath), kind: "file", name, size, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: partitionTableType(head) };
  }
  const dir = blockSysDir(devPath);
  const attr = (...names: string[]) => {
    if (!dir) return null;
    for (const n of names) {
      const v = readTrim(path.join(dir, n));
      if (v) return v;
    }
    return null;
  };
  const lbs = attr("queue/logical_block_size");
  return {
    path: devPath,
    kind: "block",
    name: dir ? path.basename(dir) : name,
    size,
    model: attr("device/model"),
    serial: attr("device/serial", "serial"),
    wwn: attr("wwid", "device/wwid", "device/wwn"),
    logicalBlockSize: lbs ? Number(lbs) : null,
    partitionTable: partitionTableType(head),
  };
}
