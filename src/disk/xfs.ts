// XFS used-block analysis: which file-system blocks of an XFS data device hold
// anything. Reads the superblock, each allocation group's AGF and AGFL, and the
// free-space B+tree by block number; the extents that tree lists are unused,
// every other block (AG headers, btrees, inodes, the internal log, data) is
// used. The log must be clean (last record an unmount record), else the whole
// device is imaged: a log replay may write into blocks the tree calls free.
// Pure: reads only through ReadAt. Rules and limits: docs/USED-BLOCKS.md.

import { DiskFormatError, type FsAnalysis, type ReadAt, type UsedBlocks, byteOf, countUsed, markBlocks, newUsedBlocks, readChecked } from "./types.ts";
import { crc32cRaw } from "./crc.ts";
import { isPow2, equal, uuidBytes } from "./bytes.ts";

const XFS_SB_MAGIC = 0x58465342; // "XFSB"
const XFS_AGF_MAGIC = 0x58414746; // "XAGF"
const XFS_AGFL_MAGIC = 0x5841464c; // "XAFL"
const XFS_ABTB_MAGIC = 0x41425442; // "ABTB", by-block free-space btree, v4
const XFS_ABTB_CRC_MAGIC = 0x41423342; // "AB3B", the same with CRC, v5
const XLOG_HEADER_MAGIC = 0xfeedbabe;
const XLOG_UNMOUNT_TRANS = 0x20;

const SB_VERSION_LOGV2 = 0x0400;
/** v5 incompat features this reader knows (ftype, sparse inodes, meta uuid, bigtime, needsrepair, nrext64, exchange range, parent pointers). */
const KNOWN_INCOMPAT = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80;
const INCOMPAT_META_UUID = 0x04;
const INCOMPAT_NEEDSREPAIR = 0x10;
/** v5 read-only-compatible features this reader knows (finobt, rmapbt, reflink, inobtcount). */
const KNOWN_RO_COMPAT = 0x01 | 0x02 | 0x04 | 0x08;

/** Caps on what the superblock and the AGF may claim. */
const MAX_AG_COUNT = 1 << 20;
const MIN_AG_BLOCKS = 64;
const MAX_BTREE_LEVELS = 9;
/** The largest internal log XFS makes is 2 GiB. */
const MAX_LOG_BYTES = 2 * 1024 * 1024 * 1024;
/** Unfinished log writes lie within this many 512-byte blocks before the head (the kernel's 8 iclogs of 256 KiB, doubled). */
const HOLE_WINDOW = 8192;
/** The most 512-byte blocks one log record spans (256 KiB of data plus its header blocks). */
const MAX_RECORD_BBS = 520;
const BBSIZE = 512;

/** A structure on disk that cannot be trusted: the analysis ends with method "whole". */
export class XfsDamage extends DiskFormatError {
  override name = "XfsDamage";
}

export function analyzeXfs(read: ReadAt, size: number): FsAnalysis | null {
  let head: Uint8Array;
  try {
    head = read(0, 512);
  } catch {
    return null;
  }
  if (head.length < 512) return null;
  if (be32(head, 0) !== XFS_SB_MAGIC) return null;
  const whole = (reason: string, label?: string, uuid?: string): FsAnalysis => ({ fs: "xfs", label, uuid, method: "whole", reason, usedBytes: size, size });
  const r: ReadAt = (offset, length) => readChecked(read, offset, length, `${length} bytes at ${offset}`);
  let sb: Superblock;
  try {
    sb = readSuperblock(r, size);
  } catch (e) {
    if (e instanceof DiskFormatError) return whole(e.message);
    throw e;
  }
  try {
    const used = usedMap(r, sb);
    return { fs: "xfs", label: sb.label, uuid: sb.uuid, method: "used-blocks", used, usedBytes: countUsed(used) * used.blockSize + (size - used.blocks * used.blockSize), size };
  } catch (e) {
    if (e instanceof DiskFormatError) return whole(e.message, sb.label, sb.uuid);
    throw e;
  }
}

interface Superblock {
  blockSize: number;
  sectSize: number;
  dblocks: number;
  agBlocks: number;
  agCount: number;
  agBlkLog: number;
  logStart: number; // linear block number, 0 when the log is external
  logBlocks: number;
  v5: boolean;
  logV2: boolean;
  metaUuid: Uint8Array;
  label?: string;
  uuid: string | undefined;
}

function readSuperblock(r: ReadAt, size: number): Superblock {
  const b = r(0, 512);
  const blockSize = be32(b, 4);
  const sectSize = be16(b, 102);
  if (!isPow2(blockSize) || blockSize < 512 || blockSize > 65536) throw new XfsDamage(`superblock: block size ${blockSize} is not a power of two from 512 to 65536`);
  if (!isPow2(sectSize) || sectSize < 512 || sectSize > 32768 || sectSize > blockSize) throw new XfsDamage(`superblock: sector size ${sectSize} is invalid`);
  if (b[120] !== Math.log2(blockSize)) throw new XfsDamage("superblock: block size and its log disagree");
  const version = be16(b, 100) & 0x000f;
  if (version !== 4 && version !== 5) throw new XfsDamage(`superblock: version ${version} is not 4 or 5`);
  const v5 = version === 5;
  const sector = sectSize === 512 ? b : r(0, sectSize);
  if (v5 && !crcOk(sector, 224)) throw new XfsDamage("superblock checksum is wrong");
  if (sector[126] !== 0) throw new XfsDamage("superblock says mkfs did not finish (sb_inprogress)");
  const dblocks = be64(sector, 8);
  const agBlocks = be32(sector, 84);
  const agCount = be32(sector, 88);
  const agBlkLog = sector[124]!;
  if (dblocks <= 0 || dblocks > Number.MAX_SAFE_INTEGER) throw new XfsDamage("superblock: block count invalid");
  if (dblocks * blockSize > size) throw new XfsDamage(`file system (${dblocks * blockSize} bytes) is larger than its partition (${size} bytes)`);
  if (agBlocks < MIN_AG_BLOCKS || agBlocks > 2 ** 31) throw new XfsDamage(`superblock: AG size ${agBlocks} blocks is out of range`);
  if (agBlkLog !== Math.ceil(Math.log2(agBlocks))) throw new XfsDamage("superblock: AG size and its log disagree");
  if (agCount < 1 || agCount > MAX_AG_COUNT) throw new XfsDamage(`superblock: AG count ${agCount} is out of range`);
  if (agCount !== Math.ceil(dblocks / agBlocks)) throw new XfsDamage(`superblock: ${agCount} AGs of ${agBlocks} blocks do not make ${dblocks} blocks`);
  if (v5) {
    const incompat = be32(sector, 216);
    const roCompat = be32(sector, 212);
    if (incompat & INCOMPAT_NEEDSREPAIR) throw new XfsDamage("file system is marked as needing xfs_repair");
    if (incompat & ~KNOWN_INCOMPAT) throw new XfsDamage(`unknown incompatible feature bits 0x${(incompat & ~KNOWN_INCOMPAT).toString(16)}`);
    if (roCompat & ~KNOWN_RO_COMPAT) throw new XfsDamage(`unknown read-only feature bits 0x${(roCompat & ~KNOWN_RO_COMPAT).toString(16)}`);
  }
  const incompat = v5 ? be32(sector, 216) : 0;
  const metaUuid = v5 && incompat & INCOMPAT_META_UUID ? sector.slice(248, 264) : sector.slice(32, 48);
  const fsbLog = be64(sector, 48);
  let logStart = 0;
  const logBlocks = be32(sector, 96);
  if (fsbLog !== 0) {
    const ag = Math.floor(fsbLog / 2 ** agBlkLog);
    const agbno = fsbLog % 2 ** agBlkLog;
    logStart = ag * agBlocks + agbno;
    if (ag >= agCount || agbno >= agBlocks || logStart + logBlocks > dblocks || logBlocks < 1 || logBlocks * blockSize > MAX_LOG_BYTES)
      throw new XfsDamage("superblock: the internal log lies outside the file system");
  }
  const label = latin1(sector.subarray(108, 120)).replace(/\0+$/, "");
  return {
    blockSize,
    sectSize,
    dblocks,
    agBlocks,
    agCount,
    agBlkLog,
    logStart,
    logBlocks,
    v5,
    logV2: v5 || (be16(sector, 100) & SB_VERSION_LOGV2) !== 0,
    metaUuid,
    label: label || undefined,
    uuid: uuidBytes(sector, 32),
  };
}

function usedMap(r: ReadAt, sb: Superblock): UsedBlocks {
  if (sb.logStart === 0) throw new XfsDamage("external log: its state cannot be checked from the data device");
  checkLogClean(r, sb);
  const used = newUsedBlocks(sb.blockSize, sb.dblocks);
  markBlocks(used, 0, sb.dblocks);
  for (let ag = 0; ag < sb.agCount; ag++) {
    const agLength = Math.min(sb.agBlocks, sb.dblocks - ag * sb.agBlocks);
    const base = ag * sb.agBlocks;
    const agByte = base * sb.blockSize;
    const headerBlocks = Math.ceil((4 * sb.sectSize) / sb.blockSize);
    const agf = r(agByte + sb.sectSize, sb.sectSize);
    const a = readAgf(agf, sb, ag, agLength, headerBlocks);
    const { free, btreeBlocks } = walkBnoBt(r, sb, ag, agLength, headerBlocks, a);
    for (const [start, count] of free) clearBlocks(used, base + start, base + start + count);
    // Blocks of the tree itself must not lie in a free extent: the tree would contradict itself.
    for (const bno of btreeBlocks) if (!isSet(used, base + bno)) throw new XfsDamage(`AG ${ag}: a free-space btree block lies in free space`);
    for (const bno of agflBlocks(r, sb, ag, agByte, a)) if (bno < agLength) markBlocks(used, base + bno, base + bno + 1);
  }
  // The log is allocated space: a tree that says otherwise is damaged.
  for (let b = sb.logStart; b < sb.logStart + sb.logBlocks; b++) if (!isSet(used, b)) throw new XfsDamage("free-space btree lists log blocks as free");
  return used;
}

interface Agf {
  bnoRoot: number;
  bnoLevels: number;
  flFirst: number;
  flLast: number;
  flCount: number;
  freeBlocks: number;
}

function agflSize(sb: Superblock): number {
  return sb.v5 ? (sb.sectSize - 36) / 4 : sb.sectSize / 4;
}

function readAgf(b: Uint8Array, sb: Superblock, ag: number, agLength: number, headerBlocks: number): Agf {
  const where = `AG ${ag}: AGF`;
  if (be32(b, 0) !== XFS_AGF_MAGIC) throw new XfsDamage(`${where} magic is wrong`);
  if (be32(b, 4) !== 1) throw new XfsDamage(`${where} version is not 1`);
  if (be32(b, 8) !== ag) throw new XfsDamage(`${where} sequence number is ${be32(b, 8)}`);
  if (be32(b, 12) !== agLength) throw new XfsDamage(`${where} length ${be32(b, 12)} is not ${agLength}`);
  if (sb.v5) {
    if (!crcOk(b, 216)) throw new XfsDamage(`${where} checksum is wrong`);
    if (!equal(b.subarray(64, 80), sb.metaUuid)) throw new XfsDamage(`${where} belongs to another file system`);
  }
  const a: Agf = { bnoRoot: be32(b, 16), bnoLevels: be32(b, 28), flFirst: be32(b, 40), flLast: be32(b, 44), flCount: be32(b, 48), freeBlocks: be32(b, 52) };
  if (a.bnoRoot < headerBlocks || a.bnoRoot >= agLength) throw new XfsDamage(`${where} free-space root ${a.bnoRoot} is out of range`);
  if (a.bnoLevels < 1 || a.bnoLevels > MAX_BTREE_LEVELS) throw new XfsDamage(`${where} free-space btree has ${a.bnoLevels} levels`);
  const n = agflSize(sb);
  if (a.flCount > n || (a.flCount > 0 && (a.flFirst >= n || a.flLast >= n))) throw new XfsDamage(`${where} free list indices are out of range`);
  if (a.freeBlocks > agLength) throw new XfsDamage(`${where} claims more free blocks than the AG has`);
  return a;
}

/** The AGFL's listed blocks (a circular list from flFirst, flCount long). They are reserved for btree growth: imaged. */
function agflBlocks(r: ReadAt, sb: Superblock, ag: number, agByte: number, a: Agf): number[] {
  if (a.flCount === 0) return [];
  const b = r(agByte + 3 * sb.sectSize, sb.sectSize);
  let at = 0;
  if (sb.v5) {
    if (be32(b, 0) !== XFS_AGFL_MAGIC || be32(b, 4) !== ag) throw new XfsDamage(`AG ${ag}: AGFL header is wrong`);
    if (!crcOk(b, 32)) throw new XfsDamage(`AG ${ag}: AGFL checksum is wrong`);
    at = 36;
  }
  const n = agflSize(sb);
  const out: number[] = [];
  for (let i = 0; i < a.flCount; i++) out.push(be32(b, at + ((a.flFirst + i) % n) * 4));
  return out;
}

/**
 * Walks the by-block free-space btree of one AG, depth first and left to right,
 * so the leaf records come in block order. Every block is checked (magic,
 * level, record count, and with v5 its checksum, owner and own address); the
 * records must be in order, inside the AG, not overlapping, and add up to the
 * AGF's free-block count.
 */
function walkBnoBt(r: ReadAt, sb: Superblock, ag: number, agLength: number, headerBlocks: number, a: Agf): { free: [number, number][]; btreeBlocks: number[] } {
  const magic = sb.v5 ? XFS_ABTB_CRC_MAGIC : XFS_ABTB_MAGIC;
  const hdr = sb.v5 ? 56 : 16;
  const leafMax = Math.floor((sb.blockSize - hdr) / 8);
  const nodeMax = Math.floor((sb.blockSize - hdr) / 12);
  const where = `AG ${ag}: free-space btree`;
  const free: [number, number][] = [];
  const btreeBlocks: number[] = [];
  const seen = new Set<number>();
  let prevEnd = headerBlocks;
  let total = 0;
  const stack: [number, number][] = [[a.bnoRoot, a.bnoLevels - 1]];
  while (stack.length) {
    const [bno, level] = stack.pop()!;
    if (bno < headerBlocks || bno >= agLength) throw new XfsDamage(`${where} points outside the AG (block ${bno})`);
    if (seen.has(bno)) throw new XfsDamage(`${where} visits block ${bno} twice`);
    seen.add(bno);
    btreeBlocks.push(bno);
    const linear = ag * sb.agBlocks + bno;
    const b = r(linear * sb.blockSize, sb.blockSize);
    if (be32(b, 0) !== magic) throw new XfsDamage(`${where} block ${bno} has a wrong magic`);
    if (be16(b, 4) !== level) throw new XfsDamage(`${where} block ${bno} is at level ${be16(b, 4)}, expected ${level}`);
    const n = be16(b, 6);
    if (sb.v5) {
      if (be64(b, 16) !== (linear * sb.blockSize) / BBSIZE) throw new XfsDamage(`${where} block ${bno} says it lives elsewhere`);
      if (!equal(b.subarray(32, 48), sb.metaUuid)) throw new XfsDamage(`${where} block ${bno} belongs to another file system`);
      if (be32(b, 48) !== ag) throw new XfsDamage(`${where} block ${bno} belongs to AG ${be32(b, 48)}`);
      if (!crcOk(b, 52)) throw new XfsDamage(`${where} block ${bno} checksum is wrong`);
    }
    if (level === 0) {
      if (n > leafMax) throw new XfsDamage(`${where} leaf ${bno} claims ${n} records`);
      for (let i = 0; i < n; i++) {
        const start = be32(b, hdr + i * 8);
        const count = be32(b, hdr + i * 8 + 4);
        if (count === 0 || start < prevEnd || start + count > agLength) throw new XfsDamage(`${where} record ${start}+${count} is out of order or out of range`);
        prevEnd = start + count;
        total += count;
        free.push([start, count]);
      }
    } else {
      if (n < 1 || n > nodeMax) throw new XfsDamage(`${where} node ${bno} claims ${n} keys`);
      const ptrs = hdr + nodeMax * 8;
      for (let i = n - 1; i >= 0; i--) stack.push([be32(b, ptrs + i * 4), level - 1]);
    }
  }
  if (total !== a.freeBlocks) throw new XfsDamage(`${where} lists ${total} free blocks, the AGF says ${a.freeBlocks}`);
  return { free, btreeBlocks };
}

/**
 * The internal log is clean when its newest record is an unmount record that
 * ends where the newest writes end. Every 512-byte log block carries the cycle
 * number of the pass that wrote it; the blocks of the highest cycle M run from
 * the log's start to its head, with at most a few unfinished writes (holes of
 * an older cycle) in the last HOLE_WINDOW blocks before the head. So: read the
 * first window, find M, binary-search the last block of cycle M, then read on
 * window by window while more blocks of cycle M turn up (as the kernel's
 * xlog_find_head does). Reads a few MiB, not the whole log. Anything this check
 * does not follow (a record wrapping the log's end, a missing header) counts as
 * not clean.
 */
function checkLogClean(r: ReadAt, sb: Superblock): void {
  const logByte = sb.logStart * sb.blockSize;
  const n = (sb.logBlocks * sb.blockSize) / BBSIZE;
  const blocks = (from: number, count: number): Uint8Array => r(logByte + from * BBSIZE, count * BBSIZE);
  const cycleIn = (b: Uint8Array, i: number): number => (be32(b, i * BBSIZE) === XLOG_HEADER_MAGIC ? be32(b, i * BBSIZE + 4) : be32(b, i * BBSIZE));
  const cycleOf = (i: number): number => cycleIn(blocks(i, 1), 0);
  const w = Math.min(n, HOLE_WINDOW);
  const first = blocks(0, w);
  let m = 0;
  for (let i = 0; i < w; i++) m = Math.max(m, cycleIn(first, i));
  if (m === 0) throw new XfsDamage("log state unknown: no log record found");
  if (cycleOf(n - 1) > m) throw new XfsDamage("log state unknown: the log's newest blocks are not at its start");
  let last = -1;
  for (let i = 0; i < w; i++) if (cycleIn(first, i) === m) last = i;
  if (cycleOf(n - 1) === m) last = n - 1;
  else if (last === w - 1) {
    let lo = w - 1;
    let hi = n - 1;
    while (hi - lo > 1) {
      const mid = lo + Math.floor((hi - lo) / 2);
      if (cycleOf(mid) === m) lo = mid;
      else hi = mid;
    }
    last = lo;
  }
  // Later blocks of cycle M within a window after the last one found: the head is past them.
  let upto = Math.max(w, last + 1);
  while (upto < Math.min(n, last + 1 + HOLE_WINDOW)) {
    const count = Math.min(n, last + 1 + HOLE_WINDOW) - upto;
    const b = blocks(upto, count);
    for (let i = 0; i < count; i++) if (cycleIn(b, i) === m) last = upto + i;
    upto += count;
  }
  // The newest record's header: the last header of cycle M at or before `last`.
  const from = Math.max(0, last - MAX_RECORD_BBS);
  const tail = blocks(from, last + 1 - from);
  let hdr = -1;
  for (let i = last - from; i >= 0 && hdr < 0; i--) if (be32(tail, i * BBSIZE) === XLOG_HEADER_MAGIC && be32(tail, i * BBSIZE + 4) === m) hdr = from + i;
  if (hdr < 0) throw new XfsDamage("log state unknown: no header for the newest log record");
  const h = blocks(hdr, 1);
  const hLen = be32(h, 12);
  const version = be32(h, 8);
  const hSize = be32(h, 320);
  const numOps = be32(h, 40);
  const hblks = sb.logV2 && version & 2 && hSize > 32768 ? Math.ceil(hSize / 32768) : 1;
  if (hLen > 8 * 1024 * 1024 || hblks > 8) throw new XfsDamage("log state unknown: the newest log record header is damaged");
  const dirty = new XfsDamage("log needs recovery (not cleanly unmounted)");
  if (hdr + hblks + Math.ceil(hLen / BBSIZE) !== last + 1 || numOps !== 1 || hLen < 12 || hdr + hblks > last) throw dirty;
  if ((blocks(hdr + hblks, 1)[9]! & XLOG_UNMOUNT_TRANS) === 0) throw dirty;
}

// ---- small helpers ----

function clearBlocks(u: UsedBlocks, from: number, to: number): void {
  const end = Math.min(to, u.blocks);
  for (let i = Math.max(0, from); i < end; ) {
    if ((i & 7) === 0 && i + 8 <= end) {
      u.bitmap[byteOf(i)] = 0;
      i += 8;
    } else {
      u.bitmap[byteOf(i)]! &= ~(1 << (i & 7));
      i++;
    }
  }
}

function isSet(u: UsedBlocks, i: number): boolean {
  return (u.bitmap[byteOf(i)]! & (1 << (i & 7))) !== 0;
}

function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

function be64(b: Uint8Array, o: number): number {
  const hi = be32(b, o);
  if (hi >= 0x200000) return Number.MAX_SAFE_INTEGER + 1; // past 2^53: never a real count or address here
  return hi * 2 ** 32 + be32(b, o + 4);
}


function latin1(b: Uint8Array): string {
  return String.fromCharCode(...b);
}



/** XFS metadata checksum: CRC-32C of the buffer with its 4-byte checksum field counted as zeros, stored little-endian. */
function crcOk(b: Uint8Array, at: number): boolean {
  let c = crc32cRaw(0xffffffff, b.subarray(0, at));
  c = crc32cRaw(c, new Uint8Array(4));
  c = ~crc32cRaw(c, b.subarray(at + 4)) >>> 0;
  return c === ((b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0);
}
