// What the used-block analysis of a disk works on and returns. Every module in
// src/disk/ is pure: it reads through a ReadAt function and does no I/O of its
// own. A number read from a disk is a claim: each parser caps it before use,
// and a damaged or hostile structure gives method "whole" with a reason, never
// a crash, a hang or a huge allocation. A block the code cannot prove unused
// is imaged (README, "Used-block imaging").

/**
 * Reads `length` bytes at `offset` (relative to the start of the region being
 * analysed: a partition, or the whole disk for the partition table). Returns
 * exactly `length` bytes, or throws (past the end, or an I/O error). Callers
 * never ask for more than MAX_READ bytes at once.
 */
export type ReadAt = (offset: number, length: number) => Uint8Array;

/** The most a parser asks ReadAt for in one call. */
export const MAX_READ = 16 * 1024 * 1024;

/**
 * Which blocks of a region must be imaged: bit i (byte floor(i / 8), bit i & 7,
 * least significant first) covers bytes [i * blockSize, (i + 1) * blockSize).
 * Bytes of the region past blocks * blockSize are always imaged.
 */
export interface UsedBlocks {
  blockSize: number;
  blocks: number;
  bitmap: Uint8Array;
}

export type Method = "used-blocks" | "whole" | "header-only";

export interface FsAnalysis {
  /** "ext2", "ext3", "ext4", "xfs", "vfat", "ntfs", "swap", "btrfs", "luks", "lvm2", ..., or "unknown" */
  fs: string;
  label?: string;
  uuid?: string;
  method: Method;
  /** why whole (or header-only); a short phrase a user reads, e.g. "journal needs recovery" */
  reason?: string;
  /** with used-blocks and header-only: the blocks to image */
  used?: UsedBlocks;
  /** bytes that will be imaged (the used map's set blocks plus any tail past it; size for whole) */
  usedBytes: number;
  /** the region's size in bytes */
  size: number;
}

export interface Partition {
  /** 1-based, as the kernel numbers it (MBR logical partitions from 5) */
  index: number;
  /** byte offset on the disk and length in bytes */
  start: number;
  length: number;
  /** GPT type GUID (lower-case, dashed) or MBR type as "0x83" */
  type: string;
  /** GPT partition name */
  name?: string;
  /** GPT unique partition GUID */
  uuid?: string;
}

export interface PartitionTable {
  type: "gpt" | "mbr" | "none";
  sectorSize: number;
  partitions: Partition[];
  /** e.g. "primary GPT header damaged: the backup header was used" */
  note?: string;
}

/**
 * The byte of a used map that holds block `i`'s bit. Not `i >> 3`: shifts
 * work on 32-bit integers, and a file system of 2^31 blocks or more (8 TiB at
 * 4 KiB) would have its later blocks land on no byte (or on an early one).
 * (`1 << (i & 7)` is right for any block: `&` keeps the low bits.)
 */
export function byteOf(i: number): number {
  return Math.floor(i / 8);
}

/** Sets bits [from, to) of a used map. */
export function markBlocks(u: UsedBlocks, from: number, to: number): void {
  const end = Math.min(to, u.blocks);
  for (let i = Math.max(0, from); i < end; ) {
    if ((i & 7) === 0 && i + 8 <= end) {
      u.bitmap[byteOf(i)] = 0xff;
      i += 8;
    } else {
      u.bitmap[byteOf(i)]! |= 1 << (i & 7);
      i++;
    }
  }
}

export function newUsedBlocks(blockSize: number, blocks: number): UsedBlocks {
  return { blockSize, blocks, bitmap: new Uint8Array(Math.ceil(blocks / 8)) };
}

/** Counts set bits (the used blocks). */
export function countUsed(u: UsedBlocks): number {
  let n = 0;
  for (let i = 0; i < u.bitmap.length; i++) {
    let b = u.bitmap[i]!;
    while (b) {
      b &= b - 1;
      n++;
    }
  }
  return n;
}

/**
 * What a parser throws when a structure is damaged, contradicts itself or
 * cannot be read: the caller images that region whole and shows `message`.
 */
export class DiskFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DiskFormatError";
  }
}

/** read() with every failure (past the end, an I/O error, a short answer) as a DiskFormatError. */
export function readChecked(read: ReadAt, offset: number, length: number, what: string): Uint8Array {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || length > MAX_READ)
    throw new DiskFormatError(`${what} lies outside what can be read`);
  let b: Uint8Array;
  try {
    b = read(offset, length);
  } catch (e) {
    throw new DiskFormatError(`cannot read ${what}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (b.length !== length) throw new DiskFormatError(`cannot read ${what}: short read`);
  return b;
}
