// The used-block plan of a whole disk: its partition table, each partition's
// file-system analysis, and everything outside the partitions (boot gap, GPT
// areas, space after the last partition) kept whole. Then, for push: which
// byte ranges of a chunk must be read, and which are known unused (they are
// stored as zeros). Pure: it reads through a ReadAt.
import { analyzeBtrfs } from "./btrfs.ts";
import { analyzeExt } from "./ext.ts";
import { analyzeFat } from "./fat.ts";
import { analyzeNtfs } from "./ntfs.ts";
import { readPartitionTable } from "./partitions.ts";
import { identifyContainer, identifyWhole } from "./signatures.ts";
import { analyzeSwap } from "./swap.ts";
import { analyzeXfs } from "./xfs.ts";
import { DiskFormatError, byteOf, type FsAnalysis, type Partition, type PartitionTable, type ReadAt, type UsedBlocks } from "./types.ts";

export type Analyzer = (read: ReadAt, size: number) => FsAnalysis | null;

/**
 * The file-system analysers, tried in order on each partition; the first that
 * recognises it (returns non-null) wins; none: identifyWhole names it and it
 * is imaged whole.
 */
export const ANALYZERS: Analyzer[] = [
  analyzeExt,
  analyzeSwap,
  analyzeXfs,
  // NTFS before FAT: its boot sector has a BIOS parameter block too
  analyzeNtfs,
  analyzeFat,
  analyzeBtrfs,
];

/** Which partitions hold a file system mounted read-write now (those are imaged whole). */
export interface MountInfo {
  /** the mount point when the partition (index; 0 = the whole disk) is mounted read-write, else null */
  readWrite(index: number): string | null;
}

export interface PlannedPart {
  /** the partition, or for a disk with no table, the whole disk as index 0 */
  partition: Partition;
  analysis: FsAnalysis;
}

export interface DiskPlan {
  size: number;
  table: PartitionTable;
  /** why the table could not be read (the whole disk is then imaged whole) */
  tableError?: string;
  parts: PlannedPart[];
  /** bytes outside every partition, kept whole */
  outsideBytes: number;
  /** what will be imaged, in bytes: the partitions' used bytes plus everything outside them */
  usedBytes: number;
}

function regionReader(read: ReadAt, start: number, length: number): ReadAt {
  return (offset, len) => {
    if (offset < 0 || len < 0 || offset + len > length) throw new DiskFormatError(`read at ${offset}+${len} past the end of a ${length}-byte region`);
    return read(start + offset, len);
  };
}

function wholeBecause(size: number, fs: string, reason: string): FsAnalysis {
  return { fs, method: "whole", reason, usedBytes: size, size };
}

/** One region's analysis; any failure makes it whole, with the reason. */
export function analyzeRegion(read: ReadAt, size: number, analyzers: Analyzer[] = ANALYZERS): FsAnalysis {
  // a container (LUKS, LVM, md, ...) first: an old file system's superblock left inside it must not win
  try {
    const c = identifyContainer(read, size);
    if (c) return c;
  } catch (e) {
    return wholeBecause(size, "unknown", e instanceof Error ? e.message : String(e));
  }
  for (const analyze of analyzers) {
    try {
      const a = analyze(read, size);
      if (a) return sane(a, size) ? a : wholeBecause(size, a.fs, "analysis inconsistent with the partition");
    } catch (e) {
      return wholeBecause(size, "unknown", e instanceof DiskFormatError ? e.message : `analysis failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  try {
    return identifyWhole(read, size);
  } catch (e) {
    return wholeBecause(size, "unknown", e instanceof Error ? e.message : String(e));
  }
}

/** A map that covers more than the region, or a block size that is no size, is not trusted. */
function sane(a: FsAnalysis, size: number): boolean {
  if (a.method === "whole") return true;
  const u = a.used;
  if (!u || !Number.isSafeInteger(u.blockSize) || u.blockSize < 512 || !Number.isSafeInteger(u.blocks) || u.blocks < 0) return false;
  if (u.bitmap.length < Math.ceil(u.blocks / 8)) return false;
  return (u.blocks - 1) * u.blockSize < size || u.blocks === 0;
}

export function analyzeDisk(read: ReadAt, size: number, sectorSize: number, mountInfo?: MountInfo, analyzers: Analyzer[] = ANALYZERS): DiskPlan {
  let table: PartitionTable;
  let tableError: string | undefined;
  try {
    table = readPartitionTable(read, size, sectorSize);
  } catch (e) {
    tableError = e instanceof Error ? e.message : String(e);
    table = { type: "none", sectorSize, partitions: [] };
  }
  const parts: PlannedPart[] = [];
  if (tableError) {
    parts.push({ partition: { index: 0, start: 0, length: size, type: "" }, analysis: wholeBecause(size, "unknown", `partition table not trusted: ${tableError}`) });
  } else if (table.type === "none") {
    parts.push({ partition: { index: 0, start: 0, length: size, type: "" }, analysis: analyzeRegion(read, size, analyzers) });
  } else {
    for (const p of table.partitions) parts.push({ partition: p, analysis: analyzeRegion(regionReader(read, p.start, p.length), p.length, analyzers) });
  }
  for (const pp of parts) {
    const mp = mountInfo?.readWrite(pp.partition.index) ?? null;
    if (mp !== null) pp.analysis = { ...pp.analysis, method: "whole", reason: `mounted read-write on ${mp}`, used: undefined, usedBytes: pp.partition.length };
  }
  const inside = parts.reduce((s, p) => s + p.partition.length, 0);
  const outsideBytes = size - inside;
  return { size, table, ...(tableError ? { tableError } : {}), parts, outsideBytes, usedBytes: outsideBytes + parts.reduce((s, p) => s + p.analysis.usedBytes, 0) };
}

interface MapRegion {
  start: number;
  end: number;
  used: UsedBlocks;
}

/** The regions of the disk with a used map, sorted by start. */
function mapRegions(plan: DiskPlan): MapRegion[] {
  return plan.parts
    .filter((p) => p.analysis.method !== "whole" && p.analysis.used)
    .map((p) => ({ start: p.partition.start, end: p.partition.start + p.partition.length, used: p.analysis.used! }))
    .sort((a, b) => a.start - b.start);
}

/**
 * The byte ranges of [offset, offset + length) that must be read (everything
 * not proved unused), merged and in order. Empty: the range is wholly unused.
 */
export function usedRanges(plan: DiskPlan, offset: number, length: number): [number, number][] {
  return rangesOf(mapRegions(plan), offset, length);
}

function rangesOf(regions: MapRegion[], offset: number, length: number): [number, number][] {
  const end = offset + length;
  const out: [number, number][] = [];
  const add = (a: number, b: number) => {
    if (b <= a) return;
    const last = out[out.length - 1];
    if (last && last[1] >= a) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  };
  let pos = offset;
  for (const r of regions) {
    if (r.end <= pos) continue;
    if (r.start >= end) break;
    add(pos, Math.min(r.start, end)); // before this region: kept
    const from = Math.max(pos, r.start);
    const to = Math.min(end, r.end);
    const u = r.used;
    const bsz = u.blockSize;
    const mapEnd = r.start + u.blocks * bsz;
    for (let i = Math.floor((from - r.start) / bsz); ; ) {
      const bs = r.start + i * bsz;
      if (bs >= to) break;
      if (bs >= mapEnd) {
        add(Math.max(bs, from), to); // past the map: kept
        break;
      }
      // A byte of the map at a time where its eight blocks lie in the range
      // and the map: free space and data come in runs, and a 1 TB disk has
      // 268 million 4 KiB blocks to go through.
      if ((i & 7) === 0 && bs + 8 * bsz <= to && bs + 8 * bsz <= mapEnd) {
        const byte = u.bitmap[byteOf(i)];
        if (byte === 0) {
          i += 8;
          continue;
        }
        if (byte === 0xff) {
          add(Math.max(bs, from), bs + 8 * bsz);
          i += 8;
          continue;
        }
      }
      if (u.bitmap[byteOf(i)]! & (1 << (i & 7))) add(Math.max(bs, from), Math.min(bs + bsz, to));
      i++;
    }
    pos = to;
  }
  add(pos, end);
  return out;
}

/** A plan's answers for push, with the sorted regions computed once. */
export function planQueries(plan: DiskPlan): { usedRanges(offset: number, length: number): [number, number][]; unused(offset: number, length: number): boolean } {
  const regions = mapRegions(plan);
  return {
    usedRanges: (o, l) => rangesOf(regions, o, l),
    unused: (o, l) => rangesOf(regions, o, l).length === 0,
  };
}

/** Zero-fills the bytes of buf (which holds the disk at `offset`) that the plan proves unused. */
export function zeroUnused(plan: DiskPlan, buf: Uint8Array, offset: number): void {
  let pos = offset;
  for (const [a, b] of usedRanges(plan, offset, buf.length)) {
    buf.fill(0, pos - offset, a - offset);
    pos = b;
  }
  buf.fill(0, pos - offset, buf.length);
}
