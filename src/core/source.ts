// Opening what push reads: a block device or a regular file (an image).
import * as fs from "node:fs";
import { TbError, errnoText, isErrno } from "./errors.ts";
import { blockDeviceSize, diskIdentity } from "./identity.ts";
import type { DiskIdentity } from "../protocol/messages.ts";
import { SEEK_DATA, SEEK_HOLE, loadLibc } from "../util/libc.ts";

export interface Source {
  fd: number;
  size: number;
  /** a regular file (which may have holes), not a block device */
  regularFile: boolean;
  disk: DiskIdentity;
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
    return { fd, size, regularFile: st.isFile(), disk: diskIdentity(path, size, head, st.isBlockDevice()), close: () => fs.closeSync(fd) };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Reads exactly buf.length bytes at `position`, or throws SOURCE. */
export function readFully(fd: number, buf: Uint8Array, position: number, path: string): void {
  let off = 0;
  while (off < buf.length) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, off, buf.length - off, position + off);
    } catch (e) {
      throw new TbError("SOURCE", `read error on ${path} at byte ${position + off}: ${errnoText(e)}`, "the disk may be failing; try a file-level backup (push --files) of what can still be read");
    }
    if (n === 0) throw new TbError("SOURCE", `${path} ended at byte ${position + off}, before its size`, "the source shrank while being read; run again");
    off += n;
  }
}

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
