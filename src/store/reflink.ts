// Shared frames (docs/FORMAT.md §3.5): on a file system that can reflink
// (btrfs, XFS made with reflink=1), large frames start on file-system block
// boundaries and an unchanged chunk's stored frame is cloned from the base
// backup's image (FICLONERANGE) instead of copied, so the two files share
// those blocks. Elsewhere frames are written as they always were.
import * as fs from "node:fs";
import * as path from "node:path";
import { loadLibc, type Libc } from "../util/libc.ts";
import { pwriteAll } from "../util/fsio.ts";
import { isAlignment, paddingFrame } from "./seekable.ts";
import { TbError } from "../errors.ts";

/** Where a recorded frame goes, and the padding around it; handed to whoever writes the frame. */
export interface FrameWrite {
  fd: number;
  /** where the frame starts */
  position: number;
  /** padding that ends the previous entry, written just before `position` */
  lead?: number;
  /** padding after the frame, in its own entry */
  trail?: number;
  /** the same bytes (frame and trailing padding) in another image, block-aligned: cloned instead of written where the file system can */
  clone?: { fd: number; offset: number; length: number };
}

/**
 * Writes a recorded frame and its padding (throws the write's error). Its
 * bytes and trailing padding are cloned instead when the write offers a clone
 * and `clone` (FICLONERANGE) succeeds; a file system that refuses gets a copy.
 * Returns whether they were cloned.
 */
export function writeFrame(w: FrameWrite, frame: Uint8Array, clone?: Libc["cloneRange"] | null): boolean {
  if (w.lead) pwriteAll(w.fd, paddingFrame(w.lead), w.position - w.lead);
  if (w.clone && clone && clone(w.fd, w.clone.fd, w.clone.offset, w.clone.length, w.position) === 0) return true;
  pwriteAll(w.fd, frame, w.position);
  if (w.trail) pwriteAll(w.fd, paddingFrame(w.trail), w.position + frame.length);
  return false;
}

/** The smallest chunk, in file-system blocks, whose frames are aligned on their own (docs/FORMAT.md §3.5). */
export const MIN_BLOCKS_PER_CHUNK = 32;

/**
 * TBBACKUP_REFLINK as set: null when unset (the file system decides), 0 (off),
 * or the block size to pad to. Any other value is refused (a USAGE error),
 * never taken as unset: a tester who wrote "off" must not get alignment.
 */
export function reflinkSetting(): number | null {
  const v = process.env.TBBACKUP_REFLINK;
  if (v === undefined || v === "") return null;
  if (v === "0") return 0;
  if (/^[1-9]\d*$/.test(v) && isAlignment(Number(v))) return Number(v);
  throw new TbError("USAGE", `TBBACKUP_REFLINK=${JSON.stringify(v).slice(1, -1).slice(0, 40)} is neither 0 nor a block size (a power of two from 4096 to 65536)`, "unset it (the store's file system decides), or set 0 or e.g. 4096");
}

/**
 * The block size frames are aligned to in `dir`, when its file system can
 * clone ranges between files (checked by cloning a block of a scratch file);
 * 0 where it cannot (ext4, tmpfs, ...): then nothing is padded.
 * Chunks smaller than MIN_BLOCKS_PER_CHUNK blocks are not aligned: their
 * padding would cost more than sharing saves (a 4 KiB chunk's frame of 4109
 * bytes would take 8 KiB).
 * TBBACKUP_REFLINK in the environment (reflinkSetting): 0 turns it off; a
 * power of two from 4096 to 65536 pads to that whatever the file system and
 * chunk size (clones that fail are copies), to test the layout on any store.
 */
export async function reflinkAlignment(dir: string, chunkSize: number): Promise<number> {
  const forced = reflinkSetting();
  if (forced !== null) return forced;
  let bsize: number;
  try {
    bsize = Number(fs.statfsSync(dir).bsize);
  } catch {
    return 0;
  }
  if (!isAlignment(bsize) || chunkSize < MIN_BLOCKS_PER_CHUNK * bsize) return 0;
  const libc = await loadLibc();
  if (!libc) return 0;
  const probe = path.join(dir, `.tbbackup-reflink-${process.pid}-${Math.random().toString(36).slice(2)}`);
  let fd = -1;
  try {
    fd = fs.openSync(probe, "wx+", 0o600);
    pwriteAll(fd, new Uint8Array(bsize).fill(0x5a), 0);
    return libc.cloneRange(fd, fd, 0, bsize, bsize) === 0 ? bsize : 0;
  } catch {
    return 0;
  } finally {
    if (fd >= 0) fs.closeSync(fd);
    fs.rmSync(probe, { force: true });
  }
}
