// Writes image.zst: one zstd frame per chunk, appended in order, then the seek
// table; under a temporary name, fsynced, renamed only when complete. On a
// store that can reflink, large frames are aligned (docs/FORMAT.md §3.5).
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeSeekTable, frameChecksum, paddingTo, type SeekEntry } from "./seekable.ts";
import { writeFrame, type FrameWrite } from "./reflink.ts";
import { pwriteAll } from "../util/fsio.ts";
import { CHUNKS_FILE, DIGESTS_FILE, FILE_MODE, FRAME_DIGESTS_FILE, SHA_FRAME_DIGESTS_FILE, fsyncDir } from "./layout.ts";
import { StoreError } from "./errors.ts";

/** One line of chunks.txt: "index offset length xxh3hex". Both ends build it (resume compares them). */
export function chunkLine(index: number, offset: number, length: number, checksum: bigint): string {
  return `${index} ${offset} ${length} ${checksum.toString(16).padStart(16, "0")}\n`;
}

/** SHA-256 (hex) of the first lines of a chunk list: what a resume must agree on. */
export function prefixDigest(lines: string): string {
  return new Bun.CryptoHasher("sha256").update(lines).digest("hex");
}

/** How many records back truncateTo() can go: well beyond the checks a receiver has in flight. */
const MARKS_KEPT = 1024;

/** Writes all of `text` at `position`; returns its length in bytes. */
function writeAllAt(fd: number, text: string, position: number): number {
  const bytes = Buffer.from(text);
  pwriteAll(fd, bytes, position);
  return bytes.length;
}

export class ImageWriter {
  private fd: number;
  private chunksFd: number;
  /** digests.txt: the per-chunk digests whose hash is the integrity root (docs/FORMAT.md §4a) */
  private digestsFd: number;
  private digestLines: string[] = [];
  /** frame-xxh3.txt: each stored frame's XXH3-64, taken once it was checked (docs/FORMAT.md §4b), line for line with digests.txt */
  private frameDigestsFd: number;
  private frameDigestLines: string[] = [];
  /** digest lines recorded so far */
  digests = 0;
  private entries: SeekEntry[] = [];
  private lines: string[] = [];
  bytesWritten = 0;
  rawBytes = 0;
  /** bytes of chunks.txt so far (flushed or not) */
  chunkListBytes = 0;
  /** bytes of chunks.txt and digests.txt written to their files (the rest is in `lines`, `digestLines`) */
  private chunkListFlushed = 0;
  private digestsFlushed = 0;
  private frameDigestsFlushed = 0;
  /** the state before each of the last MARKS_KEPT (up to twice as many) records: what truncateTo() can go back to */
  private marks: { chunks: number; bytesWritten: number; rawBytes: number; chunkListBytes: number; prevSize?: number }[] = [];
  readonly tmpPath: string;

  /**
   * A new image under `dir`; or, with `resume`, the partial one already there,
   * cut back to its first `resume.entries.length` chunks (a durable prefix
   * whose frames the caller has checked) so that writing continues after them.
   * `align` > 0 (a file-system block size, a power of two ≤ MAX_ALIGN): a frame
   * of at least that many bytes starts at a multiple of it and its entry ends
   * on one, with padding (docs/FORMAT.md §3.5); 0 writes frames back to back.
   */
  constructor(
    readonly dir: string,
    readonly fileName: string,
    resume?: { entries: SeekEntry[]; storedBytes: number; rawBytes: number; chunkListBytes: number },
    readonly align = 0,
  ) {
    this.tmpPath = path.join(dir, fileName + ".tmp");
    const chunksPath = path.join(dir, CHUNKS_FILE);
    const digestsPath = path.join(dir, DIGESTS_FILE);
    const frameDigestsPath = path.join(dir, FRAME_DIGESTS_FILE);
    if (!resume) {
      this.fd = fs.openSync(this.tmpPath, "wx", FILE_MODE);
      this.chunksFd = fs.openSync(chunksPath, "wx", FILE_MODE);
      this.digestsFd = fs.openSync(digestsPath, "wx", FILE_MODE);
      this.frameDigestsFd = fs.openSync(frameDigestsPath, "wx", FILE_MODE);
      return;
    }
    this.fd = fs.openSync(this.tmpPath, "r+"); // (first: a partial without its image leaves no descriptor open)
    // the prefix's digests are computed again from its checked frames and recorded anew
    this.digestsFd = fs.openSync(digestsPath, "w", FILE_MODE);
    this.frameDigestsFd = fs.openSync(frameDigestsPath, "w", FILE_MODE);
    // (a partial begun by the version that wrote SHA-256 lines: this list replaces its)
    fs.rmSync(path.join(dir, SHA_FRAME_DIGESTS_FILE), { force: true });
    fs.ftruncateSync(this.fd, resume.storedBytes);
    fs.truncateSync(chunksPath, resume.chunkListBytes);
    this.chunksFd = fs.openSync(chunksPath, "a");
    this.entries = resume.entries.map((e) => ({ ...e })); // (the last one may grow by padding)
    this.chunkListBytes = this.chunkListFlushed = resume.chunkListBytes;
    this.bytesWritten = resume.storedBytes;
    this.rawBytes = resume.rawBytes;
  }

  /** chunks recorded so far */
  get chunks(): number {
    return this.entries.length;
  }

  /**
   * Records one chunk's zstd frame (it must carry a content checksum) and
   * returns where it goes: its file position and the padding around it. The
   * bytes themselves are written by whoever checks the chunk (a worker thread:
   * writeFrame()), so the main thread never blocks on the disk.
   *
   * `source`: the same frame stored in another image (a base backup's entry:
   * the frame and its padding). When both are aligned alike the write offers
   * to clone it from there (shared blocks) instead of writing it.
   */
  record(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint, source?: { fd: number; offset: number; length: number }): FrameWrite {
    const before = this.bytesWritten;
    const big = this.align > 0 && frame.length >= this.align;
    // a large frame starts on a block: the previous entry ends with padding up to it
    const last = this.entries[this.entries.length - 1];
    const lead = big && last ? paddingTo(before, this.align) : 0;
    this.marks.push({ chunks: this.entries.length, bytesWritten: before, rawBytes: this.rawBytes, chunkListBytes: this.chunkListBytes, prevSize: last?.compressedSize });
    // trimmed in batches: a shift per chunk would copy the lot each time
    if (this.marks.length > 2 * MARKS_KEPT) this.marks.splice(0, this.marks.length - MARKS_KEPT);
    if (last) last.compressedSize += lead;
    const position = before + lead;
    // ... and its own entry ends on one
    const trail = big ? paddingTo(position + frame.length, this.align) : 0;
    this.entries.push({ compressedSize: frame.length + trail, rawSize, checksum: frameChecksum(frame) });
    const line = chunkLine(this.entries.length - 1, offset, rawSize, checksum);
    this.lines.push(line);
    this.chunkListBytes += line.length;
    if (this.lines.length >= 1024) this.flushLines();
    this.bytesWritten = position + frame.length + trail;
    this.rawBytes += rawSize;
    const w: FrameWrite = { fd: this.fd, position };
    if (lead) w.lead = lead;
    if (trail) w.trail = trail;
    if (big && source && source.offset % this.align === 0 && source.length === frame.length + trail) w.clone = source;
    return w;
  }

  /** Records the next chunk's digest, and its stored frame's digest (in chunk order, once the chunk is checked). */
  recordDigest(digest: string, frameDigest: string): void {
    this.digestLines.push(digest + "\n");
    this.frameDigestLines.push(frameDigest + "\n");
    this.digests++;
    if (this.digestLines.length >= 1024) this.flushLines();
  }

  /** Records and writes a frame here, synchronously (for tools and tests). */
  append(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint): void {
    writeFrame(this.record(frame, rawSize, offset, checksum), frame);
  }

  /** The image file's descriptor, for the workers that write recorded frames. */
  get imageFd(): number {
    return this.fd;
  }

  /**
   * Forgets every chunk from `chunks` on, as if only the first `chunks` had
   * been recorded (a chunk that arrived damaged, and those after it, are sent
   * again): cuts image.zst.tmp and chunks.txt back. Only the last MARKS_KEPT
   * records can be taken back, and only those whose digest was not recorded;
   * nobody may be writing a frame meanwhile (wait for the workers first).
   */
  truncateTo(chunks: number): void {
    if (chunks === this.entries.length) return;
    const i = this.marks.findIndex((m) => m.chunks === chunks);
    if (i < 0 || chunks < this.digests) throw new StoreError("MISUSE", `cannot take back the image to chunk ${chunks} (it holds ${this.entries.length})`);
    const m = this.marks[i]!;
    this.marks.length = i;
    this.entries.length = chunks;
    if (chunks > 0 && m.prevSize !== undefined) this.entries[chunks - 1]!.compressedSize = m.prevSize; // its padding goes too
    this.flushLines();
    fs.ftruncateSync(this.chunksFd, m.chunkListBytes);
    fs.ftruncateSync(this.fd, m.bytesWritten);
    this.chunkListBytes = this.chunkListFlushed = m.chunkListBytes;
    this.bytesWritten = m.bytesWritten;
    this.rawBytes = m.rawBytes;
  }

  private flushLines(): void {
    // at explicit positions: truncateTo() may have cut the files back
    if (this.lines.length > 0) {
      this.chunkListFlushed += writeAllAt(this.chunksFd, this.lines.join(""), this.chunkListFlushed);
      this.lines = [];
    }
    if (this.digestLines.length > 0) {
      this.digestsFlushed += writeAllAt(this.digestsFd, this.digestLines.join(""), this.digestsFlushed);
      this.digestLines = [];
    }
    if (this.frameDigestLines.length > 0) {
      this.frameDigestsFlushed += writeAllAt(this.frameDigestsFd, this.frameDigestLines.join(""), this.frameDigestsFlushed);
      this.frameDigestLines = [];
    }
  }

  /** Makes everything written so far durable, off the main thread. */
  async sync(): Promise<void> {
    this.flushLines();
    const datasync = (fd: number) => new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
    await Promise.all([datasync(this.fd), datasync(this.chunksFd), datasync(this.digestsFd), datasync(this.frameDigestsFd)]);
  }

  /** Writes the seek table, fsyncs and renames to the final name. Returns the stored size. */
  finish(): number {
    const table = encodeSeekTable(this.entries);
    pwriteAll(this.fd, table, this.bytesWritten);
    this.bytesWritten += table.length;
    this.flushLines();
    for (const fd of this.fds()) fs.fsyncSync(fd);
    for (const fd of this.fds()) fs.closeSync(fd);
    this.fd = this.chunksFd = this.digestsFd = this.frameDigestsFd = -1;
    fs.renameSync(this.tmpPath, path.join(this.dir, this.fileName));
    fsyncDir(this.dir);
    return this.bytesWritten;
  }

  /** Stops writing; what was written stays as the partial's temporary file. */
  abort(): void {
    if (this.chunksFd >= 0) {
      try {
        this.flushLines(); // keep the lines of what was written, for inspection and resume
      } catch {}
    }
    for (const fd of this.fds()) {
      if (fd < 0) continue;
      try {
        fs.closeSync(fd);
      } catch {}
    }
    this.fd = this.chunksFd = this.digestsFd = this.frameDigestsFd = -1;
  }

  private fds(): number[] {
    return [this.fd, this.chunksFd, this.digestsFd, this.frameDigestsFd];
  }
}
