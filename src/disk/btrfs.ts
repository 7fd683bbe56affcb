// btrfs used-block map: reads the superblock, maps logical to physical
// addresses through the chunk tree (bootstrapped from the superblock's
// sys_chunk_array), and walks the extent tree: every EXTENT_ITEM and
// METADATA_ITEM is a used logical range, imaged at each of its copies. Pure:
// all reads go through a ReadAt. Single-device file systems with single or DUP
// profiles only; anything else (more devices, RAID profiles, a log tree to
// replay, unknown incompat features, another checksum than crc32c, damage) is
// imaged whole. Rules and limits: docs/USED-BLOCKS.md.
import { DiskFormatError, type FsAnalysis, type ReadAt, type UsedBlocks, MAX_READ, countUsed, markBlocks, newUsedBlocks } from "./types.ts";
import { u16, u32, u64, uuidBytes, isPow2 } from "./bytes.ts";
import { crc32cRaw } from "./crc.ts";

const SUPER_OFFSET = 0x10000;
const SUPER_SIZE = 4096;
/** Superblock copies: 64 KiB, 64 MiB, 256 GiB. */
const SUPER_MIRRORS = [0x10000, 0x4000000, 0x4000000000];
/** The first MiB is never allocated to chunks (boot loaders may live there): always imaged. */
const RESERVED = 1024 * 1024;
const HEADER = 101;
const KEY = 17;
const ITEM = KEY + 8;
const KEY_PTR = KEY + 16;
const CHUNK = 48;
const STRIPE = 32;
const MAX_LEVEL = 7;
const MAX_CHUNKS = 1 << 20;

const ROOT_ITEM = 132;
const EXTENT_ITEM = 168;
const METADATA_ITEM = 169;
const CHUNK_ITEM = 228;
const EXTENT_TREE_OBJECTID = 2;

const BG_DUP = 1 << 5;
/** RAID0, RAID1, RAID10, RAID5, RAID6, RAID1C3, RAID1C4 */
const BG_RAID = (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10);

/**
 * Incompat features the walk understands: mixed backrefs, default subvolume,
 * mixed groups, lzo, zstd, big metadata, extended irefs, skinny metadata, no
 * holes, metadata UUID, raid1c34 (its chunks are refused one by one).
 */
const KNOWN_INCOMPAT = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x800;
const INCOMPAT_METADATA_UUID = 0x400;
/** Read-only-compatible features known not to put anything outside the extent tree: free space tree (and its valid bit), verity, block group tree. */
const KNOWN_COMPAT_RO = 0x1 | 0x2 | 0x4 | 0x8;
/** Superblock flags of a normal file system: written, seeding. Anything else (error, metadump, an interrupted fsid or checksum change) is imaged whole. */
const NORMAL_FLAGS = 1n | (1n << 32n);

class Damaged extends DiskFormatError {}

function fail(what: string): never {
  throw new Damaged(what);
}




/** The full 64-bit value as a bigint, for flag words. */
function u64n(b: Uint8Array, o: number): bigint {
  return (BigInt(u32(b, o + 4)) << 32n) | BigInt(u32(b, o));
}


function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function uuid(b: Uint8Array): string {
  return uuidBytes(b, 0) ?? "00000000-0000-0000-0000-000000000000";
}


/** CRC-32C (Castagnoli), as btrfs stores it in the first 4 bytes of a checksum field. */
function crc32c(b: Uint8Array): number {
  return (crc32cRaw(0xffffffff, b) ^ 0xffffffff) >>> 0;
}

interface Chunk {
  logical: number;
  length: number;
  /** physical offsets of the copies (one for single, two for DUP) */
  stripes: number[];
}

interface Super {
  sectorSize: number;
  nodeSize: number;
  devBytes: number;
  devid: number;
  treeFsid: string;
  root: number;
  rootLevel: number;
  chunkRoot: number;
  chunkRootLevel: number;
  generation: number;
  chunkRootGeneration: number;
}

class Fs {
  private chunks: Chunk[] = [];
  private pending: Chunk[] = [];
  private marked = 0;
  private visited = new Set<number>();

  constructor(
    private readonly read: ReadAt,
    private readonly s: Super,
    private readonly used: UsedBlocks,
  ) {}

  readDev(offset: number, length: number): Uint8Array {
    if (length > MAX_READ) fail(`a read of ${length} bytes is too large`);
    let got: Uint8Array;
    try {
      got = this.read(offset, length);
    } catch (e) {
      fail(`reading ${length} bytes at byte ${offset} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (got.length !== length) fail(`short read at byte ${offset}`);
    return got;
  }

  /** Adds a chunk (from sys_chunk_array or the chunk tree), refusing profiles and devices it cannot map. */
  addChunk(logical: number, c: Uint8Array, what: string): void {
    if (c.length < CHUNK) fail(`${what}: a chunk item is too short`);
    const length = u64(c, 0);
    const type = u64n(c, 24);
    const numStripes = u16(c, 44);
    if (!(length > 0) || length % this.s.sectorSize || !(logical + length <= Number.MAX_SAFE_INTEGER)) fail(`${what}: a chunk at ${logical} has length ${length}`);
    if (numStripes < 1 || CHUNK + numStripes * STRIPE > c.length) fail(`${what}: a chunk has ${numStripes} stripes`);
    if (type & BigInt(BG_RAID)) fail(`btrfs: a chunk uses a RAID profile (type 0x${type.toString(16)}); only single and DUP are mapped`);
    const dup = (type & BigInt(BG_DUP)) !== 0n;
    if (numStripes !== (dup ? 2 : 1)) fail(`${what}: a ${dup ? "DUP" : "single"} chunk has ${numStripes} stripes`);
    const stripes: number[] = [];
    for (let i = 0; i < numStripes; i++) {
      const s = CHUNK + i * STRIPE;
      const devid = u64(c, s);
      const off = u64(c, s + 8);
      if (devid !== this.s.devid) fail(`btrfs: a chunk lies on device ${devid}, not this one (${this.s.devid}): a multi-device file system`);
      if (!(off + length <= this.s.devBytes)) fail(`${what}: a chunk's stripe lies past the end of the device`);
      stripes.push(off);
    }
    if (this.chunks.length + this.pending.length >= MAX_CHUNKS) fail(`${what}: more than ${MAX_CHUNKS} chunks`);
    this.pending.push({ logical, length, stripes });
  }

  /** Makes the chunks added so far the map: sorted, duplicates (the system chunks appear twice) merged, overlaps refused. */
  commitChunks(): void {
    const all = [...this.chunks, ...this.pending].sort((a, b) => a.logical - b.logical || a.length - b.length);
    this.pending = [];
    const out: Chunk[] = [];
    for (const c of all) {
      const prev = out[out.length - 1];
      if (prev && prev.logical === c.logical && prev.length === c.length && prev.stripes.join() === c.stripes.join()) continue;
      if (prev && c.logical < prev.logical + prev.length) fail(`chunk tree: chunks overlap at logical ${c.logical}`);
      out.push(c);
    }
    this.chunks = out;
  }

  private find(logical: number): Chunk | undefined {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid]!;
      if (logical < c.logical) hi = mid - 1;
      else if (logical >= c.logical + c.length) lo = mid + 1;
      else return c;
    }
    return undefined;
  }

  /**
   * Marks the physical copies of logical [start, start + len) used. The range
   * must lie inside one chunk; all ranges together may not add up to more
   * than three times the device (extents do not overlap; DUP doubles them;
   * tree blocks are marked once more as they are read), which
   * bounds the work a hostile extent tree can ask for.
   */
  markLogical(start: number, len: number, what: string): void {
    if (!(len > 0 && start + len <= Number.MAX_SAFE_INTEGER)) fail(`${what}: an extent of ${len} bytes at ${start}`);
    const c = this.find(start);
    if (!c || start + len > c.logical + c.length) fail(`${what}: the extent ${start}+${len} is not inside one chunk`);
    this.marked += len * c.stripes.length;
    if (this.marked > 3 * this.s.devBytes) fail(`${what}: the extents add up to more than three times the device`);
    const bs = this.s.sectorSize;
    for (const p of c.stripes) {
      const from = p + (start - c.logical);
      markBlocks(this.used, Math.floor(from / bs), Math.ceil((from + len) / bs));
    }
  }

  /** Reads and checks a tree block at a logical address: one of its copies must carry the right checksum, address, fsid and level. */
  node(logical: number, level: number, generation: number, what: string): Uint8Array {
    const ns = this.s.nodeSize;
    if (logical % this.s.sectorSize) fail(`${what}: tree block address ${logical} is not aligned`);
    const c = this.find(logical);
    if (!c || logical + ns > c.logical + c.length) fail(`${what}: tree block ${logical} is in no chunk`);
    let why = "";
    for (const p of c.stripes) {
      const b = this.readDev(p + (logical - c.logical), ns);
      if (crc32c(b.subarray(32)) !== u32(b, 0)) why = `${what}: tree block ${logical} has a bad checksum`;
      else if (u64(b, 48) !== logical) why = `${what}: tree block ${logical} says it is at ${u64(b, 48)}`;
      else if (hex(b.subarray(32, 48)) !== this.s.treeFsid) why = `${what}: tree block ${logical} belongs to another file system`;
      else if (b[100] !== level) why = `${what}: tree block ${logical} has level ${b[100]}, expected ${level}`;
      else if (u64(b, 80) !== generation) why = `${what}: tree block ${logical} has generation ${u64(b, 80)}, its parent expects ${generation} (a lost or misdirected write)`;
      else return b;
    }
    fail(why);
  }

  /**
   * Visits every leaf of the tree rooted at `root`: each tree block read is
   * marked used; `leaf` sees each leaf. Bounded: levels strictly decrease,
   * no block is visited twice, item counts are capped by the node size.
   */
  walk(root: number, level: number, generation: number, what: string, leaf: (b: Uint8Array, nritems: number) => void): void {
    if (level > MAX_LEVEL) fail(`${what}: tree level ${level} is above ${MAX_LEVEL}`);
    const stack: [number, number, number][] = [[root, level, generation]];
    while (stack.length) {
      const [at, lv, gen] = stack.pop()!;
      if (this.visited.has(at)) fail(`${what}: tree block ${at} is referenced twice`);
      this.visited.add(at);
      const b = this.node(at, lv, gen, what);
      this.markLogical(at, this.s.nodeSize, what);
      const nr = u32(b, 96);
      const itemSize = lv === 0 ? ITEM : KEY_PTR;
      if (nr > Math.floor((this.s.nodeSize - HEADER) / itemSize)) fail(`${what}: tree block ${at} claims ${nr} items`);
      if (lv === 0) leaf(b, nr);
      else for (let i = nr - 1; i >= 0; i--) stack.push([u64(b, HEADER + i * KEY_PTR + KEY), lv - 1, u64(b, HEADER + i * KEY_PTR + KEY + 8)]);
    }
  }

  /** A leaf item's data, checked to lie inside the leaf. */
  itemData(b: Uint8Array, i: number, what: string): Uint8Array {
    const it = HEADER + i * ITEM;
    const off = u32(b, it + KEY);
    const size = u32(b, it + KEY + 4);
    if (HEADER + off + size > b.length || HEADER + off < HEADER + 0) fail(`${what}: item ${i} lies outside its leaf`);
    return b.subarray(HEADER + off, HEADER + off + size);
  }
}

function parseSuper(sb: Uint8Array, size: number): Super {
  if (crc32c(sb.subarray(32, SUPER_SIZE)) !== u32(sb, 0)) {
    if (u16(sb, 0xc4) !== 0) fail(`checksum type ${u16(sb, 0xc4)} is not supported here (only crc32c)`);
    fail("superblock: bad checksum");
  }
  if (u16(sb, 0xc4) !== 0) fail(`checksum type ${u16(sb, 0xc4)} is not supported here (only crc32c)`);
  if (u64(sb, 0x30) !== SUPER_OFFSET) fail("superblock: it says it is somewhere else");
  const incompat = u64n(sb, 0xbc);
  const unknown = incompat & ~BigInt(KNOWN_INCOMPAT);
  if (unknown) fail(`incompat features 0x${unknown.toString(16)} (zoned, extent tree v2, raid stripe tree, simple quotas or newer) are not mapped`);
  const unknownRo = u64n(sb, 0xb4) & ~BigInt(KNOWN_COMPAT_RO);
  if (unknownRo) fail(`read-only compatible features 0x${unknownRo.toString(16)} are not known here`);
  const flags = u64n(sb, 0x38) & ~NORMAL_FLAGS;
  if (flags) fail(`superblock flags 0x${flags.toString(16)} (an error, a metadump, or an interrupted fsid or checksum change)`);
  if (u64(sb, 0x60) !== 0) fail("the log tree holds fsynced changes not yet replayed (mount the file system once and unmount it cleanly)");
  if (u64(sb, 0x88) !== 1) fail(`it spans ${u64(sb, 0x88)} devices; only single-device file systems are mapped`);
  const sectorSize = u32(sb, 0x90);
  const nodeSize = u32(sb, 0x94);
  if (!isPow2(sectorSize) || sectorSize < 4096 || sectorSize > 65536) fail(`superblock: sector size ${sectorSize}`);
  if (!isPow2(nodeSize) || nodeSize < sectorSize || nodeSize > 65536) fail(`superblock: node size ${nodeSize}`);
  // dev_item at 0xc9: devid, total_bytes, bytes_used, ...
  const devid = u64(sb, 0xc9);
  const devBytes = u64(sb, 0xc9 + 8);
  if (!(devBytes <= size)) fail(`the device is ${devBytes} bytes, larger than its partition (${size} bytes)`);
  if (devBytes < RESERVED + SUPER_SIZE) fail(`the device is only ${devBytes} bytes`);
  const treeFsid = hex(incompat & BigInt(INCOMPAT_METADATA_UUID) ? sb.subarray(0x23b, 0x24b) : sb.subarray(0x20, 0x30));
  return {
    sectorSize,
    nodeSize,
    devBytes,
    devid,
    treeFsid,
    root: u64(sb, 0x50),
    rootLevel: sb[0xc6]!,
    chunkRoot: u64(sb, 0x58),
    chunkRootLevel: sb[0xc7]!,
    generation: u64(sb, 0x48),
    chunkRootGeneration: u64(sb, 0xa4),
  };
}

function buildMap(read: ReadAt, sb: Uint8Array, size: number): UsedBlocks {
  const s = parseSuper(sb, size);
  const bs = s.sectorSize;
  const used = newUsedBlocks(bs, Math.floor(s.devBytes / bs));
  const fs = new Fs(read, s, used);
  // bootstrap: the system chunks in the superblock
  const arrLen = u32(sb, 0xa0);
  if (arrLen > 2048) fail(`superblock: sys_chunk_array is ${arrLen} bytes`);
  const arr = sb.subarray(0x32b, 0x32b + arrLen);
  for (let off = 0; off < arrLen; ) {
    if (off + KEY + CHUNK > arrLen) fail("superblock: sys_chunk_array is truncated");
    if (arr[off + 8] !== CHUNK_ITEM) fail("superblock: sys_chunk_array holds something else than a chunk");
    const logical = u64(arr, off + 9);
    const numStripes = u16(arr, off + KEY + 44);
    const len = CHUNK + numStripes * STRIPE;
    if (off + KEY + len > arrLen) fail("superblock: sys_chunk_array is truncated");
    fs.addChunk(logical, arr.subarray(off + KEY, off + KEY + len), "superblock");
    off += KEY + len;
  }
  fs.commitChunks();
  // the chunk tree: every chunk
  fs.walk(s.chunkRoot, s.chunkRootLevel, s.chunkRootGeneration, "chunk tree", (b, nr) => {
    for (let i = 0; i < nr; i++) {
      const k = HEADER + i * ITEM;
      if (b[k + 8] === CHUNK_ITEM) fs.addChunk(u64(b, k + 9), fs.itemData(b, i, "chunk tree"), "chunk tree");
    }
  });
  fs.commitChunks();
  // the root tree: find the extent tree
  let extent: { bytenr: number; level: number; generation: number } | null = null;
  fs.walk(s.root, s.rootLevel, s.generation, "root tree", (b, nr) => {
    for (let i = 0; i < nr; i++) {
      const k = HEADER + i * ITEM;
      if (u64(b, k) === EXTENT_TREE_OBJECTID && b[k + 8] === ROOT_ITEM) {
        const ri = fs.itemData(b, i, "root tree");
        if (ri.length < 239) fail("root tree: the extent tree's root item is too short");
        if (extent) fail("root tree: two extent trees");
        // btrfs_root_item: inode item (160 bytes), generation, root_dirid, bytenr, ..., level
        extent = { bytenr: u64(ri, 176), level: ri[238]!, generation: u64(ri, 160) };
      }
    }
  });
  const ext = extent as { bytenr: number; level: number; generation: number } | null;
  if (!ext) fail("root tree: no extent tree");
  // the extent tree: every allocated extent, data and metadata
  fs.walk(ext.bytenr, ext.level, ext.generation, "extent tree", (b, nr) => {
    for (let i = 0; i < nr; i++) {
      const k = HEADER + i * ITEM;
      const type = b[k + 8];
      if (type === EXTENT_ITEM) fs.markLogical(u64(b, k), u64(b, k + 9), "extent tree");
      else if (type === METADATA_ITEM) fs.markLogical(u64(b, k), s.nodeSize, "extent tree");
    }
  });
  // the reserved first MiB (with the superblock) and the superblock copies
  markBlocks(used, 0, RESERVED / bs);
  for (const m of SUPER_MIRRORS) if (m + SUPER_SIZE <= s.devBytes) markBlocks(used, m / bs, (m + SUPER_SIZE) / bs);
  return used;
}

export function analyzeBtrfs(read: ReadAt, size: number): FsAnalysis | null {
  if (size < SUPER_OFFSET + SUPER_SIZE) return null;
  const sb = read(SUPER_OFFSET, SUPER_SIZE);
  if (String.fromCharCode(...sb.subarray(0x40, 0x48)) !== "_BHRfS_M") return null;
  const label = new TextDecoder().decode(sb.subarray(0x12b, 0x22b)).replace(/\0.*$/s, "");
  const out: FsAnalysis = { fs: "btrfs", uuid: uuid(sb.subarray(0x20, 0x30)), method: "whole", usedBytes: size, size };
  if (label) out.label = label;
  try {
    const used = buildMap(read, sb, size);
    return { ...out, method: "used-blocks", used, usedBytes: countUsed(used) * used.blockSize + (size - used.blocks * used.blockSize) };
  } catch (e) {
    // anything else is a bug here, not damage on the disk: the caller reports it
    if (e instanceof Damaged) return { ...out, reason: `btrfs: ${e.message.replace(/^btrfs: /, "")}` };
    throw e;
  }
}
