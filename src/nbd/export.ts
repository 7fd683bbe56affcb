// A stored backup as a read-only disk: random reads at any offset, served
// through the seek table from the frames they need. Every frame is checked
// (zstd's content checksum, then XXH3-64 against chunks.txt) before any of its
// bytes are handed out; decompressed frames are kept in a small LRU cache.
// Frames are decompressed and checked on worker threads (the chunk workers of
// push/restore/verify), so the server's own thread only moves bytes.
import * as path from "node:path";
import { MAX_PADDING, backupAt, maxEntrySize, openBackupAt, openRepository, type BackupReader, type Manifest } from "../store/repository.ts";
import { TbError } from "../core/errors.ts";
import { locateBackup, type Located } from "../core/verify.ts";
import { isZeroFrame, zeroChecksum, zeroFrame } from "../core/zero.ts";
import { requireAddons, zstd } from "../util/zstd.ts";
import { WorkerPool, jobBytes } from "../core/chunk-jobs.ts";
import { MAX_CHUNK_SIZE } from "../core/limits.ts";
import { SharedSlots } from "../util/shared-slots.ts";

/** decompressions running or queued on the workers at most (bounds their memory) */
const MAX_JOBS = 8;

/** A chunk that failed its check: reads that touch it fail, nothing of it is served. */
export class DamagedChunk extends Error {
  constructor(
    readonly index: number,
    readonly offset: number,
    readonly why: string,
  ) {
    super(`chunk ${index} (raw offset ${offset}) is damaged: ${why}`);
  }
}

export interface CacheStats {
  hits: number;
  misses: number;
  zeroReads: number;
  evictions: number;
  damaged: number;
  cachedBytes: number;
}

/** Default cache size: decompressed frames kept for re-reads. */
export const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Finds a backup for `nbd`/`mount`: a directory, its image.zst, or an ID
 * resolved strictly inside `out`. Only complete disk-image backups.
 */
export function findImageBackup(arg: string, out?: string): Located {
  let p = arg;
  if (out !== undefined) {
    const repo = openRepository(out);
    if (!repo.exists()) throw new TbError("NOT_FOUND", `${out} does not exist`, "give the directory passed to 'tbbackup receive --out'");
    const b = repo.find(arg);
    if (!b) throw new TbError("NOT_FOUND", `no backup ${arg} in ${out}`, "IDs look like host/disk/20261201T090000Z: 'tbbackup list --out DIR' shows them");
    p = b.location;
  }
  const at = backupAt(p);
  if (at.exists && at.isDir && at.partial)
    throw new TbError("VERIFY", `${p} is an incomplete backup (still being written, or interrupted)`, "only complete backups can be opened: push again, or use another backup");
  const b = locateBackup(p);
  if (b.manifest?.kind === "files" || b.at.filesData)
    throw new TbError("USAGE", `${b.dir} is a file-level backup (files.tar.zst), not a disk image`, "use 'tbbackup restore --files DEST --from DIR' to get its files back");
  if (b.manifest && b.manifest.status !== "complete")
    throw new TbError("VERIFY", `${b.dir} is marked ${b.manifest.status}${b.manifest.reason ? ` (${b.manifest.reason})` : ""}`, "only complete backups can be opened: push again, or use another backup");
  return b;
}

export class ImageExport {
  readonly size: number;
  /** raw offset of each chunk; one more entry at the end: the size */
  private readonly starts: Float64Array;
  /** XXH3-64 of each chunk from chunks.txt (null: no chunk list, zstd's own checksum only) */
  private readonly checksums: BigUint64Array | null;
  private readonly cache = new Map<number, Uint8Array>();
  private cachedBytes = 0;
  private readonly dctx: InstanceType<ReturnType<typeof zstd>["DCtx"]>;
  private readonly frameBuf: Uint8Array;
  private readonly reported = new Set<number>();
  /**
   * Evicted chunk buffers, reused for the next decompression (fresh memory
   * costs more than decompressing into it on these VMs). A buffer a socket
   * has not finished sending is pinned and joins the list only when released;
   * weak maps, so one whose release never comes is simply collected.
   */
  private readonly free: Uint8Array[] = [];
  private readonly pins = new WeakMap<ArrayBufferLike, number>();
  private readonly retired = new WeakSet<ArrayBufferLike>();
  private readonly poolSize: number;
  /** worker threads that decompress and check (null: this thread does) */
  private readonly pool: WorkerPool | null;
  /** where frames are read for the workers: slots they were given once, named in a job (src/util/shared-slots.ts) */
  private readonly frameSlots: SharedSlots | null;
  private readonly inflight = new Map<number, Promise<Uint8Array>>();
  private jobs = 0;
  private readonly jobWaiters: (() => void)[] = [];
  readonly stats: CacheStats = { hits: 0, misses: 0, zeroReads: 0, evictions: 0, damaged: 0, cachedBytes: 0 };
  /** the longest chunk: a read buffer for zeros of that length is shared */
  private readonly zeros: Uint8Array;

  private constructor(
    readonly dir: string,
    readonly id: string,
    readonly manifest: Manifest | null,
    private readonly reader: BackupReader,
    checksums: BigUint64Array | null,
    private readonly cacheLimit: number,
    /** told once about each damaged chunk */
    private readonly onDamage: (d: DamagedChunk) => void,
    workers: number,
  ) {
    const n = reader.entries.length;
    this.starts = new Float64Array(n + 1);
    let at = 0;
    let longest = 0;
    let longestFrame = 0;
    for (let i = 0; i < n; i++) {
      this.starts[i] = at;
      at += reader.entries[i]!.rawSize;
      longest = Math.max(longest, reader.entries[i]!.rawSize);
      longestFrame = Math.max(longestFrame, reader.entries[i]!.compressedSize);
    }
    this.starts[n] = at;
    this.size = at;
    this.checksums = checksums;
    this.dctx = new (zstd().DCtx)();
    this.frameBuf = new Uint8Array(longestFrame);
    this.zeros = new Uint8Array(longest);
    this.poolSize = reader.entries[0]?.rawSize ?? 0;
    this.pool = workers > 0 ? new WorkerPool(workers) : null;
    // (at most what a chunk tbbackup writes takes: a longer frame is read into a buffer of its own)
    this.frameSlots = this.pool ? new SharedSlots(Math.min(Math.max(1, longestFrame), maxEntrySize(MAX_CHUNK_SIZE))) : null;
    if (this.frameSlots) this.pool!.share(this.frameSlots);
  }

  /** Marks a view of a chunk as being sent; the returned function releases it (once). */
  pin(view: Uint8Array): () => void {
    const b = view.buffer;
    if (b === this.zeros.buffer) return () => {};
    this.pins.set(b, (this.pins.get(b) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.pins.get(b) ?? 1) - 1;
      if (n > 0) return void this.pins.set(b, n);
      this.pins.delete(b);
      if (this.retired.has(b)) {
        this.retired.delete(b);
        this.recycle(new Uint8Array(b));
      }
    };
  }

  private recycle(buf: Uint8Array): void {
    if (buf.length === this.poolSize && this.free.length < 8) this.free.push(buf);
  }

  /** `workers`: threads that decompress (0: the calling thread does, synchronously) */
  static open(arg: string, opts: { out?: string; cacheBytes?: number; workers?: number; onDamage?: (d: DamagedChunk) => void } = {}): ImageExport {
    requireAddons(false); // (the export checks frames by XXH3, and needs no chunk digest)
    const found = findImageBackup(arg, opts.out);
    const { dir, image, manifest } = found;
    let reader: BackupReader;
    try {
      reader = openBackupAt(found.at);
    } catch (e) {
      throw new TbError("VERIFY", `${image} is damaged: ${(e as Error).message}`, "this backup cannot be trusted; run 'tbbackup verify' on it");
    }
    try {
      const n = reader.entries.length;
      const bad = (why: string) => new TbError("VERIFY", `${dir}: ${why}`, "this backup cannot be trusted; run 'tbbackup verify' on it");
      if (manifest && manifest.chunks.count !== n) throw bad(`the manifest lists ${manifest.chunks.count} chunks but the image has ${n}`);
      if (manifest && manifest.size !== reader.rawSize) throw bad(`the manifest says ${manifest.size} bytes but the image holds ${reader.rawSize}`);
      // a chunk larger than a read is allowed to be is not a chunk tbbackup wrote
      for (const e of reader.entries) {
        if (e.rawSize > 64 * 1024 * 1024 || e.rawSize === 0) throw bad(`a chunk of ${e.rawSize} bytes in the seek table`);
        // (a frame larger than zstd's bound for its chunk is not a frame: it would only cost memory)
        if (e.compressedSize > maxEntrySize(e.rawSize)) throw bad(`a frame of ${e.compressedSize} bytes for a chunk of ${e.rawSize}`);
      }
      let checksums: BigUint64Array | null = null;
      try {
        checksums = reader.checksums();
      } catch (e) {
        throw bad(`${path.basename(manifest!.chunks.file)}: ${(e as Error).message}`);
      }
      return new ImageExport(dir, manifest?.id ?? path.basename(dir), manifest, reader, checksums, opts.cacheBytes ?? DEFAULT_CACHE_BYTES, opts.onDamage ?? (() => {}), opts.workers ?? 0);
    } catch (e) {
      reader.close();
      throw e;
    }
  }

  get chunkCount(): number {
    return this.reader.entries.length;
  }

  /** The chunk holding raw byte `offset` (0 <= offset < size). */
  chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.reader.entries.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  chunkStart(i: number): number {
    return this.starts[i]!;
  }

  /**
   * The raw bytes of chunk i, checked; throws DamagedChunk. The array is
   * shared (cache or zeros): callers must not change it.
   */
  chunk(i: number, count = true): Uint8Array {
    const hit = this.cached(i, count);
    if (hit) return hit;
    const e = this.reader.entries[i]!;
    const frame = this.frame(i, this.frameBuf);
    const expected = this.expected(i);
    if (this.isZeroFrame(i, frame)) {
      if (count) this.stats.zeroReads++;
      return this.zeros.subarray(0, e.rawSize);
    }
    this.stats.misses++;
    const z = zstd();
    const raw = this.buffer(e.rawSize);
    try {
      if (z.findFrameCompressedSize(frame) !== frame.length) throw new Error("not exactly one zstd frame");
      if (z.getFrameContentSize(frame) !== e.rawSize) throw new Error("the frame does not declare the chunk's raw length");
      const n = this.dctx.decompress(raw, frame);
      if (n !== e.rawSize) throw new Error(`decompressed to ${n} bytes, expected ${e.rawSize}`);
    } catch (err) {
      this.dctx.reset(z.ResetDirective.sessionOnly);
      this.recycle(raw);
      throw this.damaged(i, `cannot decompress: ${(err as Error).message}`);
    }
    if (expected >= 0n && Bun.hash.xxHash3(raw) !== expected) {
      this.recycle(raw);
      throw this.damaged(i, "its XXH3-64 does not match chunks.txt");
    }
    return this.insert(i, raw);
  }

  /**
   * Chunk i, checked, like chunk(), but decompressed on a worker thread when
   * the export has them (so that the server's thread stays free and both
   * cores work). Several requests for one chunk share one decompression; at
   * most MAX_JOBS run or wait at a time.
   */
  load(i: number): Promise<Uint8Array> {
    if (!this.pool) return Promise.resolve().then(() => this.chunk(i));
    const hit = this.cached(i, true);
    if (hit) return Promise.resolve(hit);
    const running = this.inflight.get(i);
    if (running) {
      this.stats.hits++;
      return running;
    }
    const job = this.decompressOnWorker(i).finally(() => this.inflight.delete(i));
    this.inflight.set(i, job);
    return job;
  }

  private async decompressOnWorker(i: number): Promise<Uint8Array> {
    const e = this.reader.entries[i]!;
    while (this.jobs >= MAX_JOBS) await new Promise<void>((r) => this.jobWaiters.push(r));
    this.jobs++;
    try {
      const hit = this.cached(i, false); // (decompressed meanwhile, by a read that did not wait)
      if (hit) return hit;
      // (a frame in a slot is free again once the worker has answered; a longer one than slots hold has a buffer of its own)
      const slots = this.frameSlots!;
      const slot = e.compressedSize <= slots.capacity ? slots.take(e.compressedSize) : null;
      let r;
      try {
        const frame = this.frame(i, slot ?? new Uint8Array(e.compressedSize));
        if (this.isZeroFrame(i, frame)) {
          this.stats.zeroReads++;
          return this.zeros.subarray(0, e.rawSize);
        }
        this.stats.misses++;
        const out = this.buffer(e.rawSize);
        const { buf, at, transfer } = jobBytes(slots, frame);
        r = await this.pool!.run({ op: "check", index: i, rawLength: e.rawSize, checksum: this.expected(i), buf, at, length: frame.length, hash: false, wantRaw: true, out: out.buffer as ArrayBuffer }, [...transfer, out.buffer as ArrayBuffer]);
      } finally {
        if (slot) slots.give(slot);
      }
      // a worker that died: this thread does it
      if (r.op !== "checked") return this.chunk(i, false);
      if (!r.ok || !r.raw) throw this.damaged(i, r.error === "raw data checksum mismatch" ? "its XXH3-64 does not match chunks.txt" : (r.error ?? "check failed"));
      return this.cached(i, false) ?? this.insert(i, new Uint8Array(r.raw, 0, e.rawSize));
    } finally {
      this.jobs--;
      this.jobWaiters.shift()?.();
    }
  }

  private cached(i: number, count: boolean): Uint8Array | null {
    const hit = this.cache.get(i);
    if (!hit) return null;
    this.cache.delete(i);
    this.cache.set(i, hit); // most recently used goes last
    if (count) this.stats.hits++;
    return hit;
  }

  /** The stored frame of chunk i, read into `into`. */
  private frame(i: number, into: Uint8Array): Uint8Array {
    try {
      return this.reader.frame(i, into);
    } catch (err) {
      throw this.damaged(i, `cannot read it: ${(err as Error).message}`);
    }
  }

  /** chunk i's XXH3-64 from chunks.txt, or -1n without a chunk list */
  private expected(i: number): bigint {
    return this.checksums ? this.checksums[i]! : -1n;
  }

  /** the tiny frame the store writes for an all-zero chunk: zeros, without decompressing */
  private isZeroFrame(i: number, frame: Uint8Array): boolean {
    return isZeroFrame(frame, this.reader.entries[i]!.rawSize, this.expected(i));
  }

  /** A buffer to decompress a chunk into: a recycled one when it fits. */
  private buffer(rawSize: number): Uint8Array {
    return rawSize === this.poolSize ? (this.free.pop() ?? new Uint8Array(rawSize)) : new Uint8Array(rawSize);
  }

  private insert(i: number, raw: Uint8Array): Uint8Array {
    this.cache.set(i, raw);
    this.cachedBytes += raw.length;
    while (this.cachedBytes > this.cacheLimit && this.cache.size > 1) {
      const [k, v] = this.cache.entries().next().value as [number, Uint8Array];
      this.cache.delete(k);
      this.cachedBytes -= v.length;
      this.stats.evictions++;
      if (this.pins.has(v.buffer)) this.retired.add(v.buffer);
      else this.recycle(v);
    }
    this.stats.cachedBytes = this.cachedBytes;
    return raw;
  }

  /**
   * Whether chunk i is all zeros by the backup's metadata: its chunks.txt
   * checksum is that of zeros and its entry has the zero frame's size (the
   * frame itself is checked when the chunk is read). Without a chunk list,
   * nothing is known to be zero.
   */
  isZero(i: number): boolean {
    if (!this.checksums) return false;
    const e = this.reader.entries[i]!;
    const pad = e.compressedSize - zeroFrame(e.rawSize).length; // (an aligned store may pad it, docs/FORMAT.md §3.5)
    return this.checksums[i] === zeroChecksum(e.rawSize) && (pad === 0 || (pad >= 8 && pad <= MAX_PADDING));
  }

  /**
   * The extents of [offset, offset + length): runs of zero chunks and of
   * data, at most `max` of them (they may then end before the range does).
   */
  extents(offset: number, length: number, max: number): { length: number; zero: boolean }[] {
    const out: { length: number; zero: boolean }[] = [];
    const end = offset + length;
    for (let at = offset, i = this.chunkAt(offset); at < end; i++) {
      const zero = this.isZero(i);
      const to = Math.min(this.starts[i + 1]!, end);
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.length += to - at;
      else {
        if (out.length === max) break;
        out.push({ length: to - at, zero });
      }
      at = to;
    }
    return out;
  }

  /**
   * Checks every chunk of [offset, offset + length) (on the workers, several
   * at once): rejects with the DamagedChunk of the first that fails. The
   * server calls it before sending anything, so a read is served whole or not
   * at all. The chunks are then in the cache, unless the read is larger than it.
   */
  async check(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    const last = this.chunkAt(offset + length - 1);
    const jobs: Promise<unknown>[] = [];
    // (not the buffers themselves: a long read must not hold them all)
    for (let i = this.chunkAt(offset); i <= last; i++) jobs.push(this.load(i).then(() => undefined));
    const results = await Promise.allSettled(jobs);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  /**
   * The bytes of [offset, offset + length), one view of a checked chunk at a
   * time (so that a long read to a slow client holds one chunk, not all of
   * them). Follows check(): its cache hits are not counted again.
   */
  *pieces(offset: number, length: number): Generator<Uint8Array> {
    const end = offset + length;
    for (let at = offset, i = this.chunkAt(offset); at < end; i++) {
      const c = this.chunk(i, false);
      const from = at - this.starts[i]!;
      const to = Math.min(c.length, end - this.starts[i]!);
      yield c.subarray(from, to);
      at += to - from;
    }
  }

  private damaged(i: number, why: string): DamagedChunk {
    const d = new DamagedChunk(i, this.starts[i]!, why);
    if (!this.reported.has(i)) {
      this.reported.add(i);
      this.stats.damaged++;
      this.onDamage(d);
    }
    return d;
  }

  close(): void {
    this.pool?.terminate();
    this.reader.close();
    this.cache.clear();
  }
}
