// FAT12/16/32 used-block analysis: which parts of a FAT volume hold anything.
// The reserved area (boot sector, FSInfo, backup boot sector), every FAT copy
// and the FAT12/16 root directory are used; a data cluster is used when any
// FAT copy gives it a non-zero entry (a chain link, end of chain or bad-cluster
// mark). The chains of the active FAT are checked first (links in range, no
// link into a free cluster, no cross-links, no loops): a FAT that fails means
// damage, and a damaged volume is imaged whole. Pure: reads only through
// ReadAt. Rules and limits: docs/USED-BLOCKS.md.

import { DiskFormatError, type FsAnalysis, type ReadAt, type UsedBlocks, countUsed, markBlocks, newUsedBlocks, readChecked } from "./types.ts";
import { isPow2 } from "./bytes.ts";

/** The most FAT (one copy) this reader holds in memory: a FAT32 of 16 Mi clusters. */
const MAX_FAT_BYTES = 64 * 1024 * 1024;
const MAX_FATS = 4;
/** FAT bytes read at once: 12 MiB (under MAX_READ), a whole number of FAT12 (3-byte), FAT16 and FAT32 entry groups. */
const FAT_PIECE = 12 * 1024 * 1024;

/** A structure on disk that cannot be trusted: the analysis ends with method "whole". */
export class FatDamage extends DiskFormatError {
  override name = "FatDamage";
}

type FatType = 12 | 16 | 32;

interface Bpb {
  type: FatType;
  bytesPerSector: number;
  sectorsPerCluster: number;
  reserved: number;
  numFats: number;
  fatSectors: number;
  rootDirSectors: number;
  totalSectors: number;
  firstDataSector: number;
  clusters: number;
  rootCluster: number;
  activeFat: number; // FAT32 with mirroring off: the one FAT in use; else 0
  media: number;
  label?: string;
  uuid?: string;
  bootDirty: boolean;
}

export function analyzeFat(read: ReadAt, size: number): FsAnalysis | null {
  let b: Uint8Array;
  try {
    b = read(0, 512);
  } catch {
    return null;
  }
  if (b.length < 512) return null;
  if (!looksLikeFat(b)) return null;
  const r: ReadAt = (offset, length) => readChecked(read, offset, length, `${length} bytes at ${offset}`);
  let bpb: Bpb | undefined;
  try {
    bpb = parseBpb(b, size);
    const { used, notes } = usedMap(r, bpb);
    return {
      fs: "vfat",
      label: rootLabel(read, bpb) ?? bpb.label,
      uuid: bpb.uuid,
      method: "used-blocks",
      reason: notes.length ? notes.join("; ") : undefined,
      used,
      usedBytes: countUsed(used) * used.blockSize + (size - used.blocks * used.blockSize),
      size,
    };
  } catch (e) {
    if (e instanceof DiskFormatError) return { fs: "vfat", label: bpb?.label, uuid: bpb?.uuid, method: "whole", reason: e.message, usedBytes: size, size };
    throw e;
  }
}

/** The boot sector checks that say "this is meant to be FAT" (others: null). */
function looksLikeFat(b: Uint8Array): boolean {
  if (b[510] !== 0x55 || b[511] !== 0xaa) return false;
  if (!(b[0] === 0xeb && b[2] === 0x90) && b[0] !== 0xe9) return false;
  const bps = le16(b, 11);
  if (!isPow2(bps) || bps < 512 || bps > 4096) return false;
  if (!isPow2(b[13]!)) return false;
  if (le16(b, 14) === 0 || b[16] === 0) return false; // NTFS and exFAT have no reserved sectors and no FATs here
  const media = b[21]!;
  return media === 0xf0 || media >= 0xf8;
}

function parseBpb(b: Uint8Array, size: number): Bpb {
  const bytesPerSector = le16(b, 11);
  const sectorsPerCluster = b[13]!;
  const reserved = le16(b, 14);
  const numFats = b[16]!;
  const rootEntries = le16(b, 17);
  const totalSectors = le16(b, 19) || le32(b, 32);
  const fatSectors = le16(b, 22) || le32(b, 36);
  if (numFats > MAX_FATS) throw new FatDamage(`boot sector: ${numFats} FATs`);
  if (sectorsPerCluster * bytesPerSector > 256 * 1024) throw new FatDamage("boot sector: clusters larger than 256 KiB");
  if (fatSectors === 0) throw new FatDamage("boot sector: FAT size is zero");
  if (totalSectors === 0) throw new FatDamage("boot sector: sector count is zero");
  if (totalSectors * bytesPerSector > size) throw new FatDamage(`file system (${totalSectors * bytesPerSector} bytes) is larger than its partition (${size} bytes)`);
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstDataSector = reserved + numFats * fatSectors + rootDirSectors;
  if (firstDataSector >= totalSectors) throw new FatDamage("boot sector: reserved sectors, FATs and root directory fill the whole volume");
  const clusters = Math.floor((totalSectors - firstDataSector) / sectorsPerCluster);
  // Microsoft's rule: the type follows from the cluster count alone.
  const type: FatType = clusters < 4085 ? 12 : clusters < 65525 ? 16 : 32;
  if (type === 32) {
    if (le16(b, 22) !== 0 || rootEntries !== 0) throw new FatDamage("boot sector: FAT32 by cluster count but has a FAT16 root directory or FAT size");
  } else if (rootEntries === 0) throw new FatDamage(`boot sector: FAT${type} without root directory entries`);
  const needed = Math.ceil((((clusters + 2) * type) / 8) / bytesPerSector);
  if (fatSectors < needed) throw new FatDamage(`boot sector: FAT of ${fatSectors} sectors is too small for ${clusters} clusters`);
  const ext = type === 32 ? 64 : 36;
  const extFlags = type === 32 ? le16(b, 40) : 0;
  const activeFat = type === 32 && extFlags & 0x80 ? extFlags & 0x0f : 0;
  if (activeFat >= numFats) throw new FatDamage("boot sector: the active FAT does not exist");
  const rootCluster = type === 32 ? le32(b, 44) : 0;
  if (type === 32 && (rootCluster < 2 || rootCluster >= clusters + 2)) throw new FatDamage("boot sector: root directory cluster out of range");
  let label: string | undefined;
  let uuid: string | undefined;
  // Extended boot signature 0x29: volume ID and label; the older 0x28: the ID only.
  if (b[ext + 2] === 0x29 || b[ext + 2] === 0x28) {
    const id = le32(b, ext + 3);
    uuid = `${hex4(id >>> 16)}-${hex4(id & 0xffff)}`;
    if (b[ext + 2] === 0x29) label = cleanLabel(b.subarray(ext + 7, ext + 18));
  }
  return {
    type,
    bytesPerSector,
    sectorsPerCluster,
    reserved,
    numFats,
    fatSectors,
    rootDirSectors,
    totalSectors,
    firstDataSector,
    clusters,
    rootCluster,
    activeFat,
    media: b[21]!,
    label,
    uuid,
    bootDirty: (b[ext + 1]! & 1) !== 0,
  };
}

/**
 * Calls `each(first, entries)` for the entries of one FAT copy (cluster 0 to
 * clusters + 1), read in pieces of at most FAT_PIECE bytes so a large FAT is
 * never held twice.
 */
function readFat(r: ReadAt, bpb: Bpb, copy: number, each: (first: number, entries: Uint32Array) => void): void {
  const n = bpb.clusters + 2;
  const bytes = Math.ceil((n * bpb.type) / 8);
  if (bytes > MAX_FAT_BYTES) throw new FatDamage(`FAT of ${bytes} bytes is larger than this reader handles (${MAX_FAT_BYTES})`);
  const start = (bpb.reserved + copy * bpb.fatSectors) * bpb.bytesPerSector;
  const perPiece = (FAT_PIECE * 8) / bpb.type; // FAT_PIECE is a multiple of 3 and 4 bytes: whole entries, even for FAT12
  for (let first = 0; first < n; first += perPiece) {
    const count = Math.min(perPiece, n - first);
    const off = (first * bpb.type) / 8;
    const raw = r(start + off, Math.min(Math.ceil((count * bpb.type) / 8), bytes - off));
    const e = new Uint32Array(count);
    if (bpb.type === 12) {
      for (let i = 0; i < count; i++) {
        const o = (i * 3) >> 1;
        const v = raw[o]! | ((raw[o + 1] ?? 0) << 8);
        e[i] = i & 1 ? v >> 4 : v & 0xfff;
      }
    } else if (bpb.type === 16) {
      for (let i = 0; i < count; i++) e[i] = raw[2 * i]! | (raw[2 * i + 1]! << 8);
    } else {
      // The top 4 bits of a FAT32 entry are reserved; a non-zero entry is kept as used whatever they hold.
      for (let i = 0; i < count; i++) e[i] = le32(raw, 4 * i);
    }
    each(first, e);
  }
}

function usedMap(r: ReadAt, bpb: Bpb): { used: UsedBlocks; notes: string[] } {
  const notes: string[] = [];
  const n = bpb.clusters + 2;
  // The active FAT whole (its chains are checked); the other copies piece by piece, only to mark what they call used.
  const fat = new Uint32Array(n);
  readFat(r, bpb, bpb.activeFat, (first, e) => fat.set(e, first));
  const firstEntries: number[] = [];
  const extra = new Uint8Array(Math.ceil(n / 8)); // clusters only another copy marks
  for (let c = 0; c < bpb.numFats; c++) {
    if (c === bpb.activeFat) {
      firstEntries.push(fat[0]!);
      continue;
    }
    readFat(r, bpb, c, (first, e) => {
      if (first === 0) firstEntries.push(e[0]!);
      for (let i = 0; i < e.length; i++) if (e[i] !== 0 && fat[first + i] === 0) extra[(first + i) >> 3]! |= 1 << ((first + i) & 7);
    });
  }
  for (let c = 0; c < firstEntries.length; c++)
    if ((firstEntries[c]! & 0xff) !== bpb.media) throw new FatDamage(`FAT copy ${c + 1} does not start with the media byte: it is not where the boot sector puts it`);
  const linked = checkChains(fat, bpb);
  checkDirectories(r, bpb, fat, linked);
  const bps = bpb.bytesPerSector;
  const clusterBytes = bpb.sectorsPerCluster * bps;
  // One bitmap at one granularity: the largest power of two up to the cluster size that the data area's start is a multiple of.
  let blockSize = clusterBytes;
  while ((bpb.firstDataSector * bps) % blockSize !== 0) blockSize /= 2;
  const blocks = Math.floor((bpb.totalSectors * bps) / blockSize);
  const used = newUsedBlocks(blockSize, blocks);
  const dataStart = (bpb.firstDataSector * bps) / blockSize;
  markBlocks(used, 0, dataStart);
  const perCluster = clusterBytes / blockSize;
  for (let cl = 2; cl < n; cl++)
    if (fat[cl] !== 0 || extra[cl >> 3]! & (1 << (cl & 7))) markBlocks(used, dataStart + (cl - 2) * perCluster, dataStart + (cl - 1) * perCluster);
  // Sectors after the last whole cluster belong to no cluster: kept.
  markBlocks(used, dataStart + bpb.clusters * perCluster, blocks);
  // The clean-shutdown bits in FAT[1] (FAT16: bit 15, FAT32: bit 27; 0 means dirty).
  const f1 = fat[1]!;
  if ((bpb.type === 16 && !(f1 & 0x8000)) || (bpb.type === 32 && !(f1 & 0x08000000)) || bpb.bootDirty)
    notes.push("volume dirty flag set (not cleanly unmounted): free clusters are still unused");
  return { used, notes };
}

/**
 * Every link must name a cluster of the volume whose own entry is not free;
 * no cluster may be the target of two links; and following links from each
 * chain's first cluster must reach every linked cluster (else some chain is a
 * loop). A failure means the FAT is damaged: clusters it calls free might hold
 * data, so the volume is imaged whole.
 */
function checkChains(fat: Uint32Array, bpb: Bpb): Uint8Array {
  const n = bpb.clusters + 2;
  const mask = bpb.type === 32 ? 0x0fffffff : bpb.type === 16 ? 0xffff : 0xfff;
  const bad = mask - 8; // 0xFF7, 0xFFF7, 0x0FFFFFF7
  const target = new Uint8Array(n);
  let links = 0;
  for (let c = 2; c < n; c++) {
    const raw = fat[c]!;
    if (raw === 0) continue;
    const v = raw & mask;
    if (v >= bad || v === 0) continue; // bad-cluster mark, end of chain, or only reserved FAT32 bits set (kept as used)
    if (v < 2 || v >= n) throw new FatDamage(`FAT: cluster ${c} links to ${v}, outside the volume`);
    if (fat[v] === 0) throw new FatDamage(`FAT: cluster ${c} links to the free cluster ${v}`);
    if (target[v]) throw new FatDamage(`FAT: cluster ${v} is linked from two chains`);
    target[v] = 1;
    links++;
  }
  // With no cross-links, a walk from each chain's first cluster never meets another chain; links left over are loops.
  let walked = 0;
  for (let c = 2; c < n; c++) {
    if (fat[c] === 0 || target[c]) continue;
    let at = c;
    for (;;) {
      const v = fat[at]! & mask;
      if (v >= bad || v < 2) break;
      walked++;
      at = v;
    }
  }
  if (walked !== links) throw new FatDamage("FAT: a cluster chain loops");
  return target;
}

/**
 * Walks the directory tree from the root. Every entry's first cluster must be
 * in use and the start of a chain, a file's chain must be long enough for its
 * size, and every subdirectory must begin with its "." and ".." entries (which
 * also shows the data area is where the boot sector puts it). `linked` marks
 * the clusters that are the target of a link (not chain starts).
 */
function checkDirectories(r: ReadAt, bpb: Bpb, fat: Uint32Array, linked: Uint8Array): void {
  const n = bpb.clusters + 2;
  const mask = bpb.type === 32 ? 0x0fffffff : bpb.type === 16 ? 0xffff : 0xfff;
  const bad = mask - 8;
  const bps = bpb.bytesPerSector;
  const clusterBytes = bpb.sectorsPerCluster * bps;
  const clusterAt = (c: number): number => (bpb.firstDataSector + (c - 2) * bpb.sectorsPerCluster) * bps;
  const chain = (first: number): number[] => {
    const out = [first];
    for (let at = first; ; ) {
      const v = fat[at]! & mask;
      if (v < 2 || v >= bad) return out; // checkChains made every link valid and every chain finite
      out.push(v);
      at = v;
    }
  };
  const seen = new Set<number>();
  const queue: { where: string; clusters: number[]; root: boolean }[] = [];
  let next = 0;
  if (bpb.type === 32) queue.push({ where: "/", clusters: chain(bpb.rootCluster), root: true });
  else queue.push({ where: "/", clusters: [], root: true });
  while (next < queue.length) {
    const d = queue[next++]!;
    const data =
      bpb.type !== 32 && d.root
        ? r(bpb.reserved * bps + bpb.numFats * bpb.fatSectors * bps, bpb.rootDirSectors * bps)
        : concat(d.clusters.map((c) => r(clusterAt(c), clusterBytes)));
    if (!d.root) {
      const dot = String.fromCharCode(...data.subarray(0, 11));
      const dotdot = String.fromCharCode(...data.subarray(32, 43));
      if (dot !== ".          " || dotdot !== "..         ") throw new FatDamage(`directory ${d.where} does not start with "." and "..": the data area is not where the boot sector puts it`);
    }
    for (let o = 0; o + 32 <= data.length; o += 32) {
      const first = data[o]!;
      if (first === 0) break;
      const attr = data[o + 11]!;
      if (first === 0xe5 || first === 0x2e || (attr & 0x3f) === 0x0f || attr & 0x08) continue;
      const cl = (bpb.type === 32 ? le16(data, o + 20) * 65536 : 0) + le16(data, o + 26);
      const name = `${d.where}${String.fromCharCode(...data.subarray(o, o + 11)).trim()}`;
      if (cl === 0) continue; // an empty file
      if (cl < 2 || cl >= n) throw new FatDamage(`${name}: first cluster ${cl} is outside the volume`);
      if (fat[cl] === 0) throw new FatDamage(`${name}: first cluster ${cl} is marked free`);
      if (linked[cl]) throw new FatDamage(`${name}: first cluster ${cl} lies inside another chain`);
      if (seen.has(cl)) throw new FatDamage(`${name}: cluster ${cl} is the start of two directory entries`);
      seen.add(cl);
      const clusters = chain(cl);
      if (attr & 0x10) queue.push({ where: `${name}/`, clusters, root: false });
      else if (clusters.length * clusterBytes < le32(data, o + 28)) throw new FatDamage(`${name}: the file is longer than its cluster chain`);
    }
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The volume label entry of the root directory (first sector of the FAT12/16 root, or the FAT32 root's first cluster). */
function rootLabel(read: ReadAt, bpb: Bpb): string | undefined {
  const bps = bpb.bytesPerSector;
  const at = bpb.type === 32 ? (bpb.firstDataSector + (bpb.rootCluster - 2) * bpb.sectorsPerCluster) * bps : (bpb.reserved + bpb.numFats * bpb.fatSectors) * bps;
  const len = bpb.type === 32 ? bpb.sectorsPerCluster * bps : Math.min(bpb.rootDirSectors, 64) * bps;
  let d: Uint8Array;
  try {
    d = read(at, len);
  } catch {
    return undefined; // a label is not worth failing for
  }
  for (let o = 0; o + 32 <= d.length; o += 32) {
    if (d[o] === 0) break;
    if (d[o] === 0xe5) continue;
    const attr = d[o + 11]!;
    if ((attr & 0x3f) === 0x0f) continue; // long-name entry
    if (attr & 0x08) return cleanLabel(d.subarray(o, o + 11));
  }
  return undefined;
}

function cleanLabel(b: Uint8Array): string | undefined {
  const s = String.fromCharCode(...b).replace(/[\0 ]+$/, "");
  return s && s !== "NO NAME" ? s : undefined;
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, "0");
}

function le16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function le32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

