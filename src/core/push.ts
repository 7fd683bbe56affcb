// push: read a disk or image in chunks, hash it, compress it on worker threads,
// and stream it to a receiver; done only when the receiver says it is durable
// and its SHA-256 matches ours.
import { availableParallelism } from "node:os";
import { CHUNK_HEADER_SIZE, MsgType, decodeJson, encodeZero, type DiskIdentity, type Done, type End, type MountedRw } from "../protocol/messages.ts";
import { HEADER_SIZE, TRAILER_SIZE, encodeFrame } from "../protocol/frame.ts";
import type { Transport } from "../transport/index.ts";
import { Channel } from "./channel.ts";
import { WorkerPool } from "./chunk-jobs.ts";
import { TbError } from "./errors.ts";
import { handshake, newHello, peerError } from "./handshake.ts";
import type { Reporter } from "./report.ts";
import { holeTest, openSource, readFully } from "./source.ts";
import { zeroChecksum } from "./zero.ts";
import { chunkLine } from "../store/image-writer.ts";
import { BufferPool, compressBound } from "../util/buffer-pool.ts";
import { Signal } from "../util/signal.ts";


/** What push reads: a disk/image at offsets, or a stream of unknown length (a tar of files). */
export interface PushSource {
  /** raw size when known in advance; null for a stream */
  size: number | null;
  disk: DiskIdentity;
  content: "image" | "files";
  /** fills buf with the bytes at `offset`; fewer than buf.length only at the end */
  read(buf: Uint8Array, offset: number): Promise<number>;
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
      readFully(src.fd, buf.subarray(0, n), offset, path);
      return n;
    },
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
  /** how long the receiver may stay silent before we give up */
  idleMs: number;
  reporter: Reporter;
  /** file systems of the source mounted read-write (sent in HELLO, recorded in the manifest) */
  mountedRw?: MountedRw[];
}

/** The hint when all was sent but the receiver's confirmation did not come through. */
const UNCONFIRMED = "the backup is not confirmed: if 'tbbackup list' on the receiver shows it complete, it is; otherwise check the receiver's disk and messages, then push again";

/** While re-reading a prefix, tell the receiver this often that we are still there (its --idle may be 5 s). */
const KEEPALIVE_MS = 2000;
/**
 * After END, with no DONE for this long, ask the receiver for it (STATUS): a
 * damaged or lost DONE is sent again. (The driver wakes no reader for a frame
 * that came last; a fresh one brings both.)
 */
const STATUS_EVERY_MS = 5000;
/** Damaged answers to STATUS before giving up on hearing a good one. */
const MAX_DAMAGED_ANSWERS = 3;
/** After END, wait at least this long for DONE (an answer to STATUS needs time), whatever --idle says. */
const MIN_END_WAIT_MS = 2 * STATUS_EVERY_MS;

/**
 * Re-reads the first `chunks` chunks, hashing them into `sha`, and compares
 * their chunk-list lines with the receiver's digest. A large prefix on a slow
 * disk takes longer than the receiver waits for an answer: `keepalive` is
 * called every KEEPALIVE_MS with the chunks read so far.
 */
async function prefixMatches(src: PushSource, chunks: number, digest: string, chunkSize: number, sha: Bun.CryptoHasher, keepalive: (done: number) => Promise<void>): Promise<boolean> {
  if (!Number.isSafeInteger(chunks) || chunks <= 0 || (src.size !== null && chunks * chunkSize > src.size)) return false;
  const lines = new Bun.CryptoHasher("sha256");
  const buf = new Uint8Array(chunkSize);
  let told = Date.now();
  for (let i = 0; i < chunks; i++) {
    if (Date.now() - told >= KEEPALIVE_MS) {
      await keepalive(i);
      told = Date.now();
    }
    const n = await src.read(buf, i * chunkSize);
    if (n === 0) return false;
    const data = buf.subarray(0, n);
    sha.update(data);
    lines.update(chunkLine(i, i * chunkSize, n, Bun.hash.xxHash3(data)));
  }
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
  sha256: string;
  chunks: number;
  zeroChunks: number;
  seconds: number;
  /** chunks already held by the receiver from an interrupted push (0: a full push) */
  resumedFrom: number;
  files?: unknown;
}

export async function push(opts: PushOptions): Promise<PushResult> {
  const started = Date.now();
  const src = opts.input ?? imageSource(opts.source);
  const conn = await opts.transport.connect(opts.waitMs).catch((e) => {
    src.close();
    throw e;
  });
  const ch = new Channel(conn);
  const pool = new WorkerPool(Math.max(1, Math.min(availableParallelism(), 4)));
  let done: Done | null = null;
  let peerFailure: TbError | null = null;
  let finishedSending = false;
  // fired when the receiver has had its last word (DONE, an error, or silence)
  const receiverDone = new Signal();
  try {
    pool.broadcast({ op: "level", level: opts.level });
    const hello = newHello("push", { disk: src.disk, label: opts.label ?? undefined, chunkSize: opts.chunkSize, level: opts.level, content: src.content, ...(opts.mountedRw?.length ? { mountedRw: opts.mountedRw } : {}) });
    opts.reporter.info(`connecting to the receiver on ${conn.description}`);
    const ack = await handshake(ch, hello, opts.waitMs, opts.reporter);
    opts.reporter.info(`receiver ${ack.host.hostname} (${ack.tool}) will store ${ack.id ?? "the backup"}`);

    // Everything the receiver says from here on: progress, keepalives (every
    // 5 s while its work moves on), an error, or the final DONE. A write that
    // has waited idleMs on a receiver silent as long means it froze (host hung,
    // disk stalled): end the push instead of a progress line that never moves.
    // Once all is sent, only DONE or ERROR count, within idleMs.
    let heard = Date.now();
    let writingSince: number | null = null;
    // After END: a receiver that offers STATUS is asked again for a DONE that does not come.
    const canAsk = Array.isArray(ack.caps) && ack.caps.includes("status");
    let askedAt = 0;
    let damagedAnswers = 0;
    let endSent: End | null = null;
    // END again first: if it was the frame lost (or damaged), the receiver still waits for it
    const ask = () => {
      askedAt = Date.now();
      if (endSent) void ch.sendJson(MsgType.END, endSent).catch(() => {});
      void ch.sendJson(MsgType.STATUS, { session: hello.session }).catch(() => {});
    };
    const listener = (async () => {
      for (;;) {
        let f;
        try {
          f = await ch.recv(1000, "the receiver");
        } catch (e) {
          if (e instanceof TbError && e.code === "TIMEOUT") {
            const now = Date.now();
            if (finishedSending && canAsk && now - Math.max(heard, askedAt) >= STATUS_EVERY_MS) ask();
            const limit = finishedSending && canAsk ? Math.max(opts.idleMs, MIN_END_WAIT_MS) : opts.idleMs;
            if (now - heard < limit || (!finishedSending && (writingSince === null || now - writingSince < opts.idleMs))) continue;
            const silent = Math.round(opts.idleMs / 1000);
            peerFailure ??= finishedSending
              ? new TbError("TIMEOUT", `the receiver did not confirm the backup within ${silent} s of the end`, UNCONFIRMED)
              : new TbError("TIMEOUT", `the receiver has taken no data and said nothing for ${silent} s`, "the backup is incomplete; check the receiver (its disk, its messages), then push again");
            break;
          }
          // everything was sent: the receiver may well have stored it, and only its answer was lost
          if (finishedSending && e instanceof TbError && e.code === "CORRUPT") {
            // the first damaged frame after END is likely the DONE itself; later ones are answers
            if (canAsk && (askedAt === 0 || ++damagedAnswers < MAX_DAMAGED_ANSWERS)) {
              ask();
              continue;
            }
            peerFailure ??= new TbError("CORRUPT", "the receiver's answer to the end of the backup arrived damaged", UNCONFIRMED);
          }
          // (all was handed to the transport, not necessarily taken in by the receiver)
          if (finishedSending && e instanceof TbError && e.code === "CLOSED") peerFailure ??= new TbError("CLOSED", "the connection closed after all data was sent, before the receiver confirmed the backup", UNCONFIRMED);
          peerFailure ??= e instanceof TbError ? e : new TbError("CLOSED", String(e), "run again");
          break;
        }
        // PROGRESS (durable so far, or a keepalive) only keeps the silence timer fresh
        if (f.type !== MsgType.PROGRESS || !finishedSending) heard = Date.now();
        if (f.type === MsgType.DONE) {
          const d = decodeJson<Done>(f.payload);
          // on a shared device, a DONE meant for an earlier push may still be in flight
          // (receivers that know STATUS always name the session)
          if ((canAsk || typeof d?.session === "string") && d?.session !== hello.session) continue;
          done = d;
          break;
        } else if (f.type === MsgType.ERROR) {
          const session = decodeJson<{ session?: unknown }>(f.payload)?.session;
          if (typeof session === "string" && session !== hello.session) continue; // an earlier session's
          const err = peerError(f.payload);
          // the answer to our STATUS: this receiver (restarted?) does not know the session
          peerFailure = finishedSending && err.code === "NOT_FOUND" ? new TbError("CLOSED", "the receiver has no record of this push (was it restarted?)", UNCONFIRMED) : err;
          break;
        }
      }
      receiverDone.fire();
    })();

    // Every write waits on the receiver: it is watched like the data (see the listener).
    const send = async (sending: Promise<void>): Promise<boolean> => {
      writingSince = Date.now();
      try {
        const written = await receiverDone.race(sending);
        if (!written && peerFailure) throw peerFailure;
        return written;
      } finally {
        writingSince = null;
      }
    };
    let sha = new Bun.CryptoHasher("sha256");
    // An interrupted push of this disk left a durable prefix: continue after it
    // if our own chunks there hash to the same chunk list.
    let start = 0;
    if (ack.resume) {
      const offer = ack.resume;
      const keepalive = async (done: number) => {
        if (peerFailure) throw peerFailure; // the receiver gave up: no need to read the rest
        await send(ch.sendJson(MsgType.PROGRESS, { session: hello.session, checking: done, of: offer.chunks }));
      };
      if (opts.resume !== false && (await prefixMatches(src, offer.chunks, offer.digest, opts.chunkSize, sha, keepalive))) start = offer.chunks;
      else sha = new Bun.CryptoHasher("sha256");
      await send(ch.sendJson(MsgType.RESUME, { session: hello.session, from: start }));
      opts.reporter.info(start ? `resuming the interrupted backup ${offer.id} at chunk ${start}${opts.label !== null ? `, now labelled ${JSON.stringify(opts.label)}` : ""}` : `not resuming ${offer.id} (${opts.resume === false ? "--no-resume" : "this disk no longer matches it"}): starting a new backup`);
    }
    const total = src.size ?? 0;
    const isHole = (await src.holes?.()) ?? null;
    const queue: Promise<Uint8Array>[] = [];
    const maxInFlight = pool.size * 3;
    const spare: ArrayBuffer[] = [];
    // DATA frames are built by the workers in these and come back once written
    const frames = new BufferPool(HEADER_SIZE + CHUNK_HEADER_SIZE + compressBound(opts.chunkSize) + TRAILER_SIZE, maxInFlight + 2);
    const zeroBuf = new Uint8Array(opts.chunkSize);
    let zeroChunks = 0;
    let stored = 0;
    let offset = start * opts.chunkSize;
    let chunks = start;

    const sendHead = async () => {
      const frame = await queue.shift()!;
      if (peerFailure) throw peerFailure;
      // A receiver that failed may stop reading without closing: do not stay
      // blocked in the write once it has said why.
      if (await send(ch.sendFrame(frame))) frames.give(frame.buffer);
    };

    for (let i = start; src.size === null || offset < src.size; i++) {
      if (peerFailure) throw peerFailure;
      // A hole of a sparse image is zeros: no need to read it.
      const holeLength = isHole && src.size !== null ? Math.min(opts.chunkSize, src.size - offset) : 0;
      let raw: Uint8Array | null = null;
      let rawLength: number;
      if (holeLength > 0 && isHole!(offset, holeLength)) {
        rawLength = holeLength;
        sha.update(zeroBuf.subarray(0, rawLength));
      } else {
        raw = new Uint8Array(spare.pop() ?? new ArrayBuffer(opts.chunkSize), 0, opts.chunkSize);
        rawLength = await src.read(raw, offset);
        if (rawLength === 0) {
          spare.push(raw.buffer as ArrayBuffer);
          break;
        }
        sha.update(raw.subarray(0, rawLength));
        if (Buffer.from(raw.buffer, 0, rawLength).equals(zeroBuf.subarray(0, rawLength))) {
          spare.push(raw.buffer as ArrayBuffer);
          raw = null;
        }
      }
      chunks++;
      if (!raw) {
        zeroChunks++;
        queue.push(Promise.resolve(encodeFrame(MsgType.ZERO, encodeZero({ index: i, rawLength, offset, checksum: zeroChecksum(rawLength) }))));
      } else {
        const buf = raw.buffer as ArrayBuffer;
        const out = frames.takeBuffer();
        const job = pool.run({ op: "compress", index: i, offset, rawLength, raw: buf, out }, [buf, out]).then((r) => {
          if (r.op === "failed") throw new TbError("INTERNAL", r.error, "report this bug");
          if (r.op !== "compressed") throw new TbError("INTERNAL", `unexpected worker reply ${r.op}`, "report this bug");
          spare.push(r.raw);
          stored += r.compressedSize;
          return new Uint8Array(r.frame, 0, r.frameLength);
        });
        // awaited in order by sendHead; once one fails, the ones behind it are never
        // awaited, and must not end the process as unhandled rejections
        job.catch(() => {});
        queue.push(job);
      }
      offset += rawLength;
      while (queue.length >= maxInFlight) await sendHead();
      if ((i & 15) === 0) opts.reporter.progress({ phase: "push", bytes: offset, total, stored, ...progressExtra(src) });
      if (rawLength < opts.chunkSize) break;
    }
    while (queue.length > 0) await sendHead();
    const end: End = { chunks, bytes: offset, sha256: sha.digest("hex"), ...(src.summary?.() ?? {}) };
    await send(ch.sendJson(MsgType.END, end)); // END too can wait on a receiver that froze
    endSent = end;
    finishedSending = true;
    heard = Date.now();
    opts.reporter.progress({ phase: "push", bytes: offset, total, stored, ...progressExtra(src) });
    opts.reporter.info("all data sent; waiting for the receiver to confirm it is stored");
    await listener;
    if (peerFailure) throw peerFailure;
    const d = done as Done | null;
    if (!d) throw new TbError("CLOSED", "the receiver never confirmed the backup", "the backup is incomplete; run the command again");
    if (d.sha256 !== end.sha256)
      throw new TbError("CORRUPT", `the receiver stored SHA-256 ${d.sha256}, but the source has ${end.sha256}`, "the backup is incomplete; check the cable and run again");
    return {
      id: d.id,
      path: d.path,
      source: opts.source,
      bytes: offset,
      storedBytes: d.storedBytes,
      sha256: end.sha256,
      chunks,
      zeroChunks,
      resumedFrom: start,
      seconds: (Date.now() - started) / 1000,
      ...(src.summary?.() ?? {}),
    };
  } catch (e) {
    // A write that failed because the receiver hung up usually means it said
    // why first (disk full, corrupt data): give its message a moment to arrive.
    if (e instanceof TbError && e.code === "CLOSED" && !peerFailure) await receiverDone.race(Bun.sleep(2000));
    if (peerFailure && (peerFailure as TbError).code !== "CLOSED" && peerFailure !== e) throw peerFailure;
    if (!(e instanceof TbError && (e.code === "CLOSED" || e.code === "PEER" || e.code === "NO_SPACE"))) {
      const msg = e instanceof TbError ? e.message : String(e);
      const code = e instanceof TbError ? e.code : "INTERNAL";
      await Promise.race([ch.sendJson(MsgType.ERROR, { code, message: `sender stopped: ${msg}` }).catch(() => {}), Bun.sleep(500)]);
    }
    throw e;
  } finally {
    pool.terminate();
    src.close();
    await ch.close();
  }
}
