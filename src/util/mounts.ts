// What sits on a disk: the file systems mounted from it or from its partitions
// (/proc/self/mountinfo, matched by major:minor from sysfs, or by source
// device name for file systems such as btrfs that report an anonymous one),
// the devices stacked on it (sysfs holders: device mapper, RAID, ...), and for
// an image file the loop devices it backs. Used to refuse an in-use restore
// target and to warn about a disk pushed while it is mounted read-write.
// All paths go through sysPath (TBBACKUP_SYSROOT).
import * as fs from "node:fs";
import * as path from "node:path";
import { blockSysDir, sysPath } from "./sysroot.ts";

export interface MountOnDisk {
  /** the block device mounted, e.g. /dev/sda2, /dev/mapper/vg-root */
  device: string;
  /** for a device built on the disk (LVM, dm-crypt, RAID): the partition it is on, e.g. sda2 */
  on?: string;
  mountpoint: string;
  readOnly: boolean;
}

/** The most mount lines and loop devices looked at (a claim of the kernel's is still capped). */
const MAX_LINES = 100_000;
const MAX_LOOPS = 4096;

function read(p: string): string | null {
  try {
    return fs.readFileSync(p, "utf8");
  } catch {
    return null;
  }
}

/** A mountinfo field with its octal escapes (\040 for a space) undone. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

interface BlockDev {
  name: string;
  /** "major:minor" */
  devno: string;
  /** the device node to name: /dev/NAME, or /dev/mapper/NAME for device mapper */
  node: string;
  /** for a device stacked on the disk: the partition (or disk) it is built on */
  on?: string;
}

/** Device-mapper and RAID layers followed up from a disk, and devices looked at, at most. */
const MAX_DEPTH = 8;
const MAX_DEVS = 256;

/** A disk's sysfs directory and its partitions' (those with a `partition` file). */
function diskAndPartitions(sysDir: string): BlockDev[] {
  const out: BlockDev[] = [];
  const add = (dir: string) => {
    const devno = read(path.join(dir, "dev"))?.trim();
    if (devno && /^\d+:\d+$/.test(devno)) out.push({ name: path.basename(dir), devno, node: `/dev/${path.basename(dir)}` });
  };
  add(sysDir);
  let names: string[] = [];
  try {
    names = fs.readdirSync(sysDir);
  } catch {}
  for (const n of names) if (fs.existsSync(path.join(sysDir, n, "partition"))) add(path.join(sysDir, n));
  return out;
}

/**
 * The devices built on these (sysfs holders: LVM, dm-crypt, RAID), and on
 * those, a few layers up: a root file system on LVM on a partition is mounted
 * from the dm device, not from the partition.
 */
function withStacked(devs: BlockDev[]): BlockDev[] {
  const all = [...devs];
  const seen = new Set(all.map((d) => d.name));
  let layer = devs;
  for (let depth = 0; depth < MAX_DEPTH && layer.length && all.length < MAX_DEVS; depth++) {
    const next: BlockDev[] = [];
    for (const d of layer) {
      let holders: string[] = [];
      try {
        holders = fs.readdirSync(sysPath(`/sys/class/block/${d.name}/holders`));
      } catch {}
      for (const h of holders) {
        if (seen.has(h) || all.length + next.length >= MAX_DEVS) continue;
        seen.add(h);
        const devno = read(sysPath(`/sys/class/block/${h}/dev`))?.trim();
        if (!devno || !/^\d+:\d+$/.test(devno)) continue;
        const dmName = read(sysPath(`/sys/class/block/${h}/dm/name`))?.trim();
        next.push({ name: h, devno, node: dmName ? `/dev/mapper/${dmName}` : `/dev/${h}`, on: d.on ?? d.name });
      }
    }
    all.push(...next);
    layer = next;
  }
  return all;
}

/** Loop devices whose backing file is `file` (by /sys/block/loopN/loop/backing_file). */
function loopsBacking(file: string): string[] {
  let real: string;
  try {
    real = fs.realpathSync(file);
  } catch {
    return [];
  }
  let names: string[] = [];
  try {
    names = fs.readdirSync(sysPath("/sys/block")).filter((n) => /^loop\d+$/.test(n)).slice(0, MAX_LOOPS);
  } catch {}
  return names.filter((n) => read(sysPath(`/sys/block/${n}/loop/backing_file`))?.trim() === real).map((n) => sysPath(`/sys/block/${n}`));
}

/** The block devices (with their partitions) that hold `p`: itself if a disk, the loop devices of an image file. */
function devicesOf(p: string): BlockDev[] {
  const own = blockSysDir(p);
  if (own) return diskAndPartitions(own);
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(p);
  } catch {}
  if (!st?.isFile()) return [];
  const seen = new Set<string>();
  return loopsBacking(p).flatMap((d) => {
    try {
      return diskAndPartitions(fs.realpathSync(d));
    } catch {
      return [];
    }
  }).filter((d) => !seen.has(d.devno) && seen.add(d.devno));
}

/**
 * File systems mounted from `p` (a disk, or an image file through its loop
 * devices), its partitions, or devices built on them (LVM, dm-crypt, RAID).
 */
export function mountsOn(p: string): MountOnDisk[] {
  const devs = withStacked(devicesOf(p));
  if (devs.length === 0) return [];
  const byDevno = new Map(devs.map((d) => [d.devno, d]));
  const byName = new Map(devs.map((d) => [d.name, d]));
  const text = read(sysPath("/proc/self/mountinfo")) ?? "";
  const found: MountOnDisk[] = [];
  for (const line of text.split("\n").slice(0, MAX_LINES)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    const f = line.split(" ");
    const dash = f.indexOf("-", 6);
    if (f.length < 7 || dash < 0) continue;
    const source = unescape(f[dash + 2] ?? "");
    let dev = byDevno.get(f[2]!);
    if (!dev && source.startsWith("/dev/")) {
      // btrfs and others report an anonymous 0:N device: go by the source's name
      let real = source;
      try {
        real = fs.realpathSync(sysPath(source));
      } catch {}
      dev = byName.get(path.basename(real));
    }
    if (!dev) continue;
    const opts = (f[5] ?? "").split(",");
    const superOpts = (f[dash + 3] ?? "").split(",");
    found.push({ device: dev.node, ...(dev.on ? { on: dev.on } : {}), mountpoint: unescape(f[4]!), readOnly: opts.includes("ro") || superOpts.includes("ro") });
  }
  return found;
}

/** Every mount point of this mount namespace (mountinfo's fifth field, unescaped). */
export function mountPoints(): Set<string> {
  const out = new Set<string>();
  const text = read(sysPath("/proc/self/mountinfo")) ?? "";
  for (const line of text.split("\n").slice(0, MAX_LINES)) {
    const f = line.split(" ");
    if (f[4]) out.add(unescape(f[4]));
  }
  return out;
}

/** "/dev/sda2", or "/dev/mapper/vg-root (on sda2)" for a device built on the disk. */
export function describeDevice(m: MountOnDisk): string {
  return m.on ? `${m.device} (on ${m.on})` : m.device;
}

/** Devices stacked on the disk at `devPath` or its partitions (sysfs holders), as "dm-0 (on sda2)". */
export function stackedOn(devPath: string): string[] {
  const own = blockSysDir(devPath);
  if (!own) return [];
  const out: string[] = [];
  for (const d of diskAndPartitions(own)) {
    const dir = d.name === path.basename(own) ? own : path.join(own, d.name);
    let names: string[] = [];
    try {
      names = fs.readdirSync(path.join(dir, "holders"));
    } catch {}
    for (const h of names.slice(0, 64)) out.push(`${h} (on ${d.name})`);
  }
  return out;
}
