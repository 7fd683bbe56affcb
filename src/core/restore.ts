// restore: write a backup back onto a disk or into a file, from a stored
// image (--from) or from a receiver (--stream). Every chunk is checked before
// it is written; the target is fsynced and read back against the integrity
// root (or, for a backup older than it, the SHA-256).
// A target that already holds data (a disk, an existing file) gets a delta
// restore: each chunk is written only when the target holds other bytes there.
import * as fs from "node:fs";
import * as path from "node:path";
import { CHUNK_HEADER_SIZE, MsgType, type Hello, type RestoreInfo } from "../protocol/messages.ts";
import { wants } from "../protocol/chunk-record.ts";
import { DELTA_RESTORE_CAP, STATUS_CAP } from "./version.ts";
import { MAX_BASE_CHUNKS, readDigests, receiveBaseDigests } from "./incremental.ts";
import type { Transport } from "../transport/index.ts";
import { Channel } from "./channel.ts";
import { Hasher, WorkerPool, jobBytes, workerCount, type WorkerReply } from "./chunk-jobs.ts";
import { OrderedPipeline } from "./pipeline.ts";
import { RootBuilder, zeroDigest, digestAt } from "../store/root.ts";
import { chunkDigestOf, unknownDigest } from "../store/repository.ts";
import { TbError, asTbError, outcome, saysUnfinished } from "./errors.ts";
import { handshake, newHello, hasCap } from "./handshake.ts";
import { RestoreSession, type RestorerMessage } from "./restore-session.ts";
import { type Keepalive, startKeepalive } from "./keepalive.ts";
import type { Reporter } from "./report.ts";
import { assertNotInUse, inspectTarget, isBlank, notTheBackup, openDirect, openTarget, targetWriteError, writeAt, type TargetInfo } from "./target.ts";
import { frameSlots, locateBackup, openLocated, readStoredChunkInSlot } from "./verify.ts";
import { holeTest } from "./source.ts";
import { isZeroFrame } from "./zero.ts";
import { zeroWriter } from "./zero-out.ts";
import { Extractor, type ExtractStats } from "./files/extract.ts";
import { POSIX_FADV_DONTNEED, loadLibc } from "../util/libc.ts";
import { compressBound } from "../util/buffer-pool.ts";
import { MAX_CHUNK_SIZE } from "./limits.ts";
import { SharedSlots, SlotPayloads } from "../util/shared-slots.ts";
import { TRAILER_SIZE, type Frame } from "../protocol/frame.ts";
import { requireAddons } from "../util/zstd.ts";

export interface RestoreOptions {
  target: string;
  /** a file-level backup is extracted under this directory instead */
  filesDest?: string;
  overwrite?: boolean;
  /** a backup directory or image.zst (no peer) */
  from?: string;
  transport?: Transport;
  backup?: string;
  verify: boolean;
  /** compare each chunk with what an existing target holds and write only those that differ (default true; --no-delta) */
  delta?: boolean;
  waitMs: number;
  idleMs: number;
  reporter: Reporter;
  /** asked before anything is written; false cancels */
  confirm: (target: TargetInfo, backup: RestoreInfo) => Promise<boolean>;
  /** told when writing to the target begins (from then on a failure leaves it incomplete) */
  writing?: () => void;
}

export interface RestoreResult {
  target: string;
  id: string;
  bytes: number;
  root: string | null;
  sha256: string | null;
  verified: boolean;
  seconds: number;
  extracted?: ExtractStats;
  /**
   * a delta restore: raw bytes the target already held (not written) and raw
   * bytes written; over a stream that sent the backup's digests, also the
   * chunks and raw bytes asked for (the rest never crossed the stream)
   */
  delta?: { keptBytes: number; writtenBytes: number; askedChunks?: number; askedBytes?: number };
}

/** One chunk on its way to the target. `frame` is a zstd frame; zero chunks have none. */
interface ChunkIn {
  index: number;
  offset: number;
  rawLength: number;
  /** XXH3-64 of the raw data, or -1n when the backup has no chunk list */
  checksum: bigint;
  zero: boolean;
  /** the zstd frame: in a slot of the source's `slots`, or in a buffer of its own */
  frame?: Uint8Array;
}

interface Source {
  info: RestoreInfo;
  chunks: AsyncGenerator<ChunkIn>;
  /** a stored backup on this machine: its files, which the target must not be */
  files?: string[];
  /** a delta restore (docs/PROTOCOL.md §8.6a; a stored backup's digests.txt): the backup's per-chunk digests (of info.digest), 32 bytes each */
  digests?: Uint8Array;
  /** before chunks() with digests: the target is being compared (keep the receiver waiting) */
  comparing?(): void;
  /** before chunks() with digests: bit i set = ask for chunk i; only those come */
  want?(bits: Uint8Array): void;
  /**
   * Where chunks' frames are read into: the workers are handed these arenas
   * once, and a frame in them crosses to a worker by name (shared-slots.ts).
   */
  slots: SharedSlots;
  /** takes back a chunk's frame (its slot) or the buffer a worker handed back, once the workers are done with it */
  release(buf: Uint8Array | ArrayBuffer | undefined): void;
  /** called once every chunk is written (stream: tell the receiver) */
  finish(ok: boolean, message?: string): Promise<void>;
  close(): Promise<void>;
}

const notIncomplete = "the target was not changed";
/** While the target is read back, the receiver hears from us this often (it waits --idle, at least 5 s, for RESTORE_DONE). */
const KEEPALIVE_MS = 2000;

/** Where checked chunks go: a disk or image file, or an extractor for file-level backups. */
interface Sink {
  readonly path: string;
  /** also compute the SHA-256 in the same pass (no read-back will be done) */
  readonly hashInPass: boolean;
  /** the target descriptor: the decompressing workers write raw chunks to it themselves */
  readonly fd?: number;
  /** a delta restore onto a disk: an O_DIRECT descriptor of it, to read what it holds (target.ts openDirect) */
  readonly direct?: number;
  /** without fd: takes each checked raw chunk, in order */
  data?(raw: Uint8Array, c: ChunkIn): Promise<void>;
  zero(c: ChunkIn): Promise<void>;
  /** everything written: make it durable and check it; true when read back */
  finish(info: RestoreInfo): Promise<boolean>;
  close(): void;
}

function imageSink(target: TargetInfo, info: RestoreInfo, verify: boolean, pool: WorkerPool, reporter: Reporter, keep: boolean): Sink {
  const fd = openTarget(target, info.size, keep);
  const direct = keep ? openDirect(fd) : undefined;
  const zeros = target.kind === "block" ? zeroWriter(fd, target.path, info.chunkSize) : null;
  let zeroBuf: Uint8Array | null = null;
  return {
    path: target.path,
    hashInPass: !verify,
    fd,
    direct,
    // A new file target was created sparse: its holes are already zeros. A kept
    // one (delta restore) is asked to zero only where it holds other data.
    zero: async (c) => {
      if (zeros) return zeros.zero(c.offset, c.rawLength);
      if (!keep) return;
      zeroBuf ??= new Uint8Array(info.chunkSize);
      writeAt(fd, zeroBuf.subarray(0, c.rawLength), c.offset, target.path);
    },
    finish: async () => {
      await zeros?.flush();
      reporter.info(`all data written${zeros?.how() === "write-zeroes" ? " (zero chunks by the disk's write-zeroes)" : ""}; syncing the target`);
      try {
        fs.fsyncSync(fd);
      } catch (e) {
        throw syncFailed(target.path, e);
      }
      if (!verify) return false;
      reporter.info("reading the target back to verify it");
      // Drop the cached pages first, so the read-back comes from the disk itself.
      (await loadLibc())?.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      const isHole = target.kind === "file" ? await holeTest(fd, info.size, target.path) : null;
      if (info.root) {
        const got = await readBackRoot(fd, info, pool, reporter, isHole);
        if (got !== info.root)
          throw new TbError("VERIFY", `read-back of ${target.path} makes integrity root ${got}, the backup says ${info.root}`, "the target does not hold the backup; check the disk and restore again");
      } else {
        const sha = await readBackSha(fd, info.size, reporter, isHole);
        if (sha !== info.sha256)
          throw new TbError("VERIFY", `read-back of ${target.path} hashes to ${sha}, the backup says ${info.sha256}`, "the target does not hold the backup; check the disk and restore again");
      }
      return true;
    },
    close: () => {
      fs.closeSync(fd);
      if (direct !== undefined) fs.closeSync(direct);
    },
  };
}

function filesSink(dest: string, overwrite: boolean, reporter: Reporter): Sink & { stats: () => ExtractStats; untouched: () => boolean } {
  const ex = new Extractor(dest, overwrite);
  const zeros = new Uint8Array(4 * 1024 * 1024);
  let stats: ExtractStats | null = null;
  return {
    path: dest,
    hashInPass: true,
    data: (raw) => ex.write(raw),
    zero: (c) => ex.write(zeros.subarray(0, c.rawLength)),
    finish: async () => {
      stats = await ex.end();
      reporter.info(`extracted ${stats.entries} entries (${stats.files} files, ${stats.bytes} bytes) into ${dest}`);
      return false;
    },
    close: () => ex.abort(),
    stats: () => stats ?? ex.stats,
    untouched: () => !ex.changedAnything,
  };
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  requireAddons(); // before any session: a clear line if this system cannot run it
  const started = Date.now();
  const target = opts.filesDest ? null : inspectTarget(opts.target);
  // before the receiver is asked and before any question or "overwriting" line
  if (target) assertNotInUse(target);
  const compare = deltaWanted(opts, target);
  const src = opts.from ? fileSource(opts.from, compare) : await streamSource(opts, target, compare);
  let sink: (Sink & { stats?: () => ExtractStats; untouched?: () => boolean }) | null = null;
  const pool = new WorkerPool(workerCount());
  pool.share(src.slots);
  // the SHA-256 worker, when restore uses one (created once the sink is known)
  let hasher: Hasher | null = null;
  let delta = false;
  try {
    const info = src.info;
    if (target) {
      if (info.kind !== "image") throw new TbError("USAGE", `backup ${info.id} is a file-level backup`, "restore it with 'tbbackup restore --files DEST'");
      if (target.kind === "block" && target.size < info.size)
        throw new TbError("TARGET", `${target.path} holds ${target.size} bytes but backup ${info.id} needs ${info.size}`, `restore onto a disk at least as large; ${notIncomplete}`);
      if (src.files) notTheBackup(target, src.files);
      if (!(await opts.confirm(target, info))) throw new TbError("REFUSED", "restore cancelled", notIncomplete);
      opts.writing?.();
      delta = compare;
      sink = imageSink(target, info, opts.verify, pool, opts.reporter, delta);
      if (delta) opts.reporter.info(`comparing each chunk with what ${target.path} holds: only chunks that differ are written (--no-delta writes all)`);
    } else {
      if (info.kind !== "files") throw new TbError("USAGE", `backup ${info.id} is a disk image`, "restore it onto a disk or image file: tbbackup restore TARGET");
      opts.writing?.();
      sink = filesSink(opts.filesDest!, opts.overwrite === true, opts.reporter);
    }
    const out = sink;
    opts.reporter.info(`restoring ${info.id} (${info.size} bytes, ${info.root ? `root ${info.root.slice(0, 16)}` : `sha256 ${info.sha256!.slice(0, 16)}`}...) to ${out.path}`);
    // In the pass itself: the integrity root from the workers' per-chunk digests;
    // a backup older than the root has its whole-image SHA-256 computed in chunk
    // order, on a thread of its own when the workers write the target themselves, else here.
    const root = info.root ? new RootBuilder() : null;
    const chunkHash = info.digest ?? "sha256";
    // A stream that sent the backup's digests (§8.6a), or a stored backup with
    // its digests.txt: the whole target is compared first and only the chunks
    // it lacks are asked for (read); the others never travel. The read-back at
    // the end proves they matched.
    let plan: { want: Uint8Array; askedChunks: number; askedBytes: number } | null = null;
    if (delta && root && src.digests && out.fd !== undefined && target) {
      src.comparing?.();
      opts.reporter.info(`reading ${target.path} to find the chunks it already holds`);
      plan = await planDelta(out.fd, target, info, src.digests, pool, opts.reporter);
      src.want?.(plan.want);
      const held = info.size ? Math.floor((100 * (info.size - plan.askedBytes)) / info.size) : 100;
      opts.reporter.info(`the target already holds ${held}% of this backup: ${src.files ? "reading" : "asking the receiver for"} ${plan.askedChunks} of ${info.chunks} chunks (${(plan.askedBytes / 1048576).toFixed(1)} MiB)`);
    }
    hasher = !root && out.hashInPass && out.fd !== undefined ? new Hasher((buf) => buf instanceof ArrayBuffer && spare.push(buf)) : null;
    const sha = !root && out.hashInPass && !hasher ? new Bun.CryptoHasher("sha256") : null;
    let zeroBuf = new Uint8Array(0);
    // decompression buffers go back and forth between here and the workers (when the raw chunk is wanted here)
    const spare: ArrayBuffer[] = [];
    const zeroes = (n: number) => (zeroBuf.length >= n ? zeroBuf : (zeroBuf = new Uint8Array(n))).subarray(0, n);
    // Written data is synced as we go, so the final fsync has little left to wait for.
    let syncing: Promise<void> | null = null;
    let syncError: unknown = null;
    let written = 0;
    let count = 0;
    // delta restore: raw bytes the target already held, and raw bytes written
    let keptBytes = 0;
    const zeroChunk = async (c: ChunkIn) => {
      root?.add(zeroDigest(c.rawLength, chunkHash));
      sha?.update(zeroes(c.rawLength));
      if (hasher) await hasher.zero(c.index, c.rawLength);
    };
    const pending = new OrderedPipeline<{ c: ChunkIn; r: WorkerReply | null; kept?: string }>(4 * pool.size, async ({ c, r, kept }) => {
      if (kept !== undefined) {
        // not asked for: the target's own chunk, which hashed to the backup's digest
        root?.add(kept);
        keptBytes += c.rawLength;
      } else if (r && r.op === "readhashed") {
        // a zero chunk of a delta restore: what the target holds there
        await zeroChunk(c);
        if (!r.error && r.length === c.rawLength && r.digest === zeroDigest(c.rawLength, chunkHash)) keptBytes += c.rawLength;
        else await out.zero(c);
      } else if (r) {
        if (r.op === "failed") throw new TbError("INTERNAL", r.error, "report this bug");
        if (r.op === "checked") {
          if (r.unchanged) keptBytes += c.rawLength;
          src.release(r.buf ?? c.frame);
          if (!r.ok) throw new TbError("CORRUPT", `chunk ${c.index} (offset ${c.offset}) of backup ${info.id} is bad: ${r.error}`, "run 'tbbackup verify' on the backup, or restore another one", [], outcome.target());
          if (r.writeError) throw targetWriteError(out.path, c.offset, r.writeError);
          root?.add(r.digest!);
          if (r.raw) {
            const raw = new Uint8Array(r.raw, 0, c.rawLength);
            sha?.update(raw);
            await out.data?.(raw, c);
            if (hasher) await hasher.data(c.index, r.raw, c.rawLength);
            else spare.push(r.raw);
          }
        }
      } else {
        await zeroChunk(c);
        await out.zero(c);
      }
      written += c.rawLength;
    });
    const wantRaw = sha !== null || hasher !== null || out.data !== undefined;
    let expected = 0;
    // chunks the target already holds, up to (not including) chunk `upTo`
    const keepUpTo = async (upTo: number) => {
      for (; plan && expected < upTo && !wants(plan.want, expected); expected++) {
        const offset = expected * info.chunkSize;
        const c: ChunkIn = { index: expected, offset, rawLength: Math.min(info.chunkSize, info.size - offset), checksum: -1n, zero: false };
        await pending.add(Promise.resolve({ c, r: null, kept: digestAt(src.digests!, expected) }));
      }
    };
    for await (const c of src.chunks) {
      await keepUpTo(c.index);
      if (c.index !== expected || c.offset !== expected * info.chunkSize || c.offset + c.rawLength > info.size)
        throw new TbError("CORRUPT", `chunk ${c.index} at offset ${c.offset} does not fit the backup's layout`, "restore again", [], outcome.target());
      expected++;
      const p = c.zero
        ? delta && !plan && out.fd !== undefined
          ? pool.run({ op: "readhash", index: c.index, fd: out.fd, direct: out.direct, position: c.offset, length: c.rawLength, digest: chunkHash })
          : Promise.resolve(null)
        : (() => {
            const writeRaw = out.fd !== undefined ? { fd: out.fd, position: c.offset, direct: out.direct } : undefined;
            // (a frame in a buffer of its own is handed over, and comes back as the reply's buf)
            const { buf, at, transfer } = jobBytes(src.slots, c.frame!);
            const job = { op: "check", index: c.index, rawLength: c.rawLength, checksum: c.checksum, buf, at, length: c.frame!.length, hash: false, digest: root !== null ? chunkHash : undefined, writeRaw, onlyIfDiffers: delta && !plan } as const;
            // the raw chunk comes back only when something here takes it (a SHA-256, an extractor); else the worker's own buffer holds it
            if (!wantRaw) return pool.run({ ...job, wantRaw: false }, transfer);
            const outBuf = spare.pop() ?? new ArrayBuffer(info.chunkSize);
            return pool.run({ ...job, wantRaw: true, out: outBuf }, [...transfer, outBuf]);
          })();
      await pending.add(p.then((r) => ({ c, r })));
      count++;
      if (syncError) throw syncError;
      if (out.fd !== undefined && (count & 63) === 0 && !syncing) {
        const fd = out.fd;
        syncing = new Promise<void>((resolve) => fs.fdatasync(fd, (e) => ((syncError ??= e ? syncFailed(out.path, e) : null), resolve()))).finally(() => (syncing = null));
      }
      if ((count & 15) === 0) opts.reporter.progress({ phase: "restore", bytes: written, total: info.size });
    }
    await keepUpTo(info.chunks);
    await pending.drain();
    await syncing;
    if (syncError) throw syncError;
    if (expected !== info.chunks || written !== info.size)
      throw new TbError("CLOSED", `only ${written} of ${info.size} bytes arrived`, "restore again", [], outcome.target());
    if (root) {
      const got = root.digest();
      if (got !== info.root)
        throw new TbError("CORRUPT", `the restored data makes integrity root ${got}, the backup says ${info.root}`, plan ? `the ${src.files ? "" : "receiver's "}digests of the backup may be damaged: restore again with --no-delta` : "restore again", [], outcome.target());
    } else {
      const digest = hasher ? await hasher.digest() : sha?.digest("hex");
      if (digest !== undefined && digest !== info.sha256)
        throw new TbError("CORRUPT", `the restored data hashes to ${digest}, the backup says ${info.sha256}`, "restore again", [], outcome.target());
    }
    const verified = await out.finish(info);
    await src.finish(true);
    return {
      target: out.path,
      id: info.id,
      bytes: info.size,
      root: info.root ?? null,
      sha256: info.sha256 ?? null,
      verified,
      seconds: (Date.now() - started) / 1000,
      ...(out.stats ? { extracted: out.stats() } : {}),
      ...(delta ? { delta: { keptBytes, writtenBytes: info.size - keptBytes, ...(plan && !src.files ? { askedChunks: plan.askedChunks, askedBytes: plan.askedBytes } : {}) } } : {}),
    };
  } catch (e) {
    await src.finish(false, e instanceof Error ? e.message : String(e)).catch(() => {});
    // Once writing began, every failure must say the target is now incomplete.
    if (!sink) throw e;
    const err = asTbError(e);
    // an extraction that stopped before it created anything left DEST as it was
    const unfinished = saysUnfinished(err.outcome) && err.outcome?.kind !== "unconfirmed";
    if (sink.untouched?.()) throw new TbError(err.code, err.message, unfinished ? err.advice : err.hint, err.details, outcome.unchanged(`nothing was written under ${sink.path}`));
    if (unfinished) throw err;
    throw new TbError(err.code, err.message, err.hint, err.details, outcome.target(sink.path));
  } finally {
    // workers may still be writing to the target: wait before closing it (a stalled one keeps it open)
    const idle = await pool.idle();
    pool.terminate();
    hasher?.terminate();
    if (idle) sink?.close();
    await src.close();
  }
}

/**
 * Whether a restore compares each chunk with the target first: not with
 * --no-delta, and not onto a new or empty file or a blank disk (its first MiB
 * all zeros): those hold nothing worth reading first.
 */
function deltaWanted(opts: RestoreOptions, target: TargetInfo | null): boolean {
  return opts.delta !== false && target !== null && target.exists && target.size > 0 && !isBlank(target.path);
}

/**
 * A delta restore over a stream (§8.6a): hashes every chunk of the target on
 * the workers and compares it with the backup's digest for that index. Bit i
 * of `want` is set when chunk i differs (or cannot be read): only those are
 * asked for. The holes of a sparse file target are zeros and not read.
 */
async function planDelta(fd: number, target: TargetInfo, info: RestoreInfo, digests: Uint8Array, pool: WorkerPool, reporter: Reporter): Promise<{ want: Uint8Array; askedChunks: number; askedBytes: number }> {
  const want = new Uint8Array(Math.ceil(info.chunks / 8));
  const isHole = target.kind === "file" ? await holeTest(fd, info.size, target.path) : null;
  let askedChunks = 0;
  let askedBytes = 0;
  await hashTarget(fd, info, info.chunks, pool, isHole, (i, length, c) => {
    // unreadable or short: asked for, and written
    if (!("digest" in c) || c.digest !== digestAt(digests, i)) {
      want[i >> 3]! |= 1 << (i & 7);
      askedChunks++;
      askedBytes += length;
    }
    reporter.progress({ phase: "compare", bytes: i * info.chunkSize + length, total: info.size });
  });
  return { want, askedChunks, askedBytes };
}

/** hashTarget reads up to this many bytes of consecutive chunks at once (fewer jobs, larger reads) */
const READ_SPAN = 4 * 1024 * 1024;

/** What reading and hashing one chunk of the target gave: its chunk digest, the read's errno code, or that it came short. */
type TargetChunk = { digest: string } | { error: string } | { short: true };

/**
 * Reads and hashes the target's first `count` chunks on the workers, in
 * parallel, and hands each result on in chunk order. The holes of a sparse
 * file target are zeros by definition and are not read.
 */
async function hashTarget(fd: number, info: RestoreInfo, count: number, pool: WorkerPool, isHole: ((offset: number, length: number) => boolean) | null, each: (i: number, length: number, c: TargetChunk) => void): Promise<void> {
  type Chunk = { i: number; length: number; c: TargetChunk };
  const reads = new OrderedPipeline<Chunk[]>(2 * pool.size, (chunks) => chunks.forEach(({ i, length, c }) => each(i, length, c)));
  // a disk is read around its page cache (O_DIRECT), where the kernel allows
  const direct = openDirect(fd);
  // up to READ_SPAN bytes of consecutive chunks in one read and one job
  const perJob = info.chunkSize > 0 ? Math.max(1, Math.floor(READ_SPAN / info.chunkSize)) : 1;
  const chunkHash = info.digest ?? "sha256";
  try {
    for (let i = 0; i < count; ) {
      const offset = i * info.chunkSize;
      const lengthOf = (k: number) => Math.min(info.chunkSize, info.size - k * info.chunkSize);
      if (isHole?.(offset, lengthOf(i))) {
        await reads.add(Promise.resolve([{ i, length: lengthOf(i), c: { digest: zeroDigest(lengthOf(i), chunkHash) } }]));
        i++;
        continue;
      }
      let n = 1;
      while (n < perJob && i + n < count && !isHole?.((i + n) * info.chunkSize, lengthOf(i + n))) n++;
      const first = i;
      const lengths = Array.from({ length: n }, (_, k) => lengthOf(first + k));
      const total = lengths.reduce((a, b) => a + b, 0);
      const job = pool.run({ op: "readhash", index: first, fd, direct, position: offset, length: total, piece: info.chunkSize, digest: chunkHash });
      await reads.add(
        job.then((r) => {
          if (r.op !== "readhashed") throw new TbError("INTERNAL", r.op === "failed" ? r.error : `unexpected worker reply ${r.op}`, "report this bug");
          return lengths.map((length, k): Chunk => {
            const d = r.digests?.[k];
            // a piece that came short, or not at all: the target ends before it should
            const c: TargetChunk = r.error ? { error: r.error } : d === undefined || r.length < k * info.chunkSize + length ? { short: true } : { digest: d };
            return { i: first + k, length, c };
          });
        }),
      );
      i += n;
    }
    await reads.drain();
  } finally {
    // after a failure, workers may still be reading through it
    if (direct !== undefined && (await pool.idle())) fs.closeSync(direct);
  }
}

function syncFailed(path: string, e: unknown): TbError {
  return new TbError("TARGET", `syncing ${path} failed: ${(e as Error).message}`, "check the disk and restore again", [], outcome.target());
}

/**
 * SHA-256 of the target as it now reads back from the disk. The next MiB is
 * read in the thread pool while the last one is hashed; the holes of a sparse
 * file target are zeros by definition (nothing on the disk to read) and are
 * hashed as such without reading them.
 */
async function readBackSha(fd: number, size: number, reporter: Reporter, isHole: ((offset: number, length: number) => boolean) | null): Promise<string> {
  const STEP = 1024 * 1024;
  const sha = new Bun.CryptoHasher("sha256");
  const zeros = new Uint8Array(STEP);
  const bufs = [new Uint8Array(STEP), new Uint8Array(STEP)];
  const piece = async (offset: number, k: number): Promise<Uint8Array> => {
    const n = Math.min(STEP, size - offset);
    if (isHole?.(offset, n)) return zeros.subarray(0, n);
    const buf = bufs[k % 2]!;
    let got = 0;
    while (got < n) {
      const r = await new Promise<number>((resolve, reject) => fs.read(fd, buf, got, n - got, offset + got, (e, m) => (e ? reject(e) : resolve(m))));
      if (r === 0) break; // a short target: the hash will not match
      got += r;
    }
    return buf.subarray(0, got);
  };
  let next: Promise<Uint8Array> | null = size > 0 ? piece(0, 0) : null;
  for (let offset = 0, k = 0; next; offset += STEP, k++) {
    const cur = await next;
    next = cur.length === STEP && offset + STEP < size ? piece(offset + STEP, k + 1) : null;
    sha.update(cur);
    reporter.progress({ phase: "read-back", bytes: offset + cur.length, total: size });
  }
  return sha.digest("hex");
}

/**
 * The integrity root of the target as it now reads back from the disk: every
 * chunk is read and hashed by the workers in parallel, and folded in order.
 * The holes of a sparse file target are zeros by definition and not read.
 */
async function readBackRoot(fd: number, info: RestoreInfo, pool: WorkerPool, reporter: Reporter, isHole: ((offset: number, length: number) => boolean) | null): Promise<string> {
  const root = new RootBuilder();
  await hashTarget(fd, info, Math.ceil(info.size / info.chunkSize), pool, isHole, (i, length, c) => {
    const offset = i * info.chunkSize;
    if ("error" in c) throw new TbError("VERIFY", `reading the target back at byte ${offset} failed: ${c.error}`, "the target does not hold the backup; check the disk and restore again");
    // a short target: its root cannot match
    root.add("digest" in c ? c.digest : "short");
    reporter.progress({ phase: "read-back", bytes: offset + length, total: info.size });
  });
  return root.digest();
}

/**
 * Chunks from a stored backup on this machine. `comparing` (a delta restore):
 * with the backup's digests.txt (checked against its root), the target is
 * compared with them first and only the chunks it lacks are read and
 * decompressed, as over a stream that sent them (docs/PROTOCOL.md §8.6a).
 */
function fileSource(from: string, comparing: boolean): Source {
  const located = locateBackup(from);
  const m = located.manifest;
  if (m && m.status !== "complete") throw new TbError("NOT_FOUND", `${from} is not a complete backup (${m.status})`, "choose a complete backup (tbbackup list)");
  const { dir, image, manifest } = located;
  const { reader, list } = openLocated(located, "choose another backup; nothing was written");
  const chunkSize = manifest?.chunkSize ?? reader.entries[0]?.rawSize ?? 0;
  const chunkHash = manifest ? chunkDigestOf(manifest) : "sha256";
  const info: RestoreInfo = {
    session: "",
    id: manifest?.id ?? path.basename(dir),
    kind: manifest?.kind ?? "image",
    host: manifest?.host ?? { hostname: "?", machineId: null, productUuid: null },
    disk: manifest?.disk ?? { path: image, kind: "file", name: path.basename(image), size: reader.rawSize, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null },
    label: manifest?.label ?? null,
    date: manifest?.timings.started ?? "",
    size: reader.rawSize,
    chunkSize,
    chunks: reader.entries.length,
    ...(manifest?.root ? { root: manifest.root, ...(chunkHash === "blake3" ? { digest: chunkHash } : {}) } : {}),
    ...(manifest?.sha256 ? { sha256: manifest.sha256 } : {}),
  };
  if (manifest?.root && chunkHash === null) throw new TbError("VERIFY", `${dir} is damaged: ${unknownDigest(manifest)}`, "restore another backup");
  if (!info.root && !info.sha256) throw new TbError("NOT_FOUND", `${dir} has no manifest with an integrity root or SHA-256`, "restore from a backup directory made by tbbackup receive");
  // sizes are the store's word: buffers are sized by them, so what tbbackup never writes is damage
  const longest = reader.entries.reduce((m, e) => Math.max(m, e.rawSize), 0);
  if (reader.entries.length > 0 && (!Number.isSafeInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE || longest > chunkSize))
    throw new TbError("VERIFY", `${dir} is damaged: chunks of ${chunkSize} bytes${longest > chunkSize ? `, and one of ${longest}` : ""} (a backup's are at most ${MAX_CHUNK_SIZE})`, "restore another backup");
  const slots = frameSlots(reader);
  const got = comparing && manifest && info.kind === "image" ? readDigests(reader, manifest) : null;
  const digests = got instanceof Uint8Array && got.length === 32 * info.chunks ? got : undefined;
  let want: Uint8Array | null = null;
  async function* chunks(): AsyncGenerator<ChunkIn> {
    let offset = 0;
    for (let i = 0; i < reader.entries.length; i++) {
      const e = reader.entries[i]!;
      const damaged = (why: string) => new TbError("VERIFY", `chunk ${i} of ${dir} is damaged: ${why}`, "restore another backup");
      if (want && !wants(want, i)) {
        // the target holds it: only the chunk list moves on
        try {
          list?.next();
        } catch (err) {
          throw damaged((err as Error).message);
        }
        offset += e.rawSize;
        continue;
      }
      const { line, frame } = readStoredChunkInSlot(reader, list, i, slots, damaged);
      const checksum = line?.checksum ?? -1n;
      const zero = isZeroFrame(frame, e.rawSize, checksum);
      if (zero) slots.give(frame);
      yield { index: i, offset, rawLength: e.rawSize, checksum, zero, ...(zero ? {} : { frame }) };
      offset += e.rawSize;
    }
  }
  return {
    info,
    files: reader.members(),
    digests,
    want: (bits) => (want = bits),
    chunks: chunks(),
    slots,
    // (a buffer of its own, handed back by a worker, is left to the collector)
    release: (buf) => {
      if (buf instanceof Uint8Array) slots.give(buf);
    },
    finish: async () => {},
    close: async () => {
      reader.close();
      list?.close();
    },
  };
}

/**
 * The next frame while the restorer waits for the receiver's offer. On a lossy
 * link (a device) the offer may be lost or arrive damaged: the HELLO goes out
 * again every second, and the receiver answers a repeated HELLO with its offer
 * (docs/PROTOCOL.md §8.6c).
 */
async function recvOffer(ch: Channel, hello: Hello, by: number, waitMs: number): Promise<Frame> {
  for (;;) {
    const left = by - Date.now();
    try {
      return await ch.recv(Math.max(1, ch.conn.lossy ? Math.min(OFFER_RESEND_MS, left) : left), "the receiver's restore offer");
    } catch (e) {
      if (!(e instanceof TbError) || !ch.conn.lossy || (e.code !== "TIMEOUT" && e.code !== "CORRUPT")) throw e;
      if (Date.now() >= by) throw new TbError("TIMEOUT", `no restore offer from the receiver on ${ch.conn.description} within ${Math.round(waitMs / 1000)} s`, "check that tbbackup runs on the other side and the cable is plugged in");
      if (e.code === "TIMEOUT") await ch.sendJson(MsgType.HELLO, hello);
    }
  }
}

/** how long a restorer on a lossy link waits for the offer before it says HELLO again */
const OFFER_RESEND_MS = 1000;

/** Chunks from a receiver started with --allow-restore. */
async function streamSource(opts: RestoreOptions, target: TargetInfo | null, comparing: boolean): Promise<Source> {
  const ch = new Channel(await opts.transport!.connect(opts.waitMs));
  try {
    const hello = newHello("restore", { backup: opts.backup, target: target?.identity, content: target ? "image" : "files", ...(comparing ? { delta: true } : {}) });
    const ack = await handshake(ch, hello, opts.waitMs, opts.reporter);
    // The session's states and what each accepts: restore-session.ts.
    const rs = new RestoreSession(hello.session);
    const say = (m: RestorerMessage) => ch.sendJson(m.type, m.body);
    let offer: RestoreInfo | null = null;
    const offerBy = Date.now() + opts.waitMs;
    while (!offer) {
      rs.step({ type: "frame", frame: await recvOffer(ch, hello, offerBy, opts.waitMs) });
      if (rs.failure) throw rs.failure;
      offer = rs.info;
    }
    // A delta restore (§8.6a): the backup's per-chunk digests follow the offer.
    // Any trouble with them: every chunk is sent, as to a restorer without them.
    let digests: Uint8Array | undefined;
    let want: Uint8Array | null = null;
    if (comparing && offer.digests === true && hasCap(ack, DELTA_RESTORE_CAP)) {
      const chunks = offer.chunkSize > 0 ? Math.ceil(offer.size / offer.chunkSize) : -1;
      const got = offer.root && offer.chunks <= MAX_BASE_CHUNKS ? await receiveBaseDigests(ch, hello.session, offer.chunks, chunks, Math.min(30_000, opts.idleMs)) : "the backup has no integrity root or too many chunks";
      if (typeof got === "string") opts.reporter.info(`every chunk will be sent: the backup's digests did not arrive whole (${got})`);
      else digests = got;
    }
    // (the offer's chunk size is the receiver's word: slots hold at most what a chunk tbbackup writes
    // takes, and a longer payload, which the frame layer bounds, comes in a buffer of its own)
    const slots = new SharedSlots(CHUNK_HEADER_SIZE + compressBound(Math.min(offer.chunkSize, MAX_CHUNK_SIZE)) + TRAILER_SIZE);
    ch.usePool(new SlotPayloads(slots));
    // While the target is synced and read back (minutes for a big disk), the
    // receiver waits for RESTORE_DONE: tell one that knows keepalives we are still at it.
    let keepalive: Keepalive | undefined;
    const stopKeepalive = () => void keepalive?.stop();
    const keepSaying = () => {
      if (keepalive !== undefined || !hasCap(ack, STATUS_CAP)) return;
      keepalive = startKeepalive(() => ch.sendJson(MsgType.PROGRESS, { session: hello.session }).catch(() => {}), KEEPALIVE_MS, { now: true });
    };
    async function* chunks(): AsyncGenerator<ChunkIn> {
      const go = rs.step({ type: "go", want });
      if (go.type === "send") await say(go.msg);
      // A delta restore reads the target as the data arrives, and can fall far
      // behind a receiver that has sent it all and waits --idle for RESTORE_DONE.
      if (comparing) keepSaying();
      // (the session leaves "receiving" after the last record the offer and the
      // `want` said would come, or on an early RESTORE_END)
      while (rs.state.name === "receiving") {
        const f = await ch.recv(opts.idleMs, "backup data from the receiver");
        const out = rs.step({ type: "frame", frame: f });
        if (rs.failure) throw rs.failure;
        if (out.type !== "record") {
          ch.release(f.payload); // (decoded, if it was anything: its slot, if it had one, is free)
          continue;
        }
        const rec = out.record;
        const h = rec.header;
        if (rec.kind === "zero") {
          ch.release(f.payload);
          yield { index: h.index, offset: h.offset, rawLength: h.rawLength, checksum: h.checksum, zero: true };
        } else {
          yield { index: h.index, offset: h.offset, rawLength: h.rawLength, checksum: h.checksum, zero: false, frame: rec.zstd };
        }
      }
      keepSaying();
    }
    return {
      info: offer,
      digests,
      comparing: keepSaying,
      want: (bits) => (want = bits),
      chunks: chunks(),
      slots,
      release: (buf) => ch.release(buf),
      finish: async (ok, message) => {
        stopKeepalive();
        const out = rs.step(ok ? { type: "finished", ok } : { type: "finished", ok, message: message ?? "" });
        if (out.type !== "send") return;
        // the target is complete and verified whether or not the receiver still hears it
        if (ok) await say(out.msg).catch(() => opts.reporter.info("the receiver left before hearing that the restore is done (its log will say it failed)"));
        else await say(out.msg);
      },
      close: () => {
        stopKeepalive();
        return ch.close();
      },
    };
  } catch (e) {
    await ch.close();
    throw e;
  }
}
