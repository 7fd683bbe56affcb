// ext2/ext3/ext4: which blocks are in use, from the superblock, the group
// descriptors and the block bitmaps (the way e2fsprogs' lib/ext2fs reads them:
// 32- and 64-bit descriptors, flex_bg, meta_bg, bigalloc, sparse_super(2)).
// Pure; every number is checked against the region before use.
//
// Rules (README, "Used-block imaging"):
// - a journal that needs recovery, a file system not cleanly unmounted (or
//   mounted read-write now), errors recorded in the superblock, or a feature
//   this code does not know: the file system is imaged whole;
// - a descriptor whose checksum fails: its group is counted fully used;
// - a group marked BLOCK_UNINIT (no bitmap written yet): what e2fsprogs would
//   compute, its superblock and descriptor copies plus every group's bitmaps
//   and inode tables that lie in it;
// - a block bitmap whose checksum (metadata_csum) fails: the group is fully used;
// - every group's superblock/descriptor copies, bitmaps and inode table are
//   marked used whatever the bitmaps say, and so is everything before the
//   first data block and after the last group.
import { DiskFormatError, byteOf, markBlocks, newUsedBlocks, readChecked, countUsed, type FsAnalysis, type ReadAt } from "./types.ts";
import { label, u16, u32, uuidBytes } from "./bytes.ts";
import { crc16, crc32cRaw } from "./crc.ts";

const MAGIC = 0xef53;
const STATE_VALID = 0x0001;
const STATE_ERRORS = 0x0002;

// feature bits (e2fsprogs lib/ext2fs/ext2_fs.h)
const COMPAT_HAS_JOURNAL = 0x4;
const COMPAT_SPARSE_SUPER2 = 0x200;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_MMP = 0x100;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_CSUM_SEED = 0x2000;
/** every incompat feature whose on-disk allocation we understand */
const INCOMPAT_KNOWN = 0x2 | INCOMPAT_RECOVER | INCOMPAT_JOURNAL_DEV | INCOMPAT_META_BG | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_MMP | INCOMPAT_FLEX_BG | 0x400 | 0x1000 | INCOMPAT_CSUM_SEED | 0x4000 | 0x8000 | 0x10000 | 0x20000;
const RO_SPARSE_SUPER = 0x1;
const RO_HUGE_FILE = 0x8;
const RO_GDT_CSUM = 0x10;
const RO_DIR_NLINK = 0x20;
const RO_EXTRA_ISIZE = 0x40;
const RO_BIGALLOC = 0x200;
const RO_METADATA_CSUM = 0x400;
/** ro_compat features known not to change what the block bitmaps mean */
const RO_KNOWN = 0x1 | 0x2 | 0x4 | RO_HUGE_FILE | RO_GDT_CSUM | RO_DIR_NLINK | RO_EXTRA_ISIZE | 0x100 | RO_BIGALLOC | RO_METADATA_CSUM | 0x1000 | 0x2000 | 0x8000 | 0x10000;

const BG_BLOCK_UNINIT = 0x2;

/** A used map larger than this (bits / 8) is not built: whole instead. */
const MAX_MAP_BYTES = 512 * 1024 * 1024;
/** Descriptors read in one call. */
const DESC_BATCH_BLOCKS = 256;

interface Geometry {
  blockSize: number;
  ratio: number; // blocks per cluster
  blocks: number;
  firstData: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  groups: number;
  descSize: number;
  descPerBlock: number;
  descBlocks: number;
  reservedGdt: number;
  firstMetaBg: number;
  compat: number;
  incompat: number;
  roCompat: number;
  backupBgs: [number, number];
  csumSeed: number;
  uuid: Uint8Array;
}

function whole(fs: string, size: number, reason: string, sb?: Uint8Array): FsAnalysis {
  return { fs, method: "whole", reason, usedBytes: size, size, ...(sb ? names(sb) : {}) };
}

function names(sb: Uint8Array): { label?: string; uuid?: string } {
  const l = label(sb, 0x78, 16);
  const u = uuidBytes(sb, 0x68);
  return { ...(l ? { label: l } : {}), ...(u ? { uuid: u } : {}) };
}

function fsName(compat: number, incompat: number, ro: number): string {
  if (incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_META_BG) || ro & (RO_HUGE_FILE | RO_GDT_CSUM | RO_DIR_NLINK | RO_EXTRA_ISIZE | RO_METADATA_CSUM | RO_BIGALLOC)) return "ext4";
  return compat & COMPAT_HAS_JOURNAL ? "ext3" : "ext2";
}

function isPowerOf(n: number, b: number): boolean {
  while (n > 1 && n % b === 0) n /= b;
  return n === 1;
}

function hasSuper(g: Geometry, group: number): boolean {
  if (group === 0) return true;
  if (g.compat & COMPAT_SPARSE_SUPER2) return group === g.backupBgs[0] || group === g.backupBgs[1];
  if (group <= 1 || !(g.roCompat & RO_SPARSE_SUPER)) return true;
  if (!(group & 1)) return false;
  return isPowerOf(group, 3) || isPowerOf(group, 5) || isPowerOf(group, 7);
}

function groupFirstBlock(g: Geometry, group: number): number {
  return g.firstData + group * g.blocksPerGroup;
}

/** The superblock and descriptor blocks held by a group, as [from, to) block ranges (ext2fs_super_and_bgd_loc2, plus reserved GDT). */
function superAndDescriptors(g: Geometry, group: number): [number, number][] {
  let first = groupFirstBlock(g, group);
  if (first === 0 && g.blockSize === 1024) first = 1; // 1 KiB blocks with bigalloc
  const out: [number, number][] = [];
  const sup = hasSuper(g, group);
  if (sup) out.push([first, first + 1]);
  const metaBg = Math.floor(group / g.descPerBlock);
  if (!(g.incompat & INCOMPAT_META_BG) || metaBg < g.firstMetaBg) {
    if (sup) {
      const old = g.incompat & INCOMPAT_META_BG ? g.firstMetaBg : g.descBlocks + g.reservedGdt;
      out.push([first + 1, first + 1 + old]);
    }
  } else {
    const r = group % g.descPerBlock;
    if (r === 0 || r === 1 || r === g.descPerBlock - 1) {
      const b = first + (sup ? 1 : 0);
      out.push([b, b + 1]);
    }
  }
  return out;
}

/** Block number of the i-th descriptor block (ext2fs_descriptor_block_loc2, primary copy). */
function descriptorBlock(g: Geometry, i: number): number {
  let groupBlock = g.firstData;
  if (groupBlock === 0 && g.blockSize === 1024) groupBlock = 1;
  if (!(g.incompat & INCOMPAT_META_BG) || i < g.firstMetaBg) return groupBlock + i + 1;
  const group = i * g.descPerBlock;
  return groupFirstBlock(g, group) + (hasSuper(g, group) ? 1 : 0);
}

function geometry(sb: Uint8Array, size: number): Geometry | string {
  const logBlock = u32(sb, 0x18);
  const logCluster = u32(sb, 0x1c);
  if (logBlock > 6) return "block size out of range";
  const blockSize = 1024 << logBlock;
  const compat = u32(sb, 0x5c);
  const incompat = u32(sb, 0x60);
  const roCompat = u32(sb, 0x64);
  const bigalloc = (roCompat & RO_BIGALLOC) !== 0;
  if (bigalloc ? logCluster < logBlock || logCluster > logBlock + 16 : logCluster !== logBlock && logCluster !== 0) return "cluster size out of range";
  const ratio = bigalloc ? 1 << (logCluster - logBlock) : 1;
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const blocks = u32(sb, 0x4) + (is64 ? u32(sb, 0x150) * 0x100000000 : 0);
  const firstData = u32(sb, 0x14);
  const blocksPerGroup = u32(sb, 0x20);
  const clustersPerGroup = bigalloc ? u32(sb, 0x24) : blocksPerGroup;
  if (firstData !== (blockSize === 1024 && !bigalloc ? 1 : 0)) return "first data block out of range";
  if (clustersPerGroup < 8 || clustersPerGroup > blockSize * 8 || clustersPerGroup % 8 !== 0) return "group size out of range";
  if (blocksPerGroup !== clustersPerGroup * ratio) return "group size contradicts the cluster size";
  if (blocks <= firstData || blocks * blockSize > size) return blocks * blockSize > size ? "the file system is larger than its partition" : "block count out of range";
  const groups = Math.ceil((blocks - firstData) / blocksPerGroup);
  const descSize = is64 ? u16(sb, 0xfe) : 32;
  if (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0 || (is64 && descSize < 64)) return "descriptor size out of range";
  const descPerBlock = blockSize / descSize;
  const descBlocks = Math.ceil(groups / descPerBlock);
  const reservedGdt = u16(sb, 0xce);
  if (reservedGdt > blockSize / 4) return "reserved descriptor blocks out of range";
  const firstMetaBg = incompat & INCOMPAT_META_BG ? u32(sb, 0x104) : descBlocks;
  if (firstMetaBg > descBlocks) return "first meta_bg out of range";
  if (Math.ceil(blocks / ratio) / 8 > MAX_MAP_BYTES) return "too many blocks to map";
  const uuid = sb.slice(0x68, 0x78);
  const csumSeed = incompat & INCOMPAT_CSUM_SEED ? u32(sb, 0x270) : crc32cRaw(0xffffffff, uuid);
  return { blockSize, ratio, blocks, firstData, blocksPerGroup, clustersPerGroup, groups, descSize, descPerBlock, descBlocks, reservedGdt, firstMetaBg, compat, incompat, roCompat, backupBgs: [u32(sb, 0x24c), u32(sb, 0x250)], csumSeed, uuid };
}

function le32(n: number): Uint8Array {
  return new Uint8Array([n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff]);
}

function descriptorOk(g: Geometry, group: number, d: Uint8Array): boolean {
  const stored = u16(d, 0x1e);
  const rest = d.subarray(0x20, g.descSize);
  if (g.roCompat & RO_METADATA_CSUM) {
    let c = crc32cRaw(g.csumSeed, le32(group));
    c = crc32cRaw(c, d.subarray(0, 0x1e));
    c = crc32cRaw(c, new Uint8Array(2));
    c = crc32cRaw(c, rest);
    return (c & 0xffff) === stored;
  }
  if (g.roCompat & RO_GDT_CSUM) {
    let c = crc16(0xffff, g.uuid);
    c = crc16(c, le32(group));
    c = crc16(c, d.subarray(0, 0x1e));
    c = crc16(c, rest);
    return c === stored;
  }
  return true;
}

interface Desc {
  ok: boolean;
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  bitmapCsum: number;
}

export function analyzeExt(read: ReadAt, size: number): FsAnalysis | null {
  if (size < 2048) return null;
  const sb = readChecked(read, 1024, 1024, "the ext superblock");
  if (u16(sb, 0x38) !== MAGIC) return null;
  const compat = u32(sb, 0x5c);
  const incompat = u32(sb, 0x60);
  const roCompat = u32(sb, 0x64);
  const fs = fsName(compat, incompat, roCompat);
  if (incompat & INCOMPAT_JOURNAL_DEV) return whole("ext-journal", size, "an external ext journal device", sb);
  if (roCompat & RO_METADATA_CSUM && u32(sb, 0x3fc) !== crc32cRaw(0xffffffff, sb.subarray(0, 0x3fc))) return whole(fs, size, "superblock checksum mismatch", sb);
  if (incompat & INCOMPAT_RECOVER) return whole(fs, size, "journal needs recovery (not cleanly unmounted)", sb);
  if (u16(sb, 0x3a) & STATE_ERRORS || u32(sb, 0x194) > 0) return whole(fs, size, "errors recorded in the superblock (run fsck)", sb);
  // mounted read-write now, or not unmounted cleanly (without a journal its bitmaps may be stale)
  if (!(u16(sb, 0x3a) & STATE_VALID)) return whole(fs, size, "not cleanly unmounted (in use, or run fsck)", sb);
  if (incompat & ~INCOMPAT_KNOWN || roCompat & ~RO_KNOWN) return whole(fs, size, "file-system features this version does not know", sb);
  const g = geometry(sb, size);
  if (typeof g === "string") return whole(fs, size, `superblock damaged (${g})`, sb);

  const clusterSize = g.blockSize * g.ratio;
  const clusters = Math.ceil(g.blocks / g.ratio);
  const used = newUsedBlocks(clusterSize, clusters);
  const markBlockRange = (from: number, to: number) => markBlocks(used, Math.floor(from / g.ratio), Math.ceil(to / g.ratio));
  const inFs = (b: number) => Number.isSafeInteger(b) && b >= g.firstData && b < g.blocks;

  // everything before the first group (the boot block with 1 KiB blocks)
  markBlockRange(0, g.firstData + 1);
  if (g.incompat & INCOMPAT_MMP) {
    const mmp = u32(sb, 0x168) + u32(sb, 0x16c) * 0x100000000;
    if (inFs(mmp)) markBlockRange(mmp, mmp + 1);
  }

  // the descriptors, read a batch of blocks at a time
  const descs: Desc[] = new Array(g.groups);
  const is64 = g.descSize >= 64 && (g.incompat & INCOMPAT_64BIT) !== 0;
  for (let i = 0; i < g.descBlocks; ) {
    // consecutive blocks in the old layout; one block each with meta_bg
    let n = 1;
    const first = descriptorBlock(g, i);
    while (n < DESC_BATCH_BLOCKS && i + n < g.descBlocks && descriptorBlock(g, i + n) === first + n) n++;
    if (!inFs(first) || first + n > g.blocks) throw new DiskFormatError("group descriptors lie outside the file system");
    const buf = readChecked(read, first * g.blockSize, n * g.blockSize, "the group descriptors");
    for (let k = 0; k < n * g.descPerBlock; k++) {
      const group = i * g.descPerBlock + k;
      if (group >= g.groups) break;
      const d = buf.subarray(k * g.descSize, (k + 1) * g.descSize);
      const hi = (o: number) => (is64 ? u32(d, o) * 0x100000000 : 0);
      descs[group] = {
        ok: descriptorOk(g, group, d),
        blockBitmap: u32(d, 0) + hi(0x20),
        inodeBitmap: u32(d, 4) + hi(0x24),
        inodeTable: u32(d, 8) + hi(0x28),
        flags: u16(d, 0x12),
        bitmapCsum: u16(d, 0x18) + (g.descSize >= 0x3c ? u16(d, 0x38) * 0x10000 : 0),
      };
    }
    i += n;
  }

  const inodesPerGroup = u32(sb, 0x28);
  const inodeSize = u32(sb, 0x4c) === 0 ? 128 : u16(sb, 0x58);
  if (inodesPerGroup === 0 || inodesPerGroup > g.blockSize * 8 || inodeSize < 128 || inodeSize > g.blockSize || (inodeSize & (inodeSize - 1)) !== 0)
    return whole(fs, size, "superblock damaged (inode geometry out of range)", sb);
  const itableBlocks = Math.ceil((inodesPerGroup * inodeSize) / g.blockSize);
  const uninitOk = (g.roCompat & (RO_GDT_CSUM | RO_METADATA_CSUM)) !== 0;
  const bitmapBytes = g.clustersPerGroup / 8;

  for (let group = 0; group < g.groups; group++) {
    const start = groupFirstBlock(g, group);
    const end = Math.min(start + g.blocksPerGroup, g.blocks);
    for (const [a, b] of superAndDescriptors(g, group)) markBlockRange(a, Math.min(b, end));
    const d = descs[group]!;
    const metaOk = d.ok && inFs(d.blockBitmap) && inFs(d.inodeBitmap) && inFs(d.inodeTable) && d.inodeTable + itableBlocks <= g.blocks;
    if (!metaOk) {
      markBlockRange(start, end);
      continue;
    }
    markBlockRange(d.blockBitmap, d.blockBitmap + 1);
    markBlockRange(d.inodeBitmap, d.inodeBitmap + 1);
    markBlockRange(d.inodeTable, d.inodeTable + itableBlocks);
    if (d.flags & BG_BLOCK_UNINIT && uninitOk) continue; // its metadata, wherever it lies, is marked above and below
    const bm = readChecked(read, d.blockBitmap * g.blockSize, g.blockSize, "a block bitmap");
    if (g.roCompat & RO_METADATA_CSUM) {
      const c = crc32cRaw(g.csumSeed, bm.subarray(0, bitmapBytes));
      if ((g.descSize >= 0x3c ? c : c & 0xffff) !== d.bitmapCsum) {
        markBlockRange(start, end);
        continue;
      }
    }
    const base = start / g.ratio; // firstData is 0 with bigalloc, so this is whole
    const n = Math.ceil((end - start) / g.ratio);
    let j = 0;
    if ((base & 7) === 0) {
      // whole bytes (4 KiB blocks; 1 KiB blocks start each group at an odd block)
      const b0 = byteOf(base);
      for (; j + 8 <= n; j += 8) used.bitmap[b0 + (j >> 3)]! |= bm[j >> 3]!;
    }
    for (; j < n; j++) {
      if (bm[j >> 3]! & (1 << (j & 7))) {
        const c = base + j;
        used.bitmap[byteOf(c)]! |= 1 << (c & 7);
      }
    }
  }
  // with flex_bg, a BLOCK_UNINIT group may hold other groups' bitmaps and tables: marked above for every group
  const usedBytes = Math.min(size, countUsed(used) * clusterSize) + Math.max(0, size - clusters * clusterSize);
  return { fs, ...names(sb), method: "used-blocks", used, usedBytes, size };
}
