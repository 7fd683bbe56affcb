// Messages between the main thread and chunk-worker.ts, and a pool of workers.
// Each worker answers its jobs in the order it got them, so a caller that keeps
// its own FIFO of promises gets results in chunk order.

import { availableParallelism } from "node:os";
import type { FrameWrite } from "../store/reflink.ts";
import type { SharedSlots, SlotRef } from "../util/shared-slots.ts";
import type { DigestAlgorithm } from "../store/root.ts";

/**
 * A job's data: a buffer handed over (and back), or bytes in an arena the
 * worker was given once (src/util/shared-slots.ts), which cost nothing to
 * name; the caller hands their slot back after the reply.
 */
export type Bytes = ArrayBuffer | SlotRef;

/**
 * How a job's `buf`/`at` name `view`: by its slot when it lies in one of
 * `slots` (`named`: nothing crosses, and the slot is the caller's to give back
 * once the worker answered), else its own buffer, handed over in `transfer`
 * (a copy of a view that cannot be transferred) and back as the reply's `buf`.
 */
export function jobBytes(slots: SharedSlots | null, view: Uint8Array): { buf: Bytes; at: number; transfer: ArrayBuffer[]; named: boolean } {
  const ref = slots?.ref(view);
  if (ref) return { buf: ref, at: 0, transfer: [], named: true };
  const own = view.buffer instanceof ArrayBuffer ? { buf: view.buffer, at: view.byteOffset } : { buf: view.slice().buffer as ArrayBuffer, at: 0 };
  return { ...own, transfer: [own.buf], named: false };
}

export type WorkerRequest =
  | { op: "level"; level: number }
  /** an arena of shared slots, for the jobs after it to name (SharedSlots) */
  | { op: "arena"; id: number; sab: SharedArrayBuffer }
  /** `raw`: the chunk; `out`: the slot to build its DATA frame in (room for any chunk's frame) */
  /** `digest`: the chunk digest of the root (docs/FORMAT.md §4a); `base`: the base backup's digest of this chunk (incremental push): when the chunk's equals it, nothing is compressed */
  | { op: "compress"; index: number; offset: number; rawLength: number; raw: SlotRef; out: SlotRef; digest: DigestAlgorithm; base?: string }
  | {
      op: "check";
      index: number;
      rawLength: number;
      checksum: bigint;
      /** the zstd frame is `length` bytes at `at` of buf (an ArrayBuffer comes back as the reply's buf) */
      buf: Bytes;
      at: number;
      length: number;
      /** feed the worker's whole-image SHA-256 (in order: a pool of one worker) */
      hash: boolean;
      /** return this digest of the raw chunk (the integrity root's, docs/FORMAT.md §4a) */
      digest?: DigestAlgorithm;
      /** return the zstd frame's digest (its frame-xxh3.txt line, docs/FORMAT.md §4b) */
      frameDigest?: boolean;
      /**
       * a stored frame whose digest was taken when it was checked (a base's
       * frame-xxh3.txt line, or an older frame-digests.txt one), and its raw
       * chunk's digest (in `digest`'s algorithm): when the frame still hashes to `frame` it is those
       * very bytes, known to hold `raw`, and is written without being
       * decompressed again (not with `hash`)
       */
      known?: { frame: string; raw: string };
      wantRaw: boolean;
      /** with wantRaw: a buffer to decompress into (handed back as raw), to avoid fresh allocations */
      out?: ArrayBuffer;
      /** after a good check, write the zstd frame (and its padding) where the image writer recorded it, or clone it when offered */
      write?: FrameWrite;
      /** after a good check, pwrite the raw data to this file at this position (restore) */
      /** `direct`: an O_DIRECT descriptor of the same target, for onlyIfDiffers's read */
      writeRaw?: { fd: number; position: number; direct?: number };
      /** with writeRaw (delta restore): first read what the file holds there, and write only when it differs */
      onlyIfDiffers?: boolean;
    }
  /** `hash`: feed the zeros to the whole-image SHA-256 (default true) */
  | { op: "zero"; index: number; rawLength: number; hash?: boolean; write?: FrameWrite & { frame: ArrayBuffer } }
  /** feed `length` bytes of `buf` to the whole-image SHA-256 (an ArrayBuffer is handed back) */
  | { op: "hash"; index: number; buf: Bytes; length: number }
  | { op: "digest" }
  /**
   * read `length` bytes of fd at position and return their `digest` (`buf`, if
   * any, is handed back unused); `direct`: an O_DIRECT descriptor of the same
   * target to read through instead; `piece`: one read, a digest for each
   * `piece` bytes of it (several chunks in one job: `digests`)
   */
  | { op: "readhash"; index: number; fd: number; position: number; length: number; digest: DigestAlgorithm; direct?: number; piece?: number };

export type WorkerReply =
  /** same: the chunk's digest equals the request's `base` (no frame was built; `checksum` is its XXH3-64 for the SAME record) */
  /** the frame is in the request's `out` slot */
  | { op: "compressed"; index: number; digest: string; frameLength: number; compressedSize: number; same?: boolean; checksum?: bigint }
  /** `buf`: the request's input buffer, handed back */
  /** `unchanged`: with onlyIfDiffers, the file already held the chunk and nothing was written */
  /** `cloned`: the frame was cloned from the write's `clone` source (shared blocks), not written */
  /** `frameDigest`: as asked, the zstd frame's digest (frame-xxh3.txt); `known`: the request's known frame checked out by its digest alone */
  | { op: "checked"; index: number; ok: boolean; error?: string; raw?: ArrayBuffer; writeError?: string; buf?: ArrayBuffer; digest?: string; frameDigest?: string; known?: boolean; unchanged?: boolean; cloned?: boolean }
  /** `length`: bytes read (fewer at the end of the file); `error`: the read's errno code */
  /** `digests`: with `piece`, the digest of each piece read (a short last one too) */
  | { op: "readhashed"; index: number; digest: string; digests?: string[]; length: number; error?: string }
  | { op: "zeroed"; index: number; writeError?: string }
  | { op: "hashed"; index: number; buf?: ArrayBuffer }
  | { op: "digest"; sha256: string }
  | { op: "failed"; error: string };

// In a compiled binary the worker is an extra entrypoint, addressed by its path
// relative to the entrypoints' common root (src/); from source, relative to this file.
// (Not import.meta.url to tell them apart: the CommonJS build that bytecode needs
// bakes in the build machine's source path, which exists only there.)
const WORKER_SPEC = Bun.main.startsWith("/$bunfs/")
  ? "./core/chunk-worker.ts"
  : new URL("./chunk-worker.ts", import.meta.url).href;

export class WorkerPool {
  private workers: Worker[] = [];
  private pending: ((r: WorkerReply) => void)[][] = [];
  /** why each worker died (it answers nothing more), or null while it runs */
  private dead: (string | null)[] = [];
  private rr = 0;
  private outstanding = new Set<Promise<WorkerReply>>();
  /** what share() subscribed to, dropped with the workers */
  private unshare: (() => void)[] = [];

  /** `spec`: the worker script (tests give one that cannot load) */
  constructor(size: number, spec = WORKER_SPEC) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(spec);
      const q: ((r: WorkerReply) => void)[] = [];
      w.onmessage = (ev: MessageEvent<WorkerReply>) => q.shift()?.(ev.data);
      // A worker that fails (even before its first job, e.g. when it cannot be
      // loaded) fails the jobs it holds and every later one: none may wait forever.
      w.onerror = (ev) => {
        const error = `chunk worker failed: ${(ev as ErrorEvent).message}`;
        this.dead[i] = error;
        for (const r of q.splice(0)) r({ op: "failed", error });
      };
      this.workers.push(w);
      this.pending.push(q);
      this.dead.push(null);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  /** Hands every arena of `slots` (now and later) to the workers, so jobs can name their bytes. */
  share(slots: SharedSlots): void {
    this.unshare.push(slots.shareWith((id, sab) => this.broadcast({ op: "arena", id, sab })));
  }

  /** Sends a job that has no reply to every worker. */
  broadcast(req: WorkerRequest): void {
    for (const w of this.workers) w.postMessage(req);
  }

  /** Runs a job on worker `pin`, or on the next worker in turn. */
  run(req: WorkerRequest, transfer: ArrayBuffer[] = [], pin?: number): Promise<WorkerReply> {
    const i = pin ?? this.rr++ % this.workers.length;
    const p = new Promise<WorkerReply>((resolve) => {
      const dead = this.dead[i];
      if (dead) return resolve({ op: "failed", error: dead });
      try {
        this.workers[i]!.postMessage(req, transfer);
      } catch (e) {
        // nothing reached the worker: no reply will come for it (and none may be taken for it)
        return resolve({ op: "failed", error: `cannot hand the job to a chunk worker: ${(e as Error).message}` });
      }
      this.pending[i]!.push(resolve);
    });
    this.outstanding.add(p);
    void p.then(() => this.outstanding.delete(p));
    return p;
  }

  /**
   * Waits (at most `ms`) until every job sent has answered; false when some
   * have not (a stalled disk). Jobs write to files: call this before closing a
   * descriptor they may still write to, and leave it open on false, since a
   * late write to a reused descriptor number would land in another file.
   */
  async idle(ms = 10_000): Promise<boolean> {
    return Promise.race([Promise.allSettled([...this.outstanding]).then(() => true), Bun.sleep(ms).then(() => false)]);
  }

  terminate(): void {
    for (const u of this.unshare.splice(0)) u();
    for (const w of this.workers) w.terminate();
  }
}

/**
 * The whole-image SHA-256 on a worker of its own, fed in chunk order, so that
 * hashing runs beside decompression instead of after it. Data buffers (or
 * shared slots) go to it and come back through `recycle`.
 */
const MAX_HASHES_PENDING = 8;

export class Hasher {
  private readonly pool = new WorkerPool(1);
  private pending: Promise<void>[] = [];

  /** `recycle`: gets each buffer (ArrayBuffer or slot) back once hashed; `slots`: where the slots named come from */
  constructor(
    private readonly recycle: (buf: Bytes) => void,
    slots?: SharedSlots,
  ) {
    if (slots) this.pool.share(slots);
  }

  /** Hashes the first `length` bytes of `buf` (handed over until recycled). */
  data(index: number, buf: Bytes, length: number): Promise<void> {
    const job = this.pool.run({ op: "hash", index, buf, length }, buf instanceof ArrayBuffer ? [buf] : []);
    // (an ArrayBuffer comes back as the reply's, the one sent being detached; a slot stays what it was)
    return this.add(
      job.then((r) => {
        if (r.op === "hashed") this.recycle(r.buf ?? buf);
        return r;
      }),
    );
  }

  /** Hashes `rawLength` zero bytes. */
  zero(index: number, rawLength: number): Promise<void> {
    return this.add(this.pool.run({ op: "zero", index, rawLength }));
  }

  async digest(): Promise<string> {
    await Promise.all(this.pending);
    this.pending = [];
    const d = await this.pool.run({ op: "digest" });
    if (d.op !== "digest") throw new Error(`hash worker failed: ${d.op === "failed" ? d.error : d.op}`);
    return d.sha256;
  }

  terminate(): void {
    this.pool.terminate();
  }

  /** Queues a job; waits only while too many are outstanding. */
  private async add(job: Promise<WorkerReply>): Promise<void> {
    const p = job.then((r) => {
      if (r.op === "failed") throw new Error(`hash worker failed: ${r.error}`);
    });
    p.catch(() => {}); // observed when awaited below or in digest()
    this.pending.push(p);
    while (this.pending.length > MAX_HASHES_PENDING) await this.pending.shift();
  }
}

/** Worker threads for per-chunk work: one per core this process may run on (taskset counts). */
export function workerCount(): number {
  return Math.max(1, Math.min(availableParallelism(), 16));
}
