// push: read a disk or image in chunks, hash it, compress it on worker threads,
// and stream it to a receiver; done only when the receiver says it is durable
// and its integrity root (or SHA-256) matches ours.
import { MsgType, type DiskIdentity, type End, type Layout, type MountedRw } from "../protocol/messages.ts";
import { dataFrameSize, sameRecordFrame, zeroRecordFrame } from "../protocol/chunk-record.ts";
import type { Transport } from "../transport/index.ts";
import { Channel } from "./channel.ts";
import { Hasher, WorkerPool, workerCount, type Bytes, type WorkerReply } from "./chunk-jobs.ts";
import { SharedSlots } from "../util/shared-slots.ts";
import { OrderedPipeline } from "./pipeline.ts";
import { RootBuilder, zeroDigest, chunkDigest, digestAt, type DigestAlgorithm } from "../store/root.ts";
import { BLAKE3_CAP, CAPABILITIES, INCREMENTAL_CAP, RESEND_CAP, ROOT_CAP, STATUS_CAP } from "./version.ts";
import { REWIND_WINDOW, RewindPoints } from "./resend.ts";
import { receiveBaseDigests } from "./incremental.ts";
import { TbError, outcome } from "./errors.ts";
import { handshake, newHello, hasCap } from "./handshake.ts";
import { PushSession, type PushAction, type PushEvent } from "./push-session.ts";
import { startKeepalive } from "./keepalive.ts";
import type { Reporter } from "./report.ts";
import { holeTest, openSource, readRun } from "./source.ts";
import { isAllZero, zeroChecksum } from "./zero.ts";
import { chunkLine } from "../store/image-writer.ts";
import { compressBound } from "../util/buffer-pool.ts";
import { Signal } from "../util/signal.ts";


/** What push reads: a disk/image at offsets, or a stream of unknown length (a tar of files). */
export interface PushSource {
  /** raw size when known in advance; null for a stream */
  size: number | null;
  disk: DiskIdentity;
  content: "image" | "files";
  /** used-block imaging: the disk's partitions and how each is imaged (sent in HELLO, returned in the result) */
  layout?: Layout;
  /** fills buf with the bytes at `offset`; fewer than buf.length only at the end */
  read(buf: Uint8Array, offset: number): Promise<number>;
  /**
   * A disk (O_DIRECT): reads consecutive chunks into `bufs` (each of a
   * chunk's size) from `offset` on, as read() would one by one, in one
   * request; returns the bytes read (fewer only at the end), or 0 when it
   * could not (then read() reads them, and says where a read fails). A
   * wrapper that changes read() must drop it.
   */
  readMany?(bufs: Uint8Array[], offset: number): Promise<number>;
  /** for a regular file: a test for chunks that lie in a hole (zeros that need no reading) */
  holes?(): Promise<((offset: number, length: number) => boolean) | null>;
  /** extra END fields (file counts) once everything was read */
  summary?(): Record<string, unknown>;
  close(): void;
}

export function imageSource(path: string): PushSource {
  const src = openSource(path);
  return {
    size: src.size,
    disk: src.disk,
    content: "image",
    read: async (buf, offset) => {
      const n = Math.min(buf.length, src.size - offset);
      src.readAt(buf.subarray(0, n), offset);
      return n;
    },
    ...(src.readMany ? { readMany: async (bufs: Uint8Array[], offset: number) => readRun(src, bufs, offset) } : {}),
    holes: async () => (src.regularFile ? holeTest(src.fd, src.size, path) : null),
    close: () => src.close(),
  };
}

export interface PushOptions {
  source: string;
  /** defaults to imageSource(source) */
  input?: PushSource;
  transport: Transport;
  label: string | null;
  level: number;
  chunkSize: number;
  waitMs: number;
  /** continue an interrupted push of the same disk when the receiver offers it (default true) */
  resume?: boolean;
  /** send every chunk even when the receiver holds a backup of this disk to send only changes against (push --full) */
  full?: boolean;
  /** also compute the classic whole-image SHA-256 (off the chunk path, on a thread of its own) */
  sha256?: boolean;
  /** how long the receiver may stay silent before we give up */
  idleMs: number;
  reporter: Reporter;
  /** file systems of the source mounted read-write (sent in HELLO, recorded in the manifest) */
  mountedRw?: MountedRw[];
}

/** The receiver sends the base's digests right after HELLO_ACK: a gap this long between them means they were lost. */
const BASE_DIGESTS_WAIT_MS = 30_000;
/** While re-reading a prefix, tell the receiver this often that we are still there (its --idle may be 5 s). */
const KEEPALIVE_MS = 2000;
/**
 * ZERO and SAME records are a few dozen bytes each, and most of a mostly
 * empty (or unchanged) disk: a run of them goes out in one write, of at most
 * this many records, and none waits longer than BATCH_MS (a slow disk's
 * zeros still reach the receiver, whose patience is measured in seconds).
 */
const MAX_BATCHED_RECORDS = 256;
/** chunks of a disk read in one request (src/core/source.ts, directReader) */
const READ_AHEAD = 4;
const BATCH_MS = 200;

/**
 * Re-reads the first `chunks` chunks, folding their digests into `root` (and
 * `sha` when the whole-image SHA-256 is wanted), and compares
 * their chunk-list lines with the receiver's digest. A large prefix on a slow
 * disk takes longer than the receiver waits for an answer: `keepalive` is
 * called every KEEPALIVE_MS with the chunks read so far; if it fails (the
 * receiver gave up), so does the re-read.
 */
async function prefixMatches(src: PushSource, chunks: number, digest: string, chunkSize: number, root: RootBuilder, chunkHash: DigestAlgorithm, sha: Hasher | null, spare: ArrayBuffer[], keepalive: (done: number) => Promise<void>): Promise<boolean> {
  if (!Number.isSafeInteger(chunks) || chunks <= 0 || (src.size !== null && chunks * chunkSize > src.size)) return false;
  const lines = new Bun.CryptoHasher("sha256");
  const buf = new Uint8Array(chunkSize);
  let i = 0;
  const alive = startKeepalive(() => keepalive(i), KEEPALIVE_MS);
  try {
    for (; i < chunks; i++) {
      if (alive.failed) throw alive.error;
      const n = await src.read(buf, i * chunkSize);
      if (n === 0) return false;
      const data = buf.subarray(0, n);
      root.add(chunkDigest(data, chunkHash));
      if (sha) {
        // (from the buffers the SHA-256 thread hands back: memory stays bounded however long the prefix)
        const copy = spare.pop() ?? new ArrayBuffer(chunkSize);
        new Uint8Array(copy).set(data);
        await sha.data(i, copy, n);
      }
      lines.update(chunkLine(i, i * chunkSize, n, Bun.hash.xxHash3(data)));
    }
  } finally {
    await alive.stop();
  }
  if (alive.failed) throw alive.error;
  return lines.digest("hex") === digest;
}

function progressExtra(src: PushSource): { files?: number } {
  const s = src.summary?.() as { files?: { count?: number } } | undefined;
  return s?.files?.count !== undefined ? { files: s.files.count } : {};
}

export interface PushResult {
  id: string;
  path: string;
  source: string;
  bytes: number;
  storedBytes: number;
  /** the integrity root (docs/FORMAT.md §4a); null with a receiver that predates it */
  root: string | null;
  /** the whole-image SHA-256, with --sha256 (or a receiver that predates the root) */
  sha256: string | null;
  chunks: number;
  zeroChunks: number;
  seconds: number;
  /** chunks already held by the receiver from an interrupted push (0: a full push) */
  resumedFrom: number;
  /** how many times the receiver asked for a damaged chunk again (and it was sent again, with those after it) */
  resent: number;
  /** incremental push: the base backup, and how many chunks differed from it (README, "Incremental backups") */
  base?: string;
  changedChunks?: number;
  /** bytes of chunk records sent (DATA, ZERO, SAME frames) */
  sentBytes: number;
  /** compressed bytes of the chunks sent as DATA: what the receiver stored anew */
  newStoredBytes: number;
  files?: unknown;
  layout?: Layout;
}

export async function push(opts: PushOptions): Promise<PushResult> {
  const started = Date.now();
  const src = opts.input ?? imageSource(opts.source);
  const conn = await opts.transport.connect(opts.waitMs).catch((e) => {
    src.close();
    throw e;
  });
  const ch = new Channel(conn);
  const pool = new WorkerPool(workerCount());
  // chunks are read into these, and their DATA frames built in these, where the workers see them
  const rawSlots = new SharedSlots(opts.chunkSize);
  const frameSlots = new SharedSlots(dataFrameSize(compressBound(opts.chunkSize)));
  pool.share(rawSlots);
  pool.share(frameSlots);
  let hasher: Hasher | null = null;
  // what the receiver said so far (created after the handshake)
  let session: PushSession | null = null;
  // fired when the receiver has had its last word (DONE, an error, or silence)
  const receiverDone = new Signal();
  try {
    pool.broadcast({ op: "level", level: opts.level });
    // a file stream cannot be read again, nor a whole-image SHA-256 go back: no resend for those
    const mayResend = src.content === "image" && !opts.sha256;
    const caps = CAPABILITIES.filter((c) => (c !== RESEND_CAP || mayResend) && (c !== INCREMENTAL_CAP || !opts.full));
    const hello = newHello("push", { caps, disk: src.disk, label: opts.label ?? undefined, chunkSize: opts.chunkSize, level: opts.level, content: src.content, ...(opts.sha256 ? { sha256: true } : {}), ...(src.layout ? { layout: src.layout } : {}), ...(opts.mountedRw?.length ? { mountedRw: opts.mountedRw } : {}) });
    opts.reporter.info(`connecting to the receiver on ${conn.description}`);
    const ack = await handshake(ch, hello, opts.waitMs, opts.reporter);
    opts.reporter.info(`receiver ${ack.host.hostname} (${ack.tool}) will store ${ack.id ?? "the backup"}`);
    // Incremental push (docs/PROTOCOL.md §8.7): the base's digests come before anything else.
    let base: Uint8Array | null = null;
    let baseId: string | undefined;
    // (the offer is a peer's claim: its shape was checked by handshake's validator, its count is by receiveBaseDigests)
    const baseOffer = ack.base ?? null;
    if (baseOffer && !opts.full && src.size !== null) {
      const got = await receiveBaseDigests(ch, hello.session, baseOffer.chunks, Math.ceil(src.size / opts.chunkSize), Math.min(opts.idleMs, BASE_DIGESTS_WAIT_MS));
      if (typeof got === "string") opts.reporter.info(`not incremental against ${baseOffer.id} (${got}): sending every chunk`);
      else {
        base = got;
        baseId = baseOffer.id;
        opts.reporter.info(`reading the disk and sending only the chunks that differ from ${baseId}`);
      }
    }
    const baseDigest = (i: number) => (base && i * 32 < base.length ? digestAt(base, i) : undefined);

    // Everything the receiver says from here on (progress, keepalives every
    // 5 s while its work moves on, a request for a damaged chunk, an error, the
    // final DONE) and its silences go to the session's state machine
    // (push-session.ts); this listener only reads and does what it says.
    // After END, a receiver that lists STATUS is asked again for a DONE that
    // does not come; a receiver that lists resend asks for a damaged chunk
    // again (docs/PROTOCOL.md §8.2a): sending goes back there.
    const canResend = mayResend && hasCap(ack, RESEND_CAP);
    const ps = new PushSession({ session: hello.session, canAsk: hasCap(ack, STATUS_CAP), canResend, idleMs: opts.idleMs }, Date.now());
    session = ps;
    const wake: { rewind: (() => void) | null } = { rewind: null };
    const act = (a: PushAction) => {
      if (a.type === "rewind") return wake.rewind?.();
      // END again first: if it was the frame lost (or damaged), the receiver still waits for it
      void ch.sendJson(MsgType.END, a.end).catch(() => {});
      void ch.sendJson(MsgType.STATUS, { session: hello.session }).catch(() => {});
    };
    const listener = (async () => {
      while (!ps.over) {
        let ev: PushEvent;
        try {
          ev = { type: "frame", frame: await ch.recv(1000, "the receiver") };
        } catch (e) {
          ev = e instanceof TbError && e.code === "TIMEOUT" ? { type: "quiet" } : { type: "broken", error: e };
        }
        for (const a of ps.step(ev, Date.now())) act(a);
      }
      receiverDone.fire();
    })();

    // Every write waits on the receiver: it is watched like the data (see the listener).
    const send = async (sending: Promise<void>): Promise<boolean> => {
      ps.writing(Date.now());
      try {
        const written = await receiverDone.race(sending);
        if (!written && ps.failure) throw ps.failure;
        return written;
      } finally {
        ps.writing(null);
      }
    };
    // The integrity root (docs/FORMAT.md §4a) is folded here from the workers'
    // per-chunk digests; the classic whole-image SHA-256 only when asked for
    // (--sha256) or when the receiver predates the root, on a thread of its own.
    const root = new RootBuilder(REWIND_WINDOW);
    const peerHasRoot = hasCap(ack, ROOT_CAP);
    // its chunk digest, as the receiver said (docs/PROTOCOL.md §5.4a)
    // (a resume offer's is the partial's: declined, a new backup's is BLAKE3 whenever the receiver lists it)
    let chunkHash: DigestAlgorithm = peerHasRoot && ack.digest === "blake3" ? "blake3" : "sha256";
    const spare: ArrayBuffer[] = [];
    // (what the SHA-256 thread is done with: a prefix check's copy, or a chunk's slot)
    const hashed = (b: Bytes) => (b instanceof ArrayBuffer ? spare.push(b) : rawSlots.giveRef(b));
    let sha: Hasher | null = opts.sha256 || !peerHasRoot ? new Hasher(hashed, rawSlots) : null;
    hasher = sha;
    // An interrupted push of this disk left a durable prefix: continue after it
    // if our own chunks there hash to the same chunk list.
    let start = 0;
    if (ack.resume) {
      const offer = ack.resume;
      const keepalive = async (done: number) => {
        if (ps.failure) throw ps.failure; // the receiver gave up: no need to read the rest
        await send(ch.sendJson(MsgType.PROGRESS, { session: hello.session, checking: done, of: offer.chunks }));
      };
      if (opts.resume !== false && (await prefixMatches(src, offer.chunks, offer.digest, opts.chunkSize, root, chunkHash, sha, spare, keepalive))) start = offer.chunks;
      else if (root.count > 0 || sha) {
        // what the prefix check folded in does not count: start both afresh
        root.reset();
        sha?.terminate();
        sha = hasher = opts.sha256 || !peerHasRoot ? new Hasher(hashed, rawSlots) : null;
      }
      await send(ch.sendJson(MsgType.RESUME, { session: hello.session, from: start }));
      if (start === 0) chunkHash = peerHasRoot && hasCap(ack, BLAKE3_CAP) ? "blake3" : "sha256";
      opts.reporter.info(start ? `resuming the interrupted backup ${offer.id} at chunk ${start}${opts.label !== null ? `, now labelled ${JSON.stringify(opts.label)}` : ""}` : `not resuming ${offer.id} (${opts.resume === false ? "--no-resume" : "this disk no longer matches it"}): starting a new backup`);
    }
    const total = src.size ?? 0;
    const isHole = (await src.holes?.()) ?? null;
    // A disk is read up to READ_AHEAD chunks at a time, into slots that wait
    // here for their turn (a request elsewhere, after a rewind, drops them).
    let ahead: { raw: Uint8Array; offset: number; length: number }[] = [];
    const dropAhead = () => {
      for (const a of ahead) rawSlots.give(a.raw);
      ahead = [];
    };
    /** Chunk `offset` read into a slot (not a hole: the caller looked); length 0 past the end. */
    const readChunk = async (offset: number): Promise<{ raw: Uint8Array; length: number }> => {
      if (ahead.length > 0 && ahead[0]!.offset !== offset) dropAhead();
      if (ahead.length === 0) {
        if (!src.readMany || src.size === null) {
          const raw = rawSlots.take();
          return { raw, length: await src.read(raw, offset) };
        }
        const size = src.size;
        const bufs = [rawSlots.take()];
        for (let o = offset + opts.chunkSize; bufs.length < READ_AHEAD && o < size && !isHole?.(o, Math.min(opts.chunkSize, size - o)); o += opts.chunkSize) bufs.push(rawSlots.take());
        const n = await src.readMany(bufs, offset);
        if (n === 0) {
          // not in one request (a run at the disk's end, a disk that failed one): this chunk alone, as ever
          for (const b of bufs.slice(1)) rawSlots.give(b);
          return { raw: bufs[0]!, length: await src.read(bufs[0]!, offset) };
        }
        ahead = bufs.map((raw, k) => ({ raw, offset: offset + k * opts.chunkSize, length: Math.max(0, Math.min(opts.chunkSize, n - k * opts.chunkSize)) }));
      }
      const a = ahead.shift()!;
      return { raw: a.raw, length: a.length };
    };
    const maxInFlight = pool.size * 3;
    let zeroChunks = 0;
    let changedChunks = 0;
    let sentBytes = 0;
    let stored = 0;
    let offset = start * opts.chunkSize;
    let chunks = start;

    /** A chunk on its way out: a ZERO record needs no worker; a read chunk comes back from one, its slots with it. */
    type Out = { index: number; offset: number; rawLength: number; reply: WorkerReply | null; raw?: Uint8Array; frame?: Uint8Array };
    // what sending chunk i changes, as it stood before it: to go back there when the receiver asks for i again
    const points = canResend ? new RewindPoints<{ root: ReturnType<RootBuilder["save"]>; zeroChunks: number; stored: number; changedChunks: number }>() : null;
    let resent = 0;
    // small records waiting to go out together (always for chunks after every one written)
    let batch: Uint8Array[] = [];
    let batchTimer: ReturnType<typeof setTimeout> | null = null;
    const flushRecords = async () => {
      if (batchTimer) clearTimeout(batchTimer);
      batchTimer = null;
      if (batch.length === 0) return;
      const all = batch.length === 1 ? batch[0]! : Buffer.concat(batch);
      batch = [];
      sentBytes += all.length;
      await send(ch.sendFrame(all));
    };
    const sendRecord = async (rec: Uint8Array) => {
      batch.push(rec);
      if (batch.length >= MAX_BATCHED_RECORDS) return flushRecords();
      // however long the next chunk takes to read (a failing disk), these go out on time
      // (a failed write surfaces at the next one; not once a resend is asked for: they go out again after it)
      batchTimer ??= setTimeout(() => void (ps.rewindTo === null ? flushRecords().catch(() => {}) : null), BATCH_MS);
      batchTimer.unref?.();
    };
    const sendOne = async (o: Out) => {
      if (ps.failure) throw ps.failure;
      const r = o.reply;
      if (r && r.op === "failed") throw new TbError("INTERNAL", r.error, "report this bug");
      if (r && r.op !== "compressed") throw new TbError("INTERNAL", `unexpected worker reply ${r.op}`, "report this bug");
      if (ps.rewindTo !== null) {
        // the receiver asked for an earlier chunk again: this one goes out after it
        if (o.raw) rawSlots.give(o.raw);
        if (o.frame) frameSlots.give(o.frame);
        return;
      }
      points?.save(o.index, { root: root.save(), zeroChunks, stored, changedChunks });
      // (a chunk read as zeros, or a hole, never went to a worker: no reply)
      const digest = r ? r.digest : zeroDigest(o.rawLength, chunkHash);
      root.add(digest);
      if (base && digest !== baseDigest(o.index)) changedChunks++;
      if (o.raw) {
        // (the SHA-256 thread hands the slot back once it has hashed it)
        if (sha) await sha.data(o.index, rawSlots.ref(o.raw)!, o.rawLength);
        else rawSlots.give(o.raw);
      } else if (sha) await sha.zero(o.index, o.rawLength);
      if (!r) {
        zeroChunks++;
        await sendRecord(zeroRecordFrame({ index: o.index, rawLength: o.rawLength, offset: o.offset, checksum: zeroChecksum(o.rawLength) }));
        return;
      }
      if (r.same) {
        // the base holds this chunk: the receiver copies it from there
        frameSlots.give(o.frame!);
        await sendRecord(sameRecordFrame({ index: o.index, rawLength: o.rawLength, offset: o.offset, checksum: r.checksum! }));
        return;
      }
      await flushRecords();
      stored += r.compressedSize;
      sentBytes += r.frameLength;
      // A receiver that failed may stop reading without closing: do not stay
      // blocked in the write once it has said why.
      // (a write still under way when the receiver gave up keeps its slot: the slot is not used again)
      if (await send(ch.sendFrame(o.frame!.subarray(0, r.frameLength)))) frameSlots.give(o.frame!);
    };
    const out = new OrderedPipeline<Out>(maxInFlight, sendOne);

    /** Goes back to chunk `rewindTo`, asked for again: what was sent from there on is sent again. */
    const rewind = () => {
      const from = ps.rewindTo!;
      ps.step({ type: "rewound" }, Date.now());
      // (records never written: of chunks from `from` on, which go out again)
      batch = [];
      if (batchTimer) clearTimeout(batchTimer);
      batchTimer = null;
      const p = points!.take(from);
      if (!p) throw new TbError("CORRUPT", `the receiver asked for chunk ${from} again, which this sender cannot send again (it has sent ${chunks})`, "check the cable, then push again; it continues from the last durable point");
      root.restore(p.root);
      zeroChunks = p.zeroChunks;
      stored = p.stored;
      changedChunks = p.changedChunks;
      chunks = from;
      offset = from * opts.chunkSize;
      resent++;
      opts.reporter.info(`the receiver asked for chunk ${from} again (damaged on the way): sending from there`);
    };
    let end: End;
    for (;;) {
      for (let i = chunks; src.size === null || offset < src.size; i++) {
        if (ps.failure) throw ps.failure;
        if (ps.rewindTo !== null) break;
        // A hole of a sparse image is zeros: no need to read it.
        const holeLength = isHole && src.size !== null ? Math.min(opts.chunkSize, src.size - offset) : 0;
        let rawLength: number;
        if (holeLength > 0 && isHole!(offset, holeLength)) {
          rawLength = holeLength;
          await out.add(Promise.resolve({ index: i, offset, rawLength, reply: null }));
        } else {
          const { raw, length } = await readChunk(offset);
          rawLength = length;
          if (rawLength === 0) {
            rawSlots.give(raw);
            break;
          }
          if (isAllZero(raw.subarray(0, rawLength))) {
            // zeros written on a disk (its free space, mostly): sent as a hole is, with no worker's round trip
            rawSlots.give(raw);
            await out.add(Promise.resolve({ index: i, offset, rawLength, reply: null }));
          } else {
            const frame = frameSlots.take();
            const at = offset;
            const job = pool.run({ op: "compress", index: i, offset, rawLength, raw: rawSlots.ref(raw)!, out: frameSlots.ref(frame)!, digest: chunkHash, base: baseDigest(i) });
            await out.add(job.then((reply) => ({ index: i, offset: at, rawLength, reply, raw, frame })));
          }
        }
        chunks++;
        offset += rawLength;
        if ((i & 15) === 0) opts.reporter.progress({ phase: "push", bytes: offset, total, stored, ...progressExtra(src) });
        if (rawLength < opts.chunkSize) break;
      }
      await out.drain();
      if (ps.rewindTo !== null) {
        rewind();
        continue;
      }
      await flushRecords();
      if (ps.rewindTo !== null) {
        rewind();
        continue;
      }
      const wholeSha = sha ? await sha.digest() : undefined;
      end = { chunks, bytes: offset, ...(peerHasRoot ? { root: root.digest() } : {}), ...(wholeSha ? { sha256: wholeSha } : {}), ...(src.summary?.() ?? {}) };
      ps.step({ type: "end-writing", end }, Date.now());
      await send(ch.sendJson(MsgType.END, end)); // END too can wait on a receiver that froze
      ps.step({ type: "end-written" }, Date.now());
      opts.reporter.progress({ phase: "push", bytes: offset, total, stored, ...progressExtra(src) });
      opts.reporter.info("all data sent; waiting for the receiver to confirm it is stored");
      // a chunk found damaged at the end is asked for after END: send from there again, then END again
      if (ps.rewindTo === null) await Promise.race([listener, new Promise<void>((r) => (wake.rewind = r))]);
      wake.rewind = null;
      if (ps.rewindTo !== null) {
        rewind();
        continue;
      }
      break;
    }
    await listener;
    if (ps.failure) throw ps.failure;
    const d = ps.done;
    if (!d) throw new TbError("CLOSED", "the receiver never confirmed the backup", "run the command again", [], outcome.incomplete("backup"));
    if (end.root !== undefined && d.root !== end.root)
      throw new TbError("CORRUPT", `the receiver stored integrity root ${d.root ?? "(none)"}, but the source has ${end.root}`, "check the cable and run again", [], outcome.incomplete("backup"));
    if (end.sha256 !== undefined && d.sha256 !== end.sha256)
      throw new TbError("CORRUPT", `the receiver stored SHA-256 ${d.sha256 ?? "(none)"}, but the source has ${end.sha256}`, "check the cable and run again", [], outcome.incomplete("backup"));
    return {
      id: d.id,
      path: d.path,
      source: opts.source,
      bytes: offset,
      storedBytes: d.storedBytes,
      root: end.root ?? null,
      sha256: end.sha256 ?? null,
      chunks,
      zeroChunks,
      resumedFrom: start,
      resent,
      ...(baseId !== undefined ? { base: baseId, changedChunks } : {}),
      sentBytes,
      newStoredBytes: stored,
      seconds: (Date.now() - started) / 1000,
      ...(src.layout ? { layout: src.layout } : {}),
      ...(src.summary?.() ?? {}),
    };
  } catch (e) {
    // A write that failed because the receiver hung up usually means it said
    // why first (disk full, corrupt data): give its message a moment to arrive.
    if (e instanceof TbError && e.code === "CLOSED" && session && !session.failure) await receiverDone.race(Bun.sleep(2000));
    const peerFailure = session?.failure;
    if (peerFailure && peerFailure.code !== "CLOSED" && peerFailure !== e) throw peerFailure;
    if (!(e instanceof TbError && (e.code === "CLOSED" || e.code === "PEER" || e.code === "NO_SPACE"))) {
      const msg = e instanceof TbError ? e.message : String(e);
      const code = e instanceof TbError ? e.code : "INTERNAL";
      await Promise.race([ch.sendJson(MsgType.ERROR, { code, message: `sender stopped: ${msg}` }).catch(() => {}), Bun.sleep(500)]);
    }
    throw e;
  } finally {
    pool.terminate();
    hasher?.terminate();
    src.close();
    await ch.close();
  }
}
