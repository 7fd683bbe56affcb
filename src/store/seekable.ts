// The zstd seekable format's seek table (a skippable frame at the end of the
// image). Pure encode/parse. Spec: zstd contrib/seekable_format, see docs/FORMAT.md.
import { StoreError } from "./errors.ts";
import { compressBound } from "../util/buffer-pool.ts";

export const SKIPPABLE_MAGIC = 0x184d2a5e;
export const SEEKABLE_MAGIC = 0x8f92eab1;
export const FOOTER_SIZE = 9;
export const MAX_FRAMES = 0x7fffffff;

export interface SeekEntry {
  compressedSize: number;
  rawSize: number;
  /** low 32 bits of XXH64 of the raw data (the zstd frame's content checksum) */
  checksum: number;
}

export function encodeSeekTable(entries: readonly SeekEntry[]): Uint8Array {
  const entryBytes = entries.length * 12;
  const out = new Uint8Array(8 + entryBytes + FOOTER_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(0, SKIPPABLE_MAGIC, true);
  v.setUint32(4, entryBytes + FOOTER_SIZE, true);
  let at = 8;
  for (const e of entries) {
    v.setUint32(at, e.compressedSize, true);
    v.setUint32(at + 4, e.rawSize, true);
    v.setUint32(at + 8, e.checksum >>> 0, true);
    at += 12;
  }
  v.setUint32(at, entries.length, true);
  v.setUint8(at + 4, 0x80); // checksum flag
  v.setUint32(at + 5, SEEKABLE_MAGIC, true);
  return out;
}

/** Reads the footer (last 9 bytes of the file): how many bytes the whole seek table frame takes. */
export function parseFooter(footer: Uint8Array): { frames: number; checksums: boolean; tableSize: number } {
  if (footer.length !== FOOTER_SIZE) throw new StoreError("DAMAGED", "seek table footer must be 9 bytes");
  const v = new DataView(footer.buffer, footer.byteOffset, FOOTER_SIZE);
  if (v.getUint32(5, true) !== SEEKABLE_MAGIC) throw new StoreError("DAMAGED", "no zstd seek table at the end of the file (not a seekable image)");
  const frames = v.getUint32(0, true);
  const descriptor = v.getUint8(4);
  if (descriptor & 0x7c) throw new StoreError("DAMAGED", "seek table descriptor has reserved bits set");
  const checksums = (descriptor & 0x80) !== 0;
  if (frames > MAX_FRAMES) throw new StoreError("DAMAGED", "seek table claims too many frames");
  const tableSize = 8 + frames * (checksums ? 12 : 8) + FOOTER_SIZE;
  return { frames, checksums, tableSize };
}

/** Parses a whole seek table frame (as located by parseFooter). */
export function parseSeekTable(table: Uint8Array): SeekEntry[] {
  const footer = parseFooter(table.subarray(table.length - FOOTER_SIZE));
  if (table.length !== footer.tableSize) throw new StoreError("DAMAGED", "seek table size does not match its footer");
  const v = new DataView(table.buffer, table.byteOffset, table.length);
  if (v.getUint32(0, true) !== SKIPPABLE_MAGIC) throw new StoreError("DAMAGED", "seek table is not in a skippable frame");
  if (v.getUint32(4, true) !== table.length - 8) throw new StoreError("DAMAGED", "seek table frame size is wrong");
  const entries: SeekEntry[] = [];
  const step = footer.checksums ? 12 : 8;
  for (let i = 0, at = 8; i < footer.frames; i++, at += step) {
    entries.push({
      compressedSize: v.getUint32(at, true),
      rawSize: v.getUint32(at + 4, true),
      checksum: footer.checksums ? v.getUint32(at + 8, true) : 0,
    });
  }
  return entries;
}

/** The content checksum stored in the last 4 bytes of a zstd frame that has one. */
export function frameChecksum(frame: Uint8Array): number {
  return new DataView(frame.buffer, frame.byteOffset + frame.length - 4, 4).getUint32(0, true);
}

/** True when a zstd frame header says a content checksum is present. */
export function frameHasChecksum(frame: Uint8Array): boolean {
  if (frame.length < 9) return false;
  const v = new DataView(frame.buffer, frame.byteOffset, frame.length);
  if (v.getUint32(0, true) !== 0xfd2fb528) return false;
  return (frame[4]! & 0x04) !== 0;
}

/**
 * Padding (docs/FORMAT.md §3.5): a zstd skippable frame (magic 0x184D2A50,
 * 4-byte little-endian size, that many zero bytes) after a frame, counted in
 * that frame's seek-table entry. zstd decoders skip it; the seekable format's
 * readers decode an entry from its start and stop at the end of its frame.
 */
export const PADDING_MAGIC = 0x184d2a50;
/** the largest alignment a store uses (a file-system block of up to 64 KiB) */
export const MAX_ALIGN = 65536;
/** the most padding one entry carries: one before a large frame, one after it */
export const MAX_PADDING = 2 * (MAX_ALIGN + 8);

/** The most bytes an entry for a chunk of `rawSize` may take: zstd's bound, room for the frame's header, and padding. */
export function maxEntrySize(rawSize: number): number {
  return compressBound(rawSize) + 64 + MAX_PADDING;
}

/** Whether n is an alignment a store may use: a power of two from 4096 to MAX_ALIGN. */
export function isAlignment(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 4096 && n <= MAX_ALIGN && (n & (n - 1)) === 0;
}

/** Bytes of padding that take `position` to the next multiple of `align`: 0, or at least 8 (a skippable frame's header). */
export function paddingTo(position: number, align: number): number {
  const gap = (align - (position % align)) % align;
  return gap === 0 || gap >= 8 ? gap : gap + align;
}

/** A skippable frame of exactly `length` bytes (≥ 8): its header, then zeros. */
export function paddingFrame(length: number): Uint8Array {
  const out = new Uint8Array(length);
  const v = new DataView(out.buffer);
  v.setUint32(0, PADDING_MAGIC, true);
  v.setUint32(4, length - 8, true);
  return out;
}

/** Whether bytes[from..] is exactly a run of zero or more zstd skippable frames. */
export function isPadding(bytes: Uint8Array, from: number): boolean {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let at = from;
  while (at < bytes.length) {
    if (bytes.length - at < 8 || (v.getUint32(at, true) & 0xfffffff0) !== PADDING_MAGIC) return false;
    at += 8 + v.getUint32(at + 4, true);
  }
  return at === bytes.length;
}
