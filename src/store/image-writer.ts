// Writes image.zst: one zstd frame per chunk, appended in order, then the seek
// table; under a temporary name, fsynced, renamed only when complete.
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeSeekTable, frameChecksum, type SeekEntry } from "./seekable.ts";
import { CHUNKS_FILE, fsyncDir } from "./layout.ts";

export class ImageWriter {
  private fd: number;
  private chunksFd: number;
  private entries: SeekEntry[] = [];
  private lines: string[] = [];
  bytesWritten = 0;
  rawBytes = 0;
  readonly tmpPath: string;

  constructor(
    readonly dir: string,
    readonly fileName: string,
  ) {
    this.tmpPath = path.join(dir, fileName + ".tmp");
    this.fd = fs.openSync(this.tmpPath, "wx", 0o644);
    this.chunksFd = fs.openSync(path.join(dir, CHUNKS_FILE), "wx", 0o644);
  }

  get chunks(): number {
    return this.entries.length;
  }

  /**
   * Records one chunk's zstd frame (it must carry a content checksum) and
   * returns the file position it goes to. The bytes themselves are written by
   * whoever checks the chunk (a worker thread: pwrite at that position), so the
   * main thread never blocks on the disk.
   */
  record(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint): number {
    const position = this.bytesWritten;
    this.entries.push({ compressedSize: frame.length, rawSize, checksum: frameChecksum(frame) });
    this.lines.push(`${this.entries.length - 1} ${offset} ${rawSize} ${checksum.toString(16).padStart(16, "0")}\n`);
    if (this.lines.length >= 1024) this.flushLines();
    this.bytesWritten += frame.length;
    this.rawBytes += rawSize;
    return position;
  }

  /** Records and writes a frame here, synchronously (for tools and tests). */
  append(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint): void {
    const position = this.record(frame, rawSize, offset, checksum);
    let off = 0;
    while (off < frame.length) off += fs.writeSync(this.fd, frame, off, frame.length - off, position + off);
  }

  /** The image file's descriptor, for the workers that write recorded frames. */
  get imageFd(): number {
    return this.fd;
  }

  private flushLines(): void {
    if (this.lines.length === 0) return;
    fs.writeSync(this.chunksFd, this.lines.join(""));
    this.lines = [];
  }

  /** Makes everything written so far durable, off the main thread. */
  async sync(): Promise<void> {
    this.flushLines();
    const datasync = (fd: number) => new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
    await Promise.all([datasync(this.fd), datasync(this.chunksFd)]);
  }

  /** Writes the seek table, fsyncs and renames to the final name. Returns the stored size. */
  finish(): number {
    const table = encodeSeekTable(this.entries);
    let off = 0;
    while (off < table.length) off += fs.writeSync(this.fd, table, off, table.length - off, this.bytesWritten + off);
    this.bytesWritten += table.length;
    this.flushLines();
    fs.fsyncSync(this.fd);
    fs.fsyncSync(this.chunksFd);
    fs.closeSync(this.fd);
    fs.closeSync(this.chunksFd);
    this.fd = this.chunksFd = -1;
    fs.renameSync(this.tmpPath, path.join(this.dir, this.fileName));
    fsyncDir(this.dir);
    return this.bytesWritten;
  }

  /** Stops writing; what was written stays as the partial's temporary file. */
  abort(): void {
    for (const fd of [this.fd, this.chunksFd]) {
      if (fd < 0) continue;
      try {
        this.flushLines();
      } catch {}
      try {
        fs.closeSync(fd);
      } catch {}
    }
    this.fd = this.chunksFd = -1;
  }
}
