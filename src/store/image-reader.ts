// Reads a stored image.zst: its seek table, and its frames one at a time.
import * as fs from "node:fs";
import { FOOTER_SIZE, isPadding, parseFooter, parseSeekTable, type SeekEntry } from "./seekable.ts";
import { zstd } from "../util/zstd.ts";
import { StoreError } from "./errors.ts";

export class ImageReader {
  readonly entries: SeekEntry[];
  readonly offsets: number[];
  readonly rawSize: number;

  private constructor(
    readonly path: string,
    private fd: number,
    entries: SeekEntry[],
  ) {
    this.entries = entries;
    this.offsets = [];
    let at = 0;
    let raw = 0;
    for (const e of entries) {
      this.offsets.push(at);
      at += e.compressedSize;
      raw += e.rawSize;
    }
    this.rawSize = raw;
  }

  /** Opens an image and checks that its frames and seek table account for every byte. */
  static open(path: string): ImageReader {
    const fd = fs.openSync(path, "r");
    try {
      const size = fs.fstatSync(fd).size;
      if (size < FOOTER_SIZE + 8) throw new StoreError("DAMAGED", `${path} is too small to be a seekable image`);
      const footer = new Uint8Array(FOOTER_SIZE);
      fs.readSync(fd, footer, 0, FOOTER_SIZE, size - FOOTER_SIZE);
      const { tableSize } = parseFooter(footer);
      if (tableSize > size) throw new StoreError("DAMAGED", `${path}: seek table larger than the file`);
      const table = new Uint8Array(tableSize);
      fs.readSync(fd, table, 0, tableSize, size - tableSize);
      const entries = parseSeekTable(table);
      const framesBytes = entries.reduce((a, e) => a + e.compressedSize, 0);
      if (framesBytes + tableSize !== size)
        throw new StoreError("DAMAGED", `${path}: the seek table accounts for ${framesBytes + tableSize} bytes but the file has ${size}`);
      return new ImageReader(path, fd, entries);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /**
   * The compressed bytes of frame i, read into the start of `into` when it is
   * large enough, else into a fresh buffer. Padding after the frame in its
   * entry (skippable frames, docs/FORMAT.md §3.5) is left off; an entry that
   * holds anything else is returned whole (its check then fails).
   */
  readFrame(i: number, into?: Uint8Array): Uint8Array {
    return frameOfEntry(this.readEntry(i, into));
  }

  /** Where entry i lies in the file (frame and padding), for cloning it into another image. */
  extent(i: number): { fd: number; offset: number; length: number } {
    return { fd: this.fd, offset: this.offsets[i]!, length: this.entries[i]!.compressedSize };
  }

  /** Every byte of entry i (its frame and any padding). */
  readEntry(i: number, into?: Uint8Array): Uint8Array {
    const e = this.entries[i]!;
    const buf = into && into.length >= e.compressedSize ? into.subarray(0, e.compressedSize) : new Uint8Array(e.compressedSize);
    let off = 0;
    while (off < buf.length) {
      const n = fs.readSync(this.fd, buf, off, buf.length - off, this.offsets[i]! + off);
      if (n === 0) throw new StoreError("DAMAGED", `${this.path} ended inside frame ${i}`);
      off += n;
    }
    return buf;
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** The zstd frame at the start of a seek-table entry, without the padding after it (the entry unchanged when it is not frame + padding). */
export function frameOfEntry(entry: Uint8Array): Uint8Array {
  let size: number;
  try {
    size = zstd().findFrameCompressedSize(entry);
  } catch {
    return entry;
  }
  return size < entry.length && isPadding(entry, size) ? entry.subarray(0, size) : entry;
}

export interface ChunkLine {
  index: number;
  offset: number;
  length: number;
  checksum: bigint;
}

/** One line of the chunk list (`index offset length xxh3hex`, no newline); throws on anything else. */
export function parseChunkLine(line: string): ChunkLine {
  const m = /^(\d+) (\d+) (\d+) ([0-9a-f]{16})$/.exec(line);
  if (!m) throw new StoreError("DAMAGED", `malformed line in chunk list: ${line.slice(0, 60)}`);
  return { index: Number(m[1]), offset: Number(m[2]), length: Number(m[3]), checksum: BigInt("0x" + m[4]) };
}

/** Streams the per-chunk checksums file (index offset length xxh3hex per line). */
export class ChunkList {
  private fd: number;
  private buf = "";
  private eof = false;
  private block = Buffer.alloc(1 << 20);

  constructor(path: string) {
    this.fd = fs.openSync(path, "r");
  }

  next(): ChunkLine | null {
    for (;;) {
      const nl = this.buf.indexOf("\n");
      if (nl >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        return parseChunkLine(line);
      }
      if (this.eof) return null;
      const n = fs.readSync(this.fd, this.block, 0, this.block.length, null);
      if (n === 0) this.eof = true;
      else this.buf += this.block.toString("latin1", 0, n);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/**
 * Every chunk's XXH3-64 from a chunk list, read whole: each line must name
 * chunk i with the seek table's raw length. Throws DAMAGED naming the first
 * chunk that does not match (a malformed line throws as the list does).
 */
export function readChecksums(list: ChunkList, entries: SeekEntry[]): BigUint64Array {
  const checksums = new BigUint64Array(entries.length);
  for (let i = 0; i < entries.length; i++) {
    const line = list.next();
    if (!line || line.index !== i || line.length !== entries[i]!.rawSize) throw new StoreError("DAMAGED", `the chunk list does not match the image at chunk ${i}`);
    checksums[i] = line.checksum;
  }
  return checksums;
}
