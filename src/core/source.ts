// Opening what push reads: a block device or a regular file (an image).
import * as fs from "node:fs";
import * as path from "node:path";
import { ptr } from "bun:ffi";
import { TbError, errnoText, isErrno } from "./errors.ts";
import { blockDeviceSize, diskIdentity } from "./identity.ts";
import { openDirect } from "./target.ts";
import type { DiskIdentity } from "../protocol/messages.ts";
import { SEEK_DATA, SEEK_HOLE, loadLibc } from "../util/libc.ts";
import { blockSysDir } from "../util/sysroot.ts";

export interface Source {
  fd: number;
  size: number;
  /** a regular file (which may have holes), not a block device */
  regularFile: boolean;
  disk: DiskIdentity;
  /**
   * Reads exactly buf.length bytes at `position`, or throws SOURCE: the data
   * of a disk with O_DIRECT where the kernel allows it (see directReader).
   */
  readAt(buf: Uint8Array, position: number): void;
  /**
   * A disk read with O_DIRECT: fills `bufs` in order with the bytes from
   * `position` on in one request, and says whether it could (see
   * directReader). Absent for an image file.
   */
  readMany?(bufs: Uint8Array[], position: number): boolean;
  close(): void;
}

export function openSource(path: string): Source {
  let fd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch (e) {
    if (isErrno(e, "ENOENT")) throw new TbError("SOURCE", `source ${path} does not exist`, "check the device or file name (lsblk lists disks)");
    if (isErrno(e, "EACCES", "EPERM")) throw new TbError("SOURCE", `cannot read ${path}: permission denied`, "run tbbackup as root");
    throw new TbError("SOURCE", `cannot open ${path}: ${errnoText(e)}`, "check the device or file");
  }
  try {
    const st = fs.fstatSync(fd);
    let size: number;
    if (st.isFile()) size = st.size;
    else if (st.isBlockDevice()) {
      const s = blockDeviceSize(path);
      if (s === null) throw new TbError("SOURCE", `cannot tell the size of ${path}`, "check that /sys is mounted");
      size = s;
    } else throw new TbError("SOURCE", `${path} is not a block device or a regular file`, "give a disk (e.g. /dev/nvme0n1) or an image file");
    const head = new Uint8Array(Math.min(8192, size));
    if (head.length > 0) readFully(fd, head, 0, path);
    const disk = diskIdentity(path, size, head, st.isBlockDevice());
    // an image file is read through the page cache (it is often there already, and O_DIRECT would read it from the disk again)
    const direct = st.isBlockDevice() ? openDirect(fd) : undefined;
    const reader = direct !== undefined ? directReader(fd, direct, logicalBlockSize(path), path) : null;
    const readAt = reader ?? ((buf: Uint8Array, position: number) => readFully(fd, buf, position, path));
    return {
      fd,
      size,
      regularFile: st.isFile(),
      disk,
      readAt,
      ...(reader ? { readMany: reader.many } : {}),
      close: () => {
        if (direct !== undefined) fs.closeSync(direct);
        fs.closeSync(fd);
      },
    };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** A disk's logical block size from sysfs (a partition's is its disk's); 4096, a multiple of every size in use, when it cannot be told. */
function logicalBlockSize(devPath: string): number {
  const dir = blockSysDir(devPath);
  for (const d of dir ? [dir, path.dirname(dir)] : []) {
    try {
      const n = Number(fs.readFileSync(path.join(d, "queue/logical_block_size"), "utf8").trim());
      if (Number.isSafeInteger(n) && n >= 512 && n <= 65536 && (n & (n - 1)) === 0) return n;
    } catch {}
  }
  return 4096;
}

const READ_HINT = "the disk may be failing; try a file-level backup (push --files) of what can still be read";

/** Reads exactly buf.length bytes at `position`, or throws SOURCE. */
export function readFully(fd: number, buf: Uint8Array, position: number, path: string): void {
  let off = 0;
  while (off < buf.length) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, off, buf.length - off, position + off);
    } catch (e) {
      throw new TbError("SOURCE", `read error on ${path} at byte ${position + off}: ${errnoText(e)}`, READ_HINT);
    }
    if (n === 0) throw new TbError("SOURCE", `${path} ended at byte ${position + off}, before its size`, "the source shrank while being read; run again");
    off += n;
  }
}

/**
 * Reads of a disk through `direct`, an O_DIRECT descriptor of it: the data
 * goes from the disk straight into the caller's buffer instead of through the
 * block device's page cache, which costs several times the read itself
 * (through a loop device, a fresh page for every 4 KiB, twice over) and
 * would fill the memory of the machine being rescued with a disk read once.
 * O_DIRECT needs the buffer, position and length aligned to the logical
 * block (`lbs`): an aligned request is read in place; any other goes through
 * an aligned scratch buffer over the blocks that hold it (never beyond them:
 * used-block imaging reads nothing outside the used ranges but what shares
 * their logical blocks). After the kernel refuses (EINVAL), reads go through
 * `fd` and the page cache. A request that fails otherwise is read again
 * through `fd`, which fails with readFully's error at the byte where the
 * disk stopped (or succeeds: the error was O_DIRECT's alone).
 *
 * `many(bufs, position)` reads consecutive buffers (chunks) in one request
 * (readv) when every one is aligned, and says whether it did: a disk serves
 * one 4 MiB request faster than four of 1 MiB in turn (through a loop device
 * here 0.14 against 0.21 s per GiB). When it did not (false), the caller
 * reads them a buffer at a time, as above, and a failure stops the push at
 * the chunk that fails, saying where and why. After a request that came short
 * or failed, `many` declines every run: a failing disk is read a chunk at a
 * time, and a bad sector is not tried again for every run around it.
 */
export function directReader(fd: number, direct: number, lbs: number, path: string): DirectReader {
  let directOk = true;
  /** false after a request of several buffers came short or failed (EINVAL included: read() finds out for itself) */
  let manyOk = true;
  let scratch: Uint8Array | null = null;
  const aligned = (n: number) => n % lbs === 0;
  /** reads buf at position through direct, at least its first `need` bytes: "ok", "refused" (EINVAL: O_DIRECT is not for this device) or "failed" */
  const readIn = (buf: Uint8Array, position: number, need: number): "ok" | "refused" | "failed" => {
    let off = 0;
    while (off < buf.length) {
      let n: number;
      try {
        n = fs.readSync(direct, buf, off, buf.length - off, position + off);
      } catch (e) {
        return isErrno(e, "EINVAL") ? "refused" : "failed";
      }
      if (n === 0) return off >= need ? "ok" : "failed"; // the end: readFully says where, if it came too soon
      off += n;
    }
    return "ok";
  };
  const read = (buf: Uint8Array, position: number): void => {
    if (buf.length === 0) return;
    if (directOk) {
      let got: "ok" | "refused" | "failed";
      if (aligned(ptr(buf)) && aligned(position) && aligned(buf.length)) got = readIn(buf, position, buf.length);
      else {
        const from = position - (position % lbs);
        const length = Math.ceil((position + buf.length - from) / lbs) * lbs;
        if (!scratch || scratch.length < length) {
          const b = new Uint8Array(length + 4096);
          const skew = ptr(b) % 4096;
          scratch = b.subarray(skew === 0 ? 0 : 4096 - skew);
        }
        // the blocks may run past the end of the source (whose size need not be a multiple of lbs)
        got = readIn(scratch.subarray(0, length), from, position - from + buf.length);
        if (got === "ok") buf.set(scratch.subarray(position - from, position - from + buf.length));
      }
      if (got === "ok") return;
      if (got === "refused") directOk = false;
    }
    readFully(fd, buf, position, path);
  };
  const many = (bufs: Uint8Array[], position: number): boolean => {
    if (!directOk || !manyOk || bufs.length < 2 || !aligned(position) || !bufs.every((b) => aligned(ptr(b)) && aligned(b.length))) return false;
    const total = bufs.reduce((sum, b) => sum + b.length, 0);
    try {
      if (fs.readvSync(direct, bufs, position) === total) return true;
    } catch {}
    manyOk = false;
    return false;
  };
  return Object.assign(read, { many });
}

/**
 * Reads consecutive chunks of `src` into `bufs` from `offset` (each cut to
 * what is left of the source) in one request: the bytes read, or 0 when it
 * could not be done so (the caller then reads them one by one).
 */
export function readRun(src: Source, bufs: Uint8Array[], offset: number): number {
  const parts: Uint8Array[] = [];
  let at = offset;
  for (const b of bufs) {
    const n = Math.max(0, Math.min(b.length, src.size - at));
    if (n === 0) break;
    parts.push(b.subarray(0, n));
    at += n;
  }
  return parts.length > 0 && src.readMany?.(parts, offset) ? at - offset : 0;
}

/** directReader's reads: one buffer at a position, or consecutive buffers from one. */
export type DirectReader = ((buf: Uint8Array, position: number) => void) & { many(bufs: Uint8Array[], position: number): boolean };

/** File systems whose SEEK_DATA/SEEK_HOLE we trust (statfs magic numbers). */
const EXACT_SEEK_DATA = new Set([
  0xef53, // ext2/3/4
  0x58465342, // xfs
  0x9123683e, // btrfs
  0x01021994, // tmpfs
  0xf2f52010, // f2fs
]);

/**
 * For a sparse image file: a test that tells whether [offset, offset+length)
 * lies wholly in a hole, from SEEK_DATA/SEEK_HOLE (about two calls per extent).
 * Reading a hole costs as much as reading data (the kernel zero-fills fresh
 * page-cache pages), and an image is often mostly holes. null when the calls
 * are unavailable; any answer that does not add up counts as data, so a doubt
 * costs a read, never a lost byte.
 */
export async function holeTest(fd: number, size: number, path: string): Promise<((offset: number, length: number) => boolean) | null> {
  // Only where SEEK_DATA is known to be exact: OpenZFS 2.1-2.2.1, for one,
  // reported holes over freshly written data (openzfs#15526).
  let fsType: number;
  try {
    fsType = fs.statfsSync(path).type;
  } catch {
    return null;
  }
  if (!EXACT_SEEK_DATA.has(fsType)) return null;
  const libc = await loadLibc();
  if (!libc || libc.lseek(fd, 0, SEEK_HOLE) < 0) return null;
  let holeFrom = 0;
  let holeUntil = 0; // [holeFrom, holeUntil) is known to be a hole
  let dataFrom = 0;
  let dataUntil = 0; // [dataFrom, dataUntil) is known to hold data
  return (offset, length) => {
    const end = offset + length;
    if (offset >= holeFrom && end <= holeUntil) return true;
    if (offset < dataUntil && end > dataFrom) return false;
    const d = libc.lseek(fd, offset, SEEK_DATA);
    if (d < 0) {
      // ENXIO: no data from offset to the end, which SEEK_HOLE confirms by answering offset itself
      if (libc.lseek(fd, offset, SEEK_HOLE) !== offset) return false;
      [holeFrom, holeUntil] = [offset, size];
      return end <= size;
    }
    if (d < offset) return false;
    if (d > offset) [holeFrom, holeUntil] = [offset, d];
    const h = libc.lseek(fd, d, SEEK_HOLE);
    [dataFrom, dataUntil] = [d, h > d ? h : size];
    return end <= d;
  };
}
