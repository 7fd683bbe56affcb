// Worker thread: the CPU-heavy per-chunk work, off the main thread so every
// core stays busy. Compress (sender): raw chunk -> its digest and a complete
// DATA wire frame (or word that it is the same as the base backup's chunk; the
// sender finds all-zero chunks itself as it reads them). Check (receiver, restore,
// verify): zstd frame -> raw, verify its checksum, its digest for the
// integrity root (docs/FORMAT.md §4a); with a pool of one worker, also feed
// the classic whole-image SHA-256 in order. Readhash: read a range of a file
// and hash it (restore's read-back).
import * as fs from "node:fs";
import { ptr } from "bun:ffi";
import { zstd as loadZstd } from "../util/zstd.ts";
import { DATA_PAYLOAD_AT, dataFrameSize, sealDataFrame } from "../protocol/chunk-record.ts";
import { chunkDigest, frameDigest as frameDigestOf, frameMatches, zeroDigest } from "../store/root.ts";
import { isAllZero, zeroBytes } from "./zero.ts";
import type { Bytes, WorkerReply, WorkerRequest } from "./chunk-jobs.ts";
import { writeFrame, type FrameWrite } from "../store/reflink.ts";
import { loadLibc, type Libc } from "../util/libc.ts";
import { pwriteAll } from "../util/fsio.ts";

declare const self: Worker;

const zstd = loadZstd();

const cctx = new zstd.CCtx();
const dctx = new zstd.DCtx();
let sha = new Bun.CryptoHasher("sha256");
/** the arenas of shared slots the main thread handed over (src/util/shared-slots.ts), by id */
const arenas = new Map<number, SharedArrayBuffer>();

/** `length` bytes at `at` of a job's data: its own buffer, or a slot's bytes in an arena. */
function bytesOf(b: Bytes, at: number, length: number): Uint8Array {
  if (b instanceof ArrayBuffer) return new Uint8Array(b, at, length);
  const sab = arenas.get(b.arena);
  if (!sab || at + length > b.length) throw new Error(`no such slot: arena ${b.arena}, ${at}+${length} of ${b.length}`);
  return new Uint8Array(sab, b.at + at, length);
}

/** What goes back to the main thread of a job's data: its own buffer (a slot stays where it is). */
const own = (b: Bytes): ArrayBuffer[] => (b instanceof ArrayBuffer ? [b] : []);
// Scratch buffers reused across chunks: decompress output, and what a delta restore's target holds.
let scratchRaw = new Uint8Array(0);
let scratchTarget = new Uint8Array(0);

/** Whether fd already holds `raw` at position (a read error counts as "no": the chunk is written). */
function holds(fd: number, direct: number | undefined, raw: Uint8Array, position: number): boolean {
  try {
    const got = readTarget(fd, direct, raw.length, position);
    return got.length === raw.length && Buffer.from(got.buffer, got.byteOffset, got.length).equals(Buffer.from(raw.buffer, raw.byteOffset, raw.length));
  } catch {
    return false;
  }
}

// Reading a disk target with O_DIRECT (a second descriptor the caller opened):
// the disk's data straight into our buffer, without filling the block device's
// page cache first. Through a loop device that cache costs 4-10x the read
// itself. Such reads need a buffer, position and length aligned to the
// device's block: DIRECT_ALIGN covers every logical block size in use.
const DIRECT_ALIGN = 4096;
let directBuf: Uint8Array | null = null;
/** false after an O_DIRECT read was refused (EINVAL): buffered reads from then on */
let directOk = true;

function alignedScratch(n: number): Uint8Array {
  if (!directBuf || directBuf.length < n) {
    const b = new Uint8Array(n + DIRECT_ALIGN);
    const skew = ptr(b) % DIRECT_ALIGN;
    directBuf = b.subarray(skew === 0 ? 0 : DIRECT_ALIGN - skew, (skew === 0 ? 0 : DIRECT_ALIGN - skew) + n);
  }
  return directBuf;
}

/**
 * Reads up to `length` bytes of the target at position (fewer only at its end)
 * into a scratch buffer of this worker, valid until the next call: through
 * `direct` (an O_DIRECT descriptor) when given and position is aligned, else
 * through fd. Throws the read's error.
 */
function readTarget(fd: number, direct: number | undefined, length: number, position: number): Uint8Array {
  if (direct !== undefined && directOk && position % DIRECT_ALIGN === 0) {
    const whole = Math.ceil(length / DIRECT_ALIGN) * DIRECT_ALIGN;
    const buf = alignedScratch(whole);
    try {
      // a short read only at the device's end; the rounded-up tail past `length` is not ours
      return buf.subarray(0, Math.min(length, preadAll(direct, buf.subarray(0, whole), position)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
      directOk = false;
    }
  }
  if (scratchTarget.length < length) scratchTarget = new Uint8Array(length);
  return scratchTarget.subarray(0, preadAll(fd, scratchTarget.subarray(0, length), position));
}

function setLevel(level: number): void {
  cctx.reset(zstd.ResetDirective.sessionAndParameters);
  cctx.setParameter(zstd.CParameter.compressionLevel, level);
  cctx.setParameter(zstd.CParameter.checksumFlag, 1);
  cctx.setParameter(zstd.CParameter.contentSizeFlag, 1);
}
setLevel(1);

/** Writes all of data at position; returns the errno code on failure. */
function writeOrCode(fd: number, data: Uint8Array, position: number): string | undefined {
  try {
    pwriteAll(fd, data, position);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/** Writes a recorded frame (cloned when offered and possible); the errno code on failure. */
function storeFrame(w: FrameWrite, frame: Uint8Array): { error?: string; cloned?: boolean } {
  try {
    return writeFrame(w, frame, libc?.cloneRange) ? { cloned: true } : {};
  } catch (e) {
    return { error: (e as NodeJS.ErrnoException).code ?? String(e) };
  }
}

/** Reads exactly buf.length bytes at position (fewer only at the end of the file). */
function preadAll(fd: number, buf: Uint8Array, position: number): number {
  let off = 0;
  while (off < buf.length) {
    const n = fs.readSync(fd, buf, off, buf.length - off, position + off);
    if (n === 0) break;
    off += n;
  }
  return off;
}

function reply(msg: WorkerReply, transfer: ArrayBuffer[] = []): void {
  self.postMessage(msg, transfer);
}

type CheckReply = Extract<WorkerReply, { op: "checked" }>;

/** Decompresses one chunk, verifies it, hashes and writes it as asked. */
function check(m: Extract<WorkerRequest, { op: "check" }>): CheckReply {
  let raw: Uint8Array;
  let z: Uint8Array;
  // (taken once: a known frame that does not match is then checked the long way)
  let frameDigest: string | undefined;
  try {
    z = bytesOf(m.buf, m.at, m.length);
    if (m.known && !m.hash && !m.wantRaw && !m.writeRaw) {
      // the very bytes that were checked when stored: no need to decompress them again
      frameDigest = frameDigestOf(z);
      if (frameMatches(z, m.known.frame, frameDigest)) {
        const stored = m.write ? storeFrame(m.write, z) : undefined;
        return { op: "checked", index: m.index, ok: true, writeError: stored?.error, digest: m.known.raw, frameDigest, known: true, ...(stored?.cloned ? { cloned: true } : {}) };
      }
    }
    // exactly one zstd frame that declares the chunk's raw length (docs/FORMAT.md §3)
    if (zstd.findFrameCompressedSize(z) !== z.length) throw new Error("not exactly one zstd frame");
    if (zstd.getFrameContentSize(z) !== m.rawLength) throw new Error("frame does not declare the chunk's raw length");
    if (m.wantRaw) raw = m.out && m.out.byteLength >= m.rawLength ? new Uint8Array(m.out, 0, m.rawLength) : new Uint8Array(m.rawLength);
    else {
      if (scratchRaw.length < m.rawLength) scratchRaw = new Uint8Array(m.rawLength);
      raw = scratchRaw.subarray(0, m.rawLength);
    }
    const n = dctx.decompress(raw, z);
    if (n !== m.rawLength) throw new Error(`decompressed to ${n} bytes, expected ${m.rawLength}`);
  } catch (e) {
    return { op: "checked", index: m.index, ok: false, error: `cannot decompress: ${(e as Error).message}` };
  }
  if (m.checksum >= 0n && Bun.hash.xxHash3(raw) !== m.checksum) return { op: "checked", index: m.index, ok: false, error: "raw data checksum mismatch" };
  if (m.hash) sha.update(raw);
  const digest = m.digest ? chunkDigest(raw, m.digest) : undefined;
  if (m.frameDigest) frameDigest ??= frameDigestOf(z);
  const unchanged = m.writeRaw !== undefined && m.onlyIfDiffers === true && holds(m.writeRaw.fd, m.writeRaw.direct, raw, m.writeRaw.position);
  const stored = m.write ? storeFrame(m.write, z) : undefined;
  const writeError = m.write ? stored!.error : m.writeRaw && !unchanged ? writeOrCode(m.writeRaw.fd, raw, m.writeRaw.position) : undefined;
  const rawBuf = m.wantRaw ? (raw.buffer as ArrayBuffer) : undefined;
  return { op: "checked", index: m.index, ok: true, writeError, raw: rawBuf, digest, frameDigest, ...(unchanged ? { unchanged } : {}), ...(stored?.cloned ? { cloned: true } : {}) };
}

// libc (for cloning frames) loads asynchronously: jobs that come before it are
// kept, and run in order once it is there (a worker answers in order).
let libc: Libc | null | undefined;
let waiting: WorkerRequest[] | null = [];
void loadLibc().then((l) => {
  libc = l;
  const jobs = waiting!;
  waiting = null;
  for (const m of jobs) {
    try {
      handle(m);
    } catch (e) {
      setTimeout(() => {
        throw e; // as from onmessage: the worker's error, and the jobs after it still run
      });
    }
  }
});

self.onmessage = (ev: MessageEvent<WorkerRequest>) => {
  if (waiting) waiting.push(ev.data);
  else handle(ev.data);
};

function handle(m: WorkerRequest): void {
  switch (m.op) {
    case "level":
      setLevel(m.level);
      return;
    case "arena":
      arenas.set(m.id, m.sab);
      return;
    case "compress": {
      const raw = bytesOf(m.raw, 0, m.rawLength);
      const digest = chunkDigest(raw, m.digest);
      const checksum = Bun.hash.xxHash3(raw);
      if (m.base === digest) {
        reply({ op: "compressed", index: m.index, same: true, checksum, digest, frameLength: 0, compressedSize: 0 });
        return;
      }
      // (the slot holds the largest frame of a chunk: bytesOf refuses one that does not)
      const out = bytesOf(m.out, 0, dataFrameSize(zstd.compressBound(m.rawLength)));
      const n = cctx.compress2(out.subarray(DATA_PAYLOAD_AT, DATA_PAYLOAD_AT + zstd.compressBound(m.rawLength)), raw);
      const frameLength = sealDataFrame(out, { index: m.index, rawLength: m.rawLength, offset: m.offset, checksum }, n);
      reply({ op: "compressed", index: m.index, digest, frameLength, compressedSize: n });
      return;
    }
    case "check": {
      // an input ArrayBuffer always goes back, for the caller to reuse (a slot stays where it is)
      const r = check(m);
      const rawBuf = r.raw;
      reply({ ...r, ...(m.buf instanceof ArrayBuffer ? { buf: m.buf } : {}) }, [...own(m.buf), ...(rawBuf ? [rawBuf] : [])]);
      return;
    }
    case "zero": {
      if (m.hash !== false) {
        sha.update(zeroBytes(m.rawLength));
      }
      const writeError = m.write ? storeFrame(m.write, new Uint8Array(m.write.frame)).error : undefined;
      reply({ op: "zeroed", index: m.index, writeError });
      return;
    }
    case "readhash": {
      try {
        const got = readTarget(m.fd, m.direct, m.length, m.position);
        // zeros (most of a disk's free space) have a known digest: checking is far cheaper than hashing
        const digestOf = (d: Uint8Array) => (isAllZero(d) ? zeroDigest(d.length, m.digest) : chunkDigest(d, m.digest));
        const digests: string[] = [];
        for (let at = 0; m.piece !== undefined && at < got.length; at += m.piece) digests.push(digestOf(got.subarray(at, Math.min(at + m.piece, got.length))));
        reply({ op: "readhashed", index: m.index, digest: m.piece === undefined ? digestOf(got) : "", ...(m.piece !== undefined ? { digests } : {}), length: got.length });
      } catch (e) {
        reply({ op: "readhashed", index: m.index, digest: "", length: 0, error: (e as NodeJS.ErrnoException).code ?? String(e) });
      }
      return;
    }
    case "hash": {
      sha.update(bytesOf(m.buf, 0, m.length));
      reply({ op: "hashed", index: m.index, ...(m.buf instanceof ArrayBuffer ? { buf: m.buf } : {}) }, own(m.buf));
      return;
    }
    case "digest": {
      const hex = sha.digest("hex");
      sha = new Bun.CryptoHasher("sha256");
      reply({ op: "digest", sha256: hex });
      return;
    }
  }
}
