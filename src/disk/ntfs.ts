// NTFS used-block map: reads the boot sector, the $MFT records it needs
// ($MFT, $LogFile, $Volume, the root directory, $Bitmap) and the cluster
// bitmap, and returns which clusters push must image. Pure: all reads go
// through a ReadAt. The volume is imaged whole when it is marked dirty, when
// its $LogFile holds unreplayed changes, when Windows is hibernated on it
// (hiberfil.sys starts with "hibr"), or when any structure on the way is
// damaged. Every number read from the disk is capped before use. Rules and
// limits: docs/USED-BLOCKS.md.
import { DiskFormatError, type FsAnalysis, type ReadAt, type UsedBlocks, MAX_READ, countUsed, markBlocks, newUsedBlocks } from "./types.ts";
import { u16, u32, u64, isPow2 } from "./bytes.ts";

/** Fixups are applied per 512-byte stride, whatever the sector size. */
const STRIDE = 512;
/** Attributes walked in one MFT record before giving up. */
const MAX_ATTRS = 128;
/** Runs decoded for one attribute (all its extents together). */
const MAX_RUNS = 1 << 16;
/** Extents (MFT records) one attribute list may spread a $DATA over. */
const MAX_EXTENTS = 1024;
/** An attribute list larger than this is not read (Windows caps them at 256 KiB). */
const MAX_ATTR_LIST = 1 << 20;
/** Index blocks of the root directory searched for hiberfil.sys. */
const MAX_INDEX_BLOCKS = 4096;
/** The largest cluster Windows formats (2 MiB). */
const MAX_CLUSTER = 2 * 1024 * 1024;
const MAX_RECORD = 65536;

const AT_ATTRIBUTE_LIST = 0x20;
const AT_VOLUME_NAME = 0x60;
const AT_VOLUME_INFORMATION = 0x70;
const AT_DATA = 0x80;
const AT_INDEX_ROOT = 0x90;
const AT_INDEX_ALLOCATION = 0xa0;
const AT_BITMAP = 0xb0;
const AT_END = 0xffffffff;

const FILE_MFT = 0;
const FILE_LOGFILE = 2;
const FILE_VOLUME = 3;
const FILE_ROOT = 5;
const FILE_BITMAP = 6;

const VOLUME_IS_DIRTY = 0x0001;
const VOLUME_CHKDSK_UNDERWAY = 0x4000;
const RESTART_VOLUME_IS_CLEAN = 0x0002;
const LOGFILE_NO_CLIENT = 0xffff;

/** A structure on the disk is not what NTFS says it must be: the volume is imaged whole. */
class Damaged extends DiskFormatError {}

function fail(what: string): never {
  throw new Damaged(what);
}




/** A signed 64-bit field (VCNs, LSNs); out-of-range values come back as +-Infinity. */
function s64(b: Uint8Array, o: number): number {
  const v = new DataView(b.buffer, b.byteOffset + o, 8).getBigInt64(0, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) return Infinity;
  if (v < -BigInt(Number.MAX_SAFE_INTEGER)) return -Infinity;
  return Number(v);
}


function utf16(b: Uint8Array, o: number, chars: number): string {
  let s = "";
  for (let i = 0; i < chars; i++) s += String.fromCharCode(u16(b, o + 2 * i));
  return s;
}

/** One run of an attribute's data: `len` clusters from `vcn`, at `lcn` on the disk (-1 = sparse, reads as zeros). */
interface Run {
  vcn: number;
  lcn: number;
  len: number;
}

interface Attr {
  type: number;
  name: string;
  flags: number;
  nonResident: boolean;
  /** resident: the value */
  value?: Uint8Array;
  /** non-resident: the extent's VCN range and the whole attribute's sizes (valid on the extent with lowestVcn 0) */
  lowestVcn: number;
  highestVcn: number;
  allocatedSize: number;
  dataSize: number;
  initializedSize: number;
  runs: Run[];
}

interface Geometry {
  sectorSize: number;
  clusterSize: number;
  clusters: number;
  recordSize: number;
  indexBlockSize: number;
  mftLcn: number;
  mftMirrLcn: number;
}

/** Parses and checks the boot sector (bootsect.c's rules, plus caps). */
function parseBoot(b: Uint8Array, size: number): Geometry {
  const sectorSize = u16(b, 0x0b);
  if (sectorSize < 256 || sectorSize > 4096 || !isPow2(sectorSize)) fail(`boot sector: bytes per sector ${sectorSize} is not a power of two from 256 to 4096`);
  const spcRaw = b[0x0d]!;
  let spc: number;
  if (spcRaw > 128) {
    const shift = 256 - spcRaw;
    if (shift > 21) fail(`boot sector: sectors per cluster 2^${shift} is too large`);
    spc = 2 ** shift;
  } else {
    if (!isPow2(spcRaw)) fail(`boot sector: sectors per cluster ${spcRaw} is not a power of two`);
    spc = spcRaw;
  }
  const clusterSize = sectorSize * spc;
  if (clusterSize > MAX_CLUSTER) fail(`boot sector: cluster size ${clusterSize} is larger than 2 MiB`);
  const totalSectors = u64(b, 0x28);
  if (!Number.isFinite(totalSectors) || totalSectors * sectorSize > size) {
    fail(`boot sector: the volume (${totalSectors} sectors of ${sectorSize} bytes) is larger than its partition (${size} bytes)`);
  }
  const clusters = Math.floor(totalSectors / spc);
  if (clusters < 16) fail(`boot sector: the volume has only ${clusters} clusters`);
  const recordSize = recordBytes(b[0x40]!, clusterSize, "MFT record");
  if (recordSize < STRIDE) fail(`boot sector: MFT record size ${recordSize} is smaller than ${STRIDE}`);
  const indexBlockSize = recordBytes(b[0x44]!, clusterSize, "index block");
  if (indexBlockSize < STRIDE) fail(`boot sector: index block size ${indexBlockSize} is smaller than ${STRIDE}`);
  const mftLcn = u64(b, 0x30);
  const mftMirrLcn = u64(b, 0x38);
  if (!(mftLcn < clusters) || !(mftMirrLcn < clusters)) fail("boot sector: $MFT or $MFTMirr lies past the end of the volume");
  return { sectorSize, clusterSize, clusters, recordSize, indexBlockSize, mftLcn, mftMirrLcn };
}

/** Clusters per MFT record / index block: positive = clusters, negative = 2^-n bytes. */
function recordBytes(raw: number, clusterSize: number, what: string): number {
  const v = raw > 127 ? raw - 256 : raw;
  let bytes: number;
  if (v > 0) bytes = v * clusterSize;
  else {
    if (v < -16 || v > -9) fail(`boot sector: ${what} size 2^${-v} is out of range`);
    bytes = 2 ** -v;
  }
  if (bytes > MAX_RECORD || !isPow2(bytes)) fail(`boot sector: ${what} size ${bytes} is not a power of two up to 64 KiB`);
  return bytes;
}

/**
 * Applies the update-sequence fixups of a multi-sector record in place
 * (mst.c): every 512-byte stride must end in the record's USN, which is then
 * replaced by the saved bytes. A mismatch means a torn or damaged write.
 */
function applyFixups(rec: Uint8Array, what: string): void {
  const usaOfs = u16(rec, 4);
  const usaCount = u16(rec, 6);
  const strides = rec.length / STRIDE;
  if (usaCount - 1 !== strides || usaOfs & 1 || usaOfs < 8 || usaOfs + usaCount * 2 > rec.length) {
    fail(`${what}: bad update sequence array (offset ${usaOfs}, count ${usaCount})`);
  }
  const usn = u16(rec, usaOfs);
  for (let i = 1; i < usaCount; i++) {
    const end = i * STRIDE - 2;
    if (u16(rec, end) !== usn) fail(`${what}: update sequence mismatch in sector ${i - 1} (a torn or damaged write)`);
    rec[end] = rec[usaOfs + 2 * i]!;
    rec[end + 1] = rec[usaOfs + 2 * i + 1]!;
  }
}

class Volume {
  readonly g: Geometry;
  private mftRuns: Run[] = [];
  private mftBytes = 0;

  constructor(
    private readonly read: ReadAt,
    g: Geometry,
  ) {
    this.g = g;
  }

  /** Reads bytes of the volume, in pieces of at most MAX_READ. */
  readVol(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const n = Math.min(MAX_READ, length - done);
      let got: Uint8Array;
      try {
        got = this.read(offset + done, n);
      } catch (e) {
        fail(`reading ${n} bytes at byte ${offset + done} failed: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (got.length !== n) fail(`short read at byte ${offset + done}`);
      out.set(got, done);
      done += n;
    }
    return out;
  }

  /**
   * Reads [offset, offset + length) of an attribute's data through its runs.
   * Sparse runs and bytes past `initialized` read as `fill`; bytes no run
   * covers read as `fill` too when `holes` is true, else are damage.
   */
  readRuns(runs: Run[], offset: number, length: number, what: string, opts: { fill: number; initialized?: number; holes?: boolean }): Uint8Array {
    const cs = this.g.clusterSize;
    const out = new Uint8Array(length).fill(opts.fill);
    const end = offset + length;
    const init = opts.initialized ?? Infinity;
    let covered = 0;
    for (const r of runs) {
      const rs = r.vcn * cs;
      const re = rs + r.len * cs;
      const from = Math.max(rs, offset);
      const to = Math.min(re, end, Math.max(init, offset));
      if (Math.min(re, end) > from) covered += Math.min(re, end) - from;
      if (from >= to || r.lcn < 0) continue;
      out.set(this.readVol(r.lcn * cs + (from - rs), to - from), from - offset);
    }
    if (covered < length && !opts.holes) fail(`${what}: the runlist does not cover bytes ${offset}..${end}`);
    return out;
  }

  /** Reads MFT record `n` (through $MFT's runlist once it is known), checks it and applies its fixups. */
  record(n: number): Uint8Array {
    const rs = this.g.recordSize;
    let rec: Uint8Array;
    if (this.mftRuns.length === 0) {
      rec = this.readVol(this.g.mftLcn * this.g.clusterSize + n * rs, rs);
    } else {
      if ((n + 1) * rs > this.mftBytes) fail(`MFT record ${n} lies past the end of $MFT`);
      rec = this.readRuns(this.mftRuns, n * rs, rs, `MFT record ${n}`, { fill: 0 });
      if (this.mftRuns.some((r) => r.lcn < 0 && r.vcn * this.g.clusterSize < (n + 1) * rs && (r.vcn + r.len) * this.g.clusterSize > n * rs)) {
        fail(`MFT record ${n} lies in a sparse part of $MFT`);
      }
    }
    const magic = u32(rec, 0);
    if (magic === 0x44414142) fail(`MFT record ${n} is marked bad ("BAAD")`);
    if (magic !== 0x454c4946) fail(`MFT record ${n} has no "FILE" signature`);
    applyFixups(rec, `MFT record ${n}`);
    if (!(u16(rec, 0x16) & 1)) fail(`MFT record ${n} is not in use`);
    const attrsOffset = u16(rec, 0x14);
    // NTFS 3.1 records carry their own number: catches a record read from the wrong place
    if (attrsOffset >= 0x30 && u32(rec, 0x2c) !== n % 0x100000000) fail(`MFT record ${n} says it is record ${u32(rec, 0x2c)}`);
    return rec;
  }

  /** Loads $MFT's own runlist from record 0 (following its attribute list if it has one). */
  loadMft(): void {
    const rec = this.record(FILE_MFT);
    const data = this.dataAttr(rec, FILE_MFT, "$MFT");
    if (data.nonResident === false) fail("$MFT: its $DATA is resident");
    if (data.dataSize < 16 * this.g.recordSize) fail(`$MFT: data size ${data.dataSize} holds fewer than 16 records`);
    if (data.runs[0]?.lcn !== this.g.mftLcn) fail("$MFT: its runlist does not start at the boot sector's MFT cluster");
    this.setMft(data.runs, data.dataSize);
  }

  /** The runs records are read through; while an attribute list is being followed, only what they cover. */
  private setMft(runs: Run[], bytes?: number): void {
    this.mftRuns = runs;
    this.mftBytes = bytes ?? runs.reduce((n, r) => n + r.len, 0) * this.g.clusterSize;
  }

  get mft(): Run[] {
    return this.mftRuns;
  }

  /** Walks the attributes of a (fixed-up) MFT record, bounded and checked. */
  attributes(rec: Uint8Array, what: string): Attr[] {
    const used = u32(rec, 0x18);
    if (used > rec.length || used < 0x18) fail(`${what}: bytes in use ${used} is outside the record`);
    let off = u16(rec, 0x14);
    if (off < 0x18 || off >= used || off & 7) fail(`${what}: attributes offset ${off} is outside the record`);
    const out: Attr[] = [];
    for (;;) {
      if (off + 4 > used) fail(`${what}: the attributes run past the record's end`);
      const type = u32(rec, off);
      if (type === AT_END) return out;
      if (out.length >= MAX_ATTRS) fail(`${what}: more than ${MAX_ATTRS} attributes`);
      if (off + 16 > used) fail(`${what}: an attribute header runs past the record's end`);
      const len = u32(rec, off + 4);
      if (len < 16 || len > used - off) fail(`${what}: attribute length ${len} at offset ${off} is outside the record`);
      out.push(this.parseAttr(rec.subarray(off, off + len), type, what));
      off += len;
    }
  }

  private parseAttr(a: Uint8Array, type: number, what: string): Attr {
    const nonResident = a[8] !== 0;
    const nameLen = a[9]!;
    const nameOff = u16(a, 0x0a);
    if (nameLen && nameOff + 2 * nameLen > a.length) fail(`${what}: an attribute name runs past the attribute`);
    const name = nameLen ? utf16(a, nameOff, nameLen) : "";
    const base = { type, name, flags: u16(a, 0x0c), nonResident, runs: [] as Run[] };
    if (!nonResident) {
      if (a.length < 0x18) fail(`${what}: resident attribute 0x${type.toString(16)} is too short`);
      const vlen = u32(a, 0x10);
      const voff = u16(a, 0x14);
      if (voff + vlen > a.length) fail(`${what}: the value of attribute 0x${type.toString(16)} runs past the attribute`);
      return { ...base, value: a.subarray(voff, voff + vlen), lowestVcn: 0, highestVcn: -1, allocatedSize: vlen, dataSize: vlen, initializedSize: vlen };
    }
    if (a.length < 0x40) fail(`${what}: non-resident attribute 0x${type.toString(16)} is too short`);
    const lowestVcn = s64(a, 0x10);
    const highestVcn = s64(a, 0x18);
    const allocatedSize = s64(a, 0x28);
    const dataSize = s64(a, 0x30);
    const initializedSize = s64(a, 0x38);
    const maxBytes = this.g.clusters * this.g.clusterSize;
    if (!(lowestVcn >= 0 && highestVcn >= lowestVcn - 1 && highestVcn < this.g.clusters)) fail(`${what}: attribute 0x${type.toString(16)} has VCN range ${lowestVcn}..${highestVcn}`);
    if (lowestVcn === 0 && !(allocatedSize >= 0 && allocatedSize <= maxBytes && dataSize >= 0 && dataSize <= allocatedSize && initializedSize >= 0 && initializedSize <= dataSize)) {
      fail(`${what}: attribute 0x${type.toString(16)} has impossible sizes (allocated ${allocatedSize}, data ${dataSize}, initialized ${initializedSize})`);
    }
    const mpOff = u16(a, 0x20);
    if (mpOff < 0x40 || mpOff >= a.length) fail(`${what}: the runlist offset ${mpOff} is outside the attribute`);
    const runs = this.decodeRuns(a, mpOff, lowestVcn, what);
    const end = runs.length ? runs[runs.length - 1]!.vcn + runs[runs.length - 1]!.len : lowestVcn;
    if (end !== highestVcn + 1) fail(`${what}: the runlist of attribute 0x${type.toString(16)} ends at VCN ${end}, not ${highestVcn + 1}`);
    return { ...base, runs, lowestVcn, highestVcn, allocatedSize, dataSize, initializedSize };
  }

  /** Decodes mapping pairs (runlist.c): a header byte, a length, a signed LCN delta; no delta = sparse. */
  private decodeRuns(a: Uint8Array, pos: number, vcn: number, what: string): Run[] {
    const runs: Run[] = [];
    let lcn = 0;
    const clusters = this.g.clusters;
    while (pos < a.length) {
      const h = a[pos]!;
      if (h === 0) return runs;
      const lb = h & 0x0f;
      const ob = h >> 4;
      if (lb === 0 || lb > 8 || ob > 8 || pos + 1 + lb + ob > a.length) fail(`${what}: a runlist entry is malformed`);
      if (runs.length >= MAX_RUNS) fail(`${what}: more than ${MAX_RUNS} runs`);
      const len = leSigned(a, pos + 1, lb);
      if (!(len > 0 && len <= clusters && vcn + len <= clusters)) fail(`${what}: a run of ${len} clusters is longer than the volume`);
      if (ob === 0) runs.push({ vcn, lcn: -1, len });
      else {
        lcn += leSigned(a, pos + 1 + lb, ob);
        if (!(lcn >= 0 && lcn + len <= clusters)) fail(`${what}: a run points past the volume (cluster ${lcn}, ${len} clusters, the volume has ${clusters})`);
        runs.push({ vcn, lcn, len });
      }
      vcn += len;
      pos += 1 + lb + ob;
    }
    fail(`${what}: the runlist has no end marker`);
  }

  /**
   * The unnamed $DATA of a base record, all extents: follows an attribute
   * list into other MFT records when the runlist does not fit in one.
   */
  dataAttr(rec: Uint8Array, recNo: number, what: string): Attr {
    return this.namedAttr(rec, recNo, AT_DATA, "", what);
  }

  namedAttr(rec: Uint8Array, recNo: number, type: number, name: string, what: string): Attr {
    const attrs = this.attributes(rec, what);
    const here = attrs.filter((a) => a.type === type && a.name === name);
    const list = attrs.find((a) => a.type === AT_ATTRIBUTE_LIST);
    if (!list) {
      if (here.length !== 1) fail(`${what}: ${here.length === 0 ? "no" : "more than one"} ${attrName(type, name)} attribute`);
      return checkWhole(here[0]!, what, this.g.clusterSize);
    }
    // Attribute list entries (attrib.c): type, length, name, lowest VCN, MFT reference
    const bytes = this.attrValue(list, MAX_ATTR_LIST, `${what}: attribute list`);
    const extents: Attr[] = [];
    for (let off = 0; off + 26 <= bytes.length; ) {
      const t = u32(bytes, off);
      const len = u16(bytes, off + 4);
      if (len < 26 || off + len > bytes.length) fail(`${what}: an attribute list entry is malformed`);
      const nl = bytes[off + 6]!;
      const no = bytes[off + 7]!;
      if (nl && no + 2 * nl > len) fail(`${what}: an attribute list entry's name runs past it`);
      const nm = nl ? utf16(bytes, off + no, nl) : "";
      if (t === type && nm === name) {
        if (extents.length >= MAX_EXTENTS) fail(`${what}: more than ${MAX_EXTENTS} extents`);
        const vcn = s64(bytes, off + 8);
        const ref = u64(bytes, off + 16);
        const refRec = Number.isFinite(ref) ? ref % 2 ** 48 : -1;
        let found: Attr | undefined;
        if (refRec === recNo) found = here.find((a) => a.lowestVcn === vcn);
        else if (refRec >= 0) {
          const ext = this.record(refRec);
          if (u64(ext, 0x20) % 2 ** 48 !== recNo) fail(`${what}: extension record ${refRec} belongs to another file`);
          found = this.attributes(ext, `MFT record ${refRec}`).find((a) => a.type === type && a.name === name && a.lowestVcn === vcn);
        }
        if (!found) fail(`${what}: the attribute list names an extent (VCN ${vcn}) that is not there`);
        extents.push(found);
        // $MFT's own extents may be needed to read the next extension record
        if (recNo === FILE_MFT && type === AT_DATA && name === "") this.setMft(extents.flatMap((e) => e.runs).sort((x, y) => x.vcn - y.vcn));
      }
      off += len;
    }
    if (extents.length === 0) fail(`${what}: no ${attrName(type, name)} attribute`);
    extents.sort((x, y) => x.lowestVcn - y.lowestVcn);
    const first = extents[0]!;
    if (!first.nonResident) {
      if (extents.length !== 1) fail(`${what}: a resident ${attrName(type, name)} has extents`);
      return first;
    }
    let next = 0;
    for (const e of extents) {
      if (!e.nonResident || e.lowestVcn !== next) fail(`${what}: the extents of ${attrName(type, name)} are not contiguous`);
      next = e.highestVcn + 1;
    }
    return checkWhole({ ...first, highestVcn: next - 1, runs: extents.flatMap((e) => e.runs) }, what, this.g.clusterSize);
  }

  /** An attribute's whole value (resident or not), refused when larger than `cap`. */
  attrValue(a: Attr, cap: number, what: string): Uint8Array {
    if (a.value) return a.value;
    if (a.dataSize > cap) fail(`${what}: ${a.dataSize} bytes is larger than ${cap}`);
    return this.readRuns(a.runs, 0, a.dataSize, what, { fill: 0, initialized: a.initializedSize });
  }
}

function attrName(type: number, name: string): string {
  const names: Record<number, string> = { [AT_DATA]: "$DATA", [AT_INDEX_ROOT]: "$INDEX_ROOT", [AT_INDEX_ALLOCATION]: "$INDEX_ALLOCATION", [AT_BITMAP]: "$BITMAP" };
  return `${names[type] ?? `0x${type.toString(16)}`}${name ? ` "${name}"` : ""}`;
}

/** A non-resident attribute must start at VCN 0 and its runs must cover its allocated size. */
function checkWhole(a: Attr, what: string, clusterSize: number): Attr {
  if (!a.nonResident) return a;
  if (a.lowestVcn !== 0) fail(`${what}: ${attrName(a.type, a.name)} does not start at VCN 0`);
  if ((a.highestVcn + 1) * clusterSize < a.allocatedSize) fail(`${what}: the runlist of ${attrName(a.type, a.name)} is shorter than its allocated size`);
  return a;
}

function leSigned(b: Uint8Array, o: number, n: number): number {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[o + i]!);
  if (b[o + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) return NaN;
  return Number(v);
}

/**
 * Whether $LogFile says the volume was shut down cleanly (logfile.c): an
 * empty log (all 0xff, as ntfs-3g and mkntfs leave it) is clean; otherwise
 * the most recent restart page must have no client in use or the
 * "volume is clean" flag. Returns the reason it is not clean, or null.
 */
function logfileUnclean(v: Volume): string | null {
  const rec = v.record(FILE_LOGFILE);
  const data = v.dataAttr(rec, FILE_LOGFILE, "$LogFile");
  if (!data.nonResident) fail("$LogFile: its $DATA is resident");
  const size = Math.min(data.dataSize, 2 ** 32);
  let empty = true;
  let best: { lsn: number; clean: boolean } | null = null;
  let found = 0;
  for (let pos = 0; pos + STRIDE <= size; pos = pos === 0 ? STRIDE : pos * 2) {
    const p = v.readRuns(data.runs, pos, STRIDE, "$LogFile", { fill: 0, initialized: data.initializedSize });
    const magic = u32(p, 0);
    if (magic !== 0xffffffff) empty = false;
    else if (!empty) break;
    if (magic === 0x44524352 /* RCRD */) break;
    const rstr = magic === 0x52545352; /* RSTR */
    const chkd = magic === 0x444b4843; /* CHKD */
    if (!rstr && !chkd) continue;
    // the restart area fields read here lie in the first 510 bytes, before the first fixup
    const raOff = u16(p, 24);
    if (raOff & 7 || raOff < 30 || raOff + 16 > STRIDE - 2) continue;
    const lsn = chkd ? s64(p, 8) : s64(p, raOff);
    const clientInUse = u16(p, raOff + 12);
    const flags = u16(p, raOff + 14);
    const clean = clientInUse === LOGFILE_NO_CLIENT || (flags & RESTART_VOLUME_IS_CLEAN) !== 0;
    if (!best || lsn > best.lsn) best = { lsn, clean };
    if (++found === 2) break;
  }
  if (empty) return null;
  if (!best) return "$LogFile is neither empty nor has a valid restart page";
  return best.clean ? null : "$LogFile holds changes not yet written to the volume (shut down uncleanly: boot Windows and shut it down, or run chkdsk)";
}

/**
 * Whether Windows is hibernated (or fast-started) on this volume, as
 * ntfs-3g decides it: /hiberfil.sys exists and its first 4 bytes are "hibr"
 * in either case, or it is shorter than 4 KiB. Every entry of the root
 * directory's $I30 index (the index root and each index block its bitmap
 * marks in use) is searched, so no name collation is needed.
 */
function hibernated(v: Volume): string | null {
  const root = v.record(FILE_ROOT);
  const what = "root directory";
  const ir = v.namedAttr(root, FILE_ROOT, AT_INDEX_ROOT, "$I30", what);
  const irv = ir.value;
  if (!irv || irv.length < 32) fail(`${what}: $INDEX_ROOT is too short`);
  let ref = findInNode(irv, 16, what);
  if (ref < 0 && irv[16 + 12]! & 1 /* LARGE_INDEX */) {
    const alloc = v.namedAttr(root, FILE_ROOT, AT_INDEX_ALLOCATION, "$I30", what);
    // the index's own block size (INDEX_ROOT), which the boot sector's normally repeats
    const bs = u32(irv, 8);
    if (!(bs >= STRIDE && bs <= MAX_RECORD && isPow2(bs))) fail(`${what}: index block size ${bs} is not a power of two from 512 bytes to 64 KiB`);
    const blocks = Math.floor(alloc.dataSize / bs);
    if (blocks > MAX_INDEX_BLOCKS) fail(`${what}: ${blocks} index blocks is more than ${MAX_INDEX_BLOCKS} to search for hiberfil.sys`);
    const bmAttr = v.namedAttr(root, FILE_ROOT, AT_BITMAP, "$I30", what);
    const bm = v.attrValue(bmAttr, MAX_INDEX_BLOCKS / 8 + 8, `${what}: index bitmap`);
    for (let i = 0; i < blocks && ref < 0; i++) {
      if (!((bm[i >> 3] ?? 0) & (1 << (i & 7)))) continue;
      const blk = v.readRuns(alloc.runs, i * bs, bs, `${what}: index block ${i}`, { fill: 0, initialized: alloc.initializedSize });
      if (u32(blk, 0) !== 0x58444e49 /* INDX */) fail(`${what}: index block ${i} has no "INDX" signature`);
      applyFixups(blk, `${what}: index block ${i}`);
      ref = findInNode(blk, 0x18, `${what}: index block ${i}`);
    }
  }
  if (ref < 0) return null;
  const rec = v.record(ref);
  const data = v.dataAttr(rec, ref, "hiberfil.sys");
  if (data.dataSize < 4096) return "hiberfil.sys is shorter than 4 KiB (ntfs-3g treats that as hibernated)";
  if (data.flags & 0x40ff) fail("hiberfil.sys is compressed or encrypted");
  const head = data.value ? data.value.subarray(0, 4) : v.readRuns(data.runs, 0, 4, "hiberfil.sys", { fill: 0, initialized: data.initializedSize });
  const sig = String.fromCharCode(...head).toLowerCase();
  return sig === "hibr" ? `Windows is hibernated or fast-started on it (hiberfil.sys starts with "${String.fromCharCode(...head)}"): shut Windows down fully, or boot it and disable fast startup` : null;
}

/** Searches one index node's entries (INDEX_HEADER at `hdr`) for "hiberfil.sys"; returns its MFT record or -1. */
function findInNode(b: Uint8Array, hdr: number, what: string): number {
  const entriesOff = u32(b, hdr);
  const indexLen = u32(b, hdr + 4);
  const end = hdr + indexLen;
  if (end > b.length || entriesOff < 16 || hdr + entriesOff > end) fail(`${what}: the index header is outside its node`);
  let off = hdr + entriesOff;
  for (let n = 0; ; n++) {
    if (off + 16 > end || n > 65536) fail(`${what}: the index entries run past the node`);
    const len = u16(b, off + 8);
    const keyLen = u16(b, off + 10);
    const flags = u16(b, off + 12);
    if (len < 16 || off + len > end) fail(`${what}: an index entry's length ${len} is outside the node`);
    if (flags & 2 /* INDEX_ENTRY_END */) return -1;
    if (keyLen >= 66 + 24 && 16 + keyLen <= len) {
      const nameLen = b[off + 16 + 64]!;
      if (nameLen === 12 && utf16(b, off + 16 + 66, 12).toLowerCase() === "hiberfil.sys") {
        const ref = u64(b, off);
        if (!Number.isFinite(ref)) fail(`${what}: hiberfil.sys has an impossible MFT reference`);
        return ref % 2 ** 48;
      }
    }
    off += len;
  }
}

/** Reads $Bitmap into a used map: bit set = cluster in use. Parts it cannot read are marked used. */
function readBitmap(v: Volume): UsedBlocks {
  const { clusters, clusterSize } = v.g;
  const used = newUsedBlocks(clusterSize, clusters);
  const rec = v.record(FILE_BITMAP);
  const data = v.dataAttr(rec, FILE_BITMAP, "$Bitmap");
  if (data.flags & 0x40ff) fail("$Bitmap is compressed or encrypted");
  const need = used.bitmap.length;
  if (data.value) used.bitmap.set(data.value.subarray(0, need));
  else {
    // sparse runs and bytes past the initialized size cannot prove anything unused: 0xff
    for (let off = 0; off < need; off += MAX_READ) {
      const n = Math.min(MAX_READ, need - off);
      const piece = v.readRuns(data.runs, off, n, "$Bitmap", { fill: 0xff, initialized: data.initializedSize, holes: true });
      used.bitmap.set(piece, off);
    }
  }
  // clusters the bitmap is too short to describe are used
  markBlocks(used, Math.min(data.dataSize, need) * 8, clusters);
  // bits past the last cluster are not clusters
  if (clusters & 7) used.bitmap[need - 1]! &= (1 << (clusters & 7)) - 1;
  // what this analysis itself read is used whatever the bitmap says: the boot
  // area, $MFT (all of it), $MFTMirr's first 4 records and $Bitmap itself
  markBlocks(used, 0, Math.ceil(8192 / clusterSize));
  for (const r of [...v.mft, ...data.runs]) if (r.lcn >= 0) markBlocks(used, r.lcn, r.lcn + r.len);
  markBlocks(used, v.g.mftMirrLcn, v.g.mftMirrLcn + Math.ceil((4 * v.g.recordSize) / clusterSize));
  return used;
}

export function analyzeNtfs(read: ReadAt, size: number): FsAnalysis | null {
  if (size < 512) return null;
  const boot = read(0, 512);
  if (String.fromCharCode(...boot.subarray(3, 11)) !== "NTFS    ") return null;
  const serial = Array.from(boot.subarray(0x48, 0x50)).reverse().map((x) => x.toString(16).padStart(2, "0")).join("").toUpperCase();
  const out: FsAnalysis = { fs: "ntfs", uuid: serial, method: "whole", usedBytes: size, size };
  const whole = (reason: string): FsAnalysis => ({ ...out, method: "whole", reason, usedBytes: size });
  try {
    if (u16(boot, 510) !== 0xaa55) fail("boot sector: no 0x55AA signature");
    const v = new Volume(read, parseBoot(boot, size));
    v.loadMft();
    const vol = v.record(FILE_VOLUME);
    const attrs = v.attributes(vol, "$Volume");
    const nameAttr = attrs.find((a) => a.type === AT_VOLUME_NAME && a.value);
    if (nameAttr?.value && nameAttr.value.length >= 2 && nameAttr.value.length <= 256) out.label = utf16(nameAttr.value, 0, nameAttr.value.length >> 1);
    const info = attrs.find((a) => a.type === AT_VOLUME_INFORMATION);
    if (!info?.value || info.value.length < 12) fail("$Volume: no $VOLUME_INFORMATION");
    const flags = u16(info.value, 10);
    if (flags & VOLUME_IS_DIRTY) return whole("volume marked dirty (run chkdsk)");
    if (flags & VOLUME_CHKDSK_UNDERWAY) return whole("chkdsk was interrupted on this volume (run chkdsk)");
    const log = logfileUnclean(v);
    if (log) return whole(log);
    const hib = hibernated(v);
    if (hib) return whole(hib);
    const used = readBitmap(v);
    return { ...out, method: "used-blocks", used, usedBytes: countUsed(used) * v.g.clusterSize + (size - used.blocks * v.g.clusterSize) };
  } catch (e) {
    // anything else is a bug here, not damage on the disk: the caller reports it
    if (e instanceof Damaged) return whole(e.message);
    throw e;
  }
}
