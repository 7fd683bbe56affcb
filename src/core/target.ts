// The restore target: a block device (opened O_EXCL, so a mounted or in-use
// disk is refused) or a regular file (created sparse).
import * as fs from "node:fs";
import * as path from "node:path";
import { TbError, errnoCode, errnoText, isErrno, outcome } from "./errors.ts";
import { blockDeviceSize, diskIdentity } from "./identity.ts";
import type { DiskIdentity } from "../protocol/messages.ts";
import { describeDevice, mountsOn, stackedOn } from "../util/mounts.ts";

export interface TargetInfo {
  path: string;
  kind: "block" | "file";
  exists: boolean;
  /** current size (a new file: 0) */
  size: number;
  identity: DiskIdentity;
}

/** Looks at the target without changing it. */
export function inspectTarget(path: string): TargetInfo {
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(path);
  } catch (e) {
    if (!isErrno(e, "ENOENT")) throw new TbError("TARGET", `cannot look at ${path}: ${errnoText(e)}`, "check the target path");
  }
  // Under /dev a new or regular file is a mistake: a disk whose name was mistyped
  // or whose driver is not loaded yet. Writing "the disk" into a RAM file there
  // and reporting success would leave the real disk empty.
  if (st?.isFile() !== false && underDev(path))
    throw new TbError(
      "TARGET",
      st ? `${path} is a regular file under /dev, not a disk` : `${path} does not exist`,
      st ? "remove it (an earlier mistake?) and check the disk name (lsblk lists disks)" : "check the disk name (lsblk lists disks); a disk that is not there yet may need its driver loaded",
    );
  if (!st) return { path, kind: "file", exists: false, size: 0, identity: diskIdentity(path, 0, new Uint8Array(0), false) };
  if (st.isBlockDevice()) {
    const size = blockDeviceSize(path);
    if (size === null) throw new TbError("TARGET", `cannot tell the size of ${path}`, "check that /sys is mounted");
    const head = new Uint8Array(Math.min(8192, size));
    try {
      const fd = fs.openSync(path, "r");
      fs.readSync(fd, head, 0, head.length, 0);
      fs.closeSync(fd);
    } catch {}
    return { path, kind: "block", exists: true, size, identity: diskIdentity(path, size, head, true) };
  }
  if (st.isFile()) return { path, kind: "file", exists: true, size: st.size, identity: diskIdentity(path, st.size, new Uint8Array(0), false) };
  throw new TbError("TARGET", `${path} is not a block device or a regular file`, "restore onto a disk (e.g. /dev/nvme0n1) or an image file");
}

const IN_USE_HINT = "unmount it (and its partitions) and stop what uses it, then run restore again; the target was not changed";

/**
 * Refuses a block-device target that is in use, before anything else is asked
 * or said about it: a file system mounted from it or one of its partitions, a
 * device stacked on it (device mapper, RAID), or any other exclusive holder
 * (an O_EXCL open fails with EBUSY).
 */
export function assertNotInUse(t: TargetInfo): void {
  if (t.kind !== "block") return;
  const mounts = mountsOn(t.path);
  if (mounts.length) {
    const where = mounts.slice(0, 3).map((m) => `${describeDevice(m)} is mounted on ${m.mountpoint}`).join(", ");
    throw new TbError("TARGET", `${t.path} is in use: ${where}${mounts.length > 3 ? ` and ${mounts.length - 3} more` : ""}`, IN_USE_HINT);
  }
  const stacked = stackedOn(t.path);
  if (stacked.length) throw new TbError("TARGET", `${t.path} is in use: ${stacked.slice(0, 3).join(", ")} ${stacked.length === 1 ? "is" : "are"} built on it (device mapper, RAID, ...)`, IN_USE_HINT);
  let fd: number;
  try {
    fd = fs.openSync(t.path, fs.constants.O_RDONLY | fs.constants.O_EXCL);
  } catch (e) {
    if (isErrno(e, "EBUSY")) throw new TbError("TARGET", `${t.path} is in use (held by another program)`, IN_USE_HINT);
    return; // other failures are reported when the target is opened for writing
  }
  fs.closeSync(fd);
}

/** True when the first MiB of a disk or file is all zeros (a new disk, the usual replacement). */
export function isBlank(p: string): boolean {
  const head = new Uint8Array(1024 * 1024);
  try {
    const fd = fs.openSync(p, "r");
    try {
      const n = fs.readSync(fd, head, 0, head.length, 0);
      return head.subarray(0, n).every((x) => x === 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

/** Whether a path (its directory resolved through symlinks) lies in /dev, outside /dev/shm (a tmpfs for files). */
function underDev(p: string): boolean {
  let dir = path.dirname(path.resolve(p));
  try {
    dir = fs.realpathSync(dir);
  } catch {}
  if (dir === "/dev/shm" || dir.startsWith("/dev/shm/")) return false;
  return dir === "/dev" || dir.startsWith("/dev/");
}

/** Refuses a target that is one of the backup's own files (it would be truncated before being read). */
export function notTheBackup(t: TargetInfo, backupFiles: string[]): void {
  if (!t.exists) return;
  const a = fs.statSync(t.path, { throwIfNoEntry: false });
  for (const f of backupFiles) {
    const b = fs.statSync(f, { throwIfNoEntry: false });
    if (a && b && a.dev === b.dev && a.ino === b.ino)
      throw new TbError("TARGET", `${t.path} is a file of the backup being restored (${f})`, "choose another target; the backup was not changed");
  }
}

/**
 * Opens the target for writing `size` bytes. A block device must be at least
 * that large and is opened exclusively; a file is (re)created sparse, or with
 * `keep` (a delta restore) kept as it is, cut or extended to `size`.
 */
export function openTarget(t: TargetInfo, size: number, keep = false): number {
  if (t.kind === "block") {
    if (t.size < size)
      throw new TbError("TARGET", `${t.path} holds ${t.size} bytes but the backup needs ${size}`, "restore onto a disk at least as large as the original");
    try {
      return fs.openSync(t.path, fs.constants.O_RDWR | fs.constants.O_EXCL);
    } catch (e) {
      if (isErrno(e, "EBUSY"))
        throw new TbError("TARGET", `${t.path} is in use (mounted, or held by another program)`, IN_USE_HINT);
      throw new TbError("TARGET", `cannot open ${t.path} for writing: ${errnoText(e)}`, "run restore as root on an unmounted disk");
    }
  }
  try {
    const fd = fs.openSync(t.path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    // Start from nothing so that skipped zero chunks read back as zeros (holes);
    // a delta restore writes zeros where the file holds other data.
    if (!keep) fs.ftruncateSync(fd, 0);
    fs.ftruncateSync(fd, size);
    return fd;
  } catch (e) {
    if (isErrno(e, "ENOSPC", "EFBIG")) throw new TbError("TARGET", `no room for ${size} bytes at ${t.path}: ${errnoText(e)}`, "free space or choose another target");
    throw new TbError("TARGET", `cannot create ${t.path}: ${errnoText(e)}`, "check the directory and permissions");
  }
}

/**
 * A second descriptor of a disk, read-only with O_DIRECT, for reading what
 * it holds (a delta restore's comparison, the read-back, push): the data
 * comes straight from the disk instead of through the block device's page
 * cache, which costs several times the read itself (through a loop device,
 * twice over) and would serve the read-back from memory. undefined for a
 * regular file, or where the kernel refuses: the caller reads through fd.
 */
export function openDirect(fd: number): number | undefined {
  try {
    if (!fs.fstatSync(fd).isBlockDevice()) return undefined;
    return fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch {
    return undefined;
  }
}

/** pwrite all of buf at position, mapping failures to one clear error. */
export function writeAt(fd: number, buf: Uint8Array, position: number, path: string): void {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off, position + off);
    } catch (e) {
      throw targetWriteError(path, position + off, e);
    }
  }
}

/** A write to the target failed (`e`: the error, or the errno code a worker reported). */
export function targetWriteError(path: string, position: number, e: unknown): TbError {
  if (["ENOSPC", "EDQUOT", "EFBIG"].includes(errnoCode(e)))
    return new TbError("TARGET", `${path} is full at byte ${position}`, "free space or use a larger target, then restore again", [], outcome.target());
  return new TbError("TARGET", `write error on ${path} at byte ${position}: ${errnoText(e)}`, "check the disk and restore again", [], outcome.target());
}
