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
 * The names that say which disk a backup or a target is, as a HELLO's `disk`,
 * a manifest and RESTORE_INFO record them (a catalogue entry maps onto it).
 * Each is a claim read from a disk or a peer: compared, never trusted further.
 */
export interface DiskNames {
  path: string | null;
  kind?: string | null;
  size: number | null;
  serial: string | null;
  wwn: string | null;
}

/**
 * How two disks' names compare: the one comparison every "same disk" question
 * (push resume and incremental base, the restore choice and target check) is
 * answered from. `a` is the one recorded (a backup), `b` the one at hand.
 */
export interface DiskComparison {
  /**
   * By the hardware's own names: WWN when both have one, else serial when
   * both have one; null when neither pair is there to tell.
   */
  hardware: boolean | null;
  /** each name exactly as recorded (two absent names are alike) */
  alike: { path: boolean; kind: boolean; size: boolean; serial: boolean; wwn: boolean };
  /** `a`'s data fits on `b`: `b` is a file (it grows) or holds at least `a.size` bytes */
  fits: boolean;
}

export function compareDisks(a: DiskNames, b: DiskNames): DiskComparison {
  const hardware = a.wwn && b.wwn ? a.wwn === b.wwn : a.serial && b.serial ? a.serial === b.serial : null;
  return {
    hardware,
    alike: { path: a.path === b.path, kind: a.kind === b.kind, size: a.size === b.size, serial: a.serial === b.serial, wwn: a.wwn === b.wwn },
    fits: b.kind === "file" || (a.size !== null && b.size !== null && a.size <= b.size),
  };
}

/**
 * Which "same disk" question is asked; each is the one rule below, read from
 * the one comparison above:
 *
 * - `recorded`: every name as recorded: path, size, serial and WWN all equal
 *   (a name neither has counts as equal, one only one of them has does not).
 *   For continuing or building on a backup (resume §8.4, incremental base
 *   §8.7 of docs/PROTOCOL.md): the data must line up chunk for chunk, so a
 *   disk that moved to another path, or another disk at that path, is not it.
 * - `hardware`: the hardware's names decide (WWN, else serial), so a disk
 *   that moved to another path is still the same; only when they cannot
 *   tell, the path, and with `strictPath` also the kind (an image file never
 *   stands for a disk that was not found) and room for `a`'s data on `b`.
 *   For restore: the backup chosen for a target (§8.6, `strictPath`) and
 *   whether a target is the disk its backup was made from.
 */
export type SameDiskRule = { by: "recorded" } | { by: "hardware"; strictPath: boolean };

/** Whether `a` (recorded with a backup) and `b` are the same disk, by `rule`. */
export function sameDisk(a: DiskNames, b: DiskNames, rule: SameDiskRule): boolean {
  const c = compareDisks(a, b);
  if (rule.by === "recorded") return c.alike.path && c.alike.size && c.alike.serial && c.alike.wwn;
  if (c.hardware !== null) return c.hardware;
  return c.alike.path && (!rule.strictPath || (c.alike.kind && c.fits));
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
