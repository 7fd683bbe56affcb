// Reads a disk's partition table (GPT, MBR with extended/logical partitions)
// through a ReadAt. Pure: every LBA, count and size read is checked against the
// disk before use; a table that is damaged beyond the rules below throws a
// DiskFormatError, and the caller images the whole disk whole.
//
// GPT: the primary header (LBA 1) and its entry array are checked with their
// CRC-32s; when the primary is bad the backup header (last LBA) is used, with a
// note. Both bad, or both good but describing different partitions: throw. A
// protective MBR (type 0xEE) means GPT. Sector sizes 512 and 4096 are tried
// (the disk's logical sector size first).
import { DiskFormatError, readChecked, type Partition, type PartitionTable, type ReadAt } from "./types.ts";
import { ascii, equal, guidMixed, u16, u32, u64 } from "./bytes.ts";
import { crc32 } from "./crc.ts";

/** Entry arrays above this size are not believed (the usual one is 16 KiB). */
const MAX_GPT_ENTRIES_BYTES = 4 * 1024 * 1024;
/** Logical partitions followed along an EBR chain. */
const MAX_LOGICAL = 256;

const MBR_EXTENDED = new Set([0x05, 0x0f, 0x85]);

interface GptHeader {
  ok: true;
  entries: Uint8Array;
  entrySize: number;
  count: number;
  firstUsable: number;
  lastUsable: number;
  entriesCrc: number;
}

type GptRead = GptHeader | { ok: false; why: string };

function readGptHeader(read: ReadAt, lba: number, sector: number, lastLba: number, primary: boolean): GptRead {
  let h: Uint8Array;
  try {
    h = readChecked(read, lba * sector, sector, "the GPT header");
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  }
  if (ascii(h, 0, 8) !== "EFI PART") return { ok: false, why: "no GPT signature" };
  const size = u32(h, 12);
  if (size < 92 || size > sector) return { ok: false, why: "header size out of range" };
  const copy = h.slice(0, size);
  copy.fill(0, 16, 20);
  if (crc32(copy) !== u32(h, 16)) return { ok: false, why: "header checksum mismatch" };
  const my = u64(h, 24);
  if (my !== lba) return { ok: false, why: "header names another location" };
  const firstUsable = u64(h, 40);
  const lastUsable = u64(h, 48);
  const entriesLba = u64(h, 72);
  const count = u32(h, 80);
  const entrySize = u32(h, 84);
  if (entrySize < 128 || entrySize > 4096 || entrySize % 8 !== 0) return { ok: false, why: "entry size out of range" };
  if (count > MAX_GPT_ENTRIES_BYTES / entrySize) return { ok: false, why: "too many entries" };
  if (firstUsable > lastUsable || lastUsable > lastLba) return { ok: false, why: "usable area outside the disk" };
  const bytes = count * entrySize;
  const entrySectors = Math.ceil(bytes / sector);
  if (entriesLba < 2 || entriesLba + entrySectors > lastLba + 1) return { ok: false, why: "entry array outside the disk" };
  // the array must not overlap the usable area
  if (primary ? entriesLba + entrySectors > firstUsable : entriesLba <= lastUsable) return { ok: false, why: "entry array overlaps the partitions" };
  let entries: Uint8Array;
  try {
    entries = readChecked(read, entriesLba * sector, bytes, "the GPT entries");
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  }
  const entriesCrc = u32(h, 88);
  if (crc32(entries) !== entriesCrc) return { ok: false, why: "entry array checksum mismatch" };
  return { ok: true, entries, entrySize, count, firstUsable, lastUsable, entriesCrc };
}

function gptPartitions(g: GptHeader, sector: number): Partition[] {
  const out: Partition[] = [];
  for (let i = 0; i < g.count; i++) {
    const e = g.entries.subarray(i * g.entrySize, (i + 1) * g.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = u64(e, 32);
    const last = u64(e, 40);
    if (first > last || first < g.firstUsable || last > g.lastUsable)
      throw new DiskFormatError(`GPT partition ${i + 1} lies outside the usable area`);
    let name = "";
    for (let k = 56; k + 1 < 128; k += 2) {
      const c = u16(e, k);
      if (c === 0) break;
      name += c < 0x20 || (c >= 0x7f && c < 0xa0) ? "?" : String.fromCharCode(c);
    }
    out.push({ index: i + 1, start: first * sector, length: (last - first + 1) * sector, type: guidMixed(e, 0), uuid: guidMixed(e, 16), ...(name ? { name } : {}) });
  }
  return out;
}

function samePartitions(a: Partition[], b: Partition[]): boolean {
  return a.length === b.length && a.every((p, i) => p.index === b[i]!.index && p.start === b[i]!.start && p.length === b[i]!.length && p.type === b[i]!.type);
}

/** GPT at this sector size: a table, or null when neither header is there at all. */
function readGpt(read: ReadAt, size: number, sector: number): PartitionTable | null {
  const lastLba = Math.floor(size / sector) - 1;
  if (lastLba < 3) return null;
  const p = readGptHeader(read, 1, sector, lastLba, true);
  const b = readGptHeader(read, lastLba, sector, lastLba, false);
  if (!p.ok && !b.ok) {
    if (p.why === "no GPT signature" && b.why === "no GPT signature") return null;
    throw new DiskFormatError(`both GPT headers are damaged (primary: ${p.why}; backup: ${b.why})`);
  }
  if (p.ok && b.ok) {
    const pp = gptPartitions(p, sector);
    if (p.entriesCrc !== b.entriesCrc || !equal(p.entries, b.entries) || !samePartitions(pp, gptPartitions(b, sector)))
      throw new DiskFormatError("the primary and backup GPT describe different partitions");
    return { type: "gpt", sectorSize: sector, partitions: checkOverlap(pp, size) };
  }
  const good = (p.ok ? p : b) as GptHeader;
  const note = p.ok ? `backup GPT header damaged (${(b as { why: string }).why}): the primary was used` : `primary GPT header damaged (${(p as { why: string }).why}): the backup header was used`;
  return { type: "gpt", sectorSize: sector, partitions: checkOverlap(gptPartitions(good, sector), size), note };
}

function checkOverlap(parts: Partition[], size: number): Partition[] {
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i]!;
    if (p.length <= 0 || p.start + p.length > size) throw new DiskFormatError(`partition ${p.index} extends past the end of the disk`);
    if (i > 0 && sorted[i - 1]!.start + sorted[i - 1]!.length > p.start) throw new DiskFormatError(`partitions ${sorted[i - 1]!.index} and ${p.index} overlap`);
  }
  return parts;
}

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  sectors: number;
}

function mbrEntries(s: Uint8Array): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    out.push({ status: s[o]!, type: s[o + 4]!, lba: u32(s, o + 8), sectors: u32(s, o + 12) });
  }
  return out;
}

/** A boot sector of a file system written straight onto the disk (no table): FAT, NTFS, exFAT. */
function looksLikeFsBootSector(s: Uint8Array): boolean {
  const oem = ascii(s, 3, 8);
  return oem === "NTFS    " || oem === "EXFAT   " || ascii(s, 54, 5) === "FAT12" || ascii(s, 54, 5) === "FAT16" || ascii(s, 82, 5) === "FAT32" || ascii(s, 3, 8) === "-FVE-FS-";
}

function readMbr(read: ReadAt, size: number, sector: number, s0: Uint8Array): PartitionTable | null {
  if (s0[510] !== 0x55 || s0[511] !== 0xaa || looksLikeFsBootSector(s0)) return null;
  const entries = mbrEntries(s0);
  // a boot sector that is not a table has garbage here: a status other than 0/0x80
  if (entries.some((e) => e.status !== 0 && e.status !== 0x80)) return null;
  const used = entries.filter((e) => e.type !== 0 && e.sectors > 0);
  const diskSectors = Math.floor(size / sector);
  const parts: Partition[] = [];
  let extended: MbrEntry | null = null;
  for (let i = 0; i < 4; i++) {
    const e = entries[i]!;
    if (e.type === 0 || e.sectors === 0) continue;
    if (e.lba === 0 || e.lba + e.sectors > diskSectors) throw new DiskFormatError(`MBR partition ${i + 1} lies outside the disk`);
    if (MBR_EXTENDED.has(e.type)) {
      if (extended) throw new DiskFormatError("the MBR has two extended partitions");
      extended = e;
      continue;
    }
    parts.push({ index: i + 1, start: e.lba * sector, length: e.sectors * sector, type: `0x${e.type.toString(16).padStart(2, "0")}` });
  }
  if (used.length === 0) return null;
  if (extended) {
    const seen = new Set<number>();
    let ebr = extended.lba;
    for (let n = 0; ; n++) {
      if (seen.has(ebr)) throw new DiskFormatError("the chain of logical partitions loops");
      if (n >= MAX_LOGICAL) throw new DiskFormatError(`more than ${MAX_LOGICAL} logical partitions`);
      seen.add(ebr);
      if (ebr < extended.lba || ebr >= extended.lba + extended.sectors) throw new DiskFormatError("a logical partition's boot record lies outside the extended partition");
      const s = readChecked(read, ebr * sector, sector, "an extended boot record");
      if (s[510] !== 0x55 || s[511] !== 0xaa) {
        if (n === 0) break; // an empty extended partition
        throw new DiskFormatError("an extended boot record is damaged");
      }
      const [l, next] = mbrEntries(s) as [MbrEntry, MbrEntry];
      if (l.type !== 0 && l.sectors > 0) {
        const start = ebr + l.lba;
        if (l.lba === 0 || start + l.sectors > extended.lba + extended.sectors) throw new DiskFormatError(`logical partition ${5 + parts.filter((p) => p.index >= 5).length} lies outside the extended partition`);
        parts.push({ index: 5 + parts.filter((p) => p.index >= 5).length, start: start * sector, length: l.sectors * sector, type: `0x${l.type.toString(16).padStart(2, "0")}` });
      }
      if (next.type === 0 || next.sectors === 0) break;
      if (!MBR_EXTENDED.has(next.type)) throw new DiskFormatError("an extended boot record links to something that is not one");
      ebr = extended.lba + next.lba;
    }
  }
  return { type: "mbr", sectorSize: sector, partitions: checkOverlap(parts, size) };
}

/**
 * The partition table of a disk of `size` bytes whose logical sector size is
 * `sectorSize` (512 or 4096; other values are treated as 512).
 */
export function readPartitionTable(read: ReadAt, size: number, sectorSize: number): PartitionTable {
  if (!Number.isSafeInteger(size) || size < 512) return { type: "none", sectorSize: 512, partitions: [] };
  const sizes = sectorSize === 4096 ? [4096, 512] : [512, 4096];
  const s0 = readChecked(read, 0, 512, "the first sector");
  const protective = s0[510] === 0x55 && s0[511] === 0xaa && mbrEntries(s0).some((e) => e.type === 0xee);
  const mbr = () => readMbr(read, size, sizes[0] === 4096 && size >= 4096 ? 4096 : 512, s0);
  for (const sector of sizes) {
    const g = readGpt(read, size, sector);
    if (!g) continue;
    if (protective) return g;
    // A GPT with no protective MBR in front of it is not what the kernel
    // reads: it is left over from an earlier table (often only its backup
    // header, at the end of the disk, survives a new MBR or a file system
    // made on the whole disk). Its partitions would put the wrong maps at
    // the wrong places: the MBR is the table, if there is one; else nothing
    // can be trusted.
    const m = mbr();
    if (m) return { ...m, note: "a GPT without a protective MBR (left over from an earlier table) was ignored" };
    throw new DiskFormatError("a GPT header without a protective MBR (left over from an earlier table?)");
  }
  if (protective) throw new DiskFormatError("a protective MBR but no GPT header");
  return mbr() ?? { type: "none", sectorSize: sizes[0]!, partitions: [] };
}
