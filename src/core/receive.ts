// receive: the keeper of backups. Accepts sessions on a listener and stores
// each pushed image as DIR/<host>/<disk>/<timestamp>; every chunk is
// decompressed and checked against the sender's checksum and the whole-image
// SHA-256 before the sender is told the backup is done.
import * as os from "node:os";
import * as path from "node:path";
import { CHUNK_HEADER_SIZE, MsgType, decodeJson, decodeMessage, layoutFrom, mountedRwOf, sessionOf, typeName, type Done, type Hello, type Resend } from "../protocol/messages.ts";
import { decodeChunkRecord, decodeSameRecord } from "../protocol/chunk-record.ts";
import { baseDamaged, findBase, sendBaseDigests, type Base } from "./incremental.ts";
import { TRAILER_SIZE, type Frame } from "../protocol/frame.ts";
import { compressBound } from "../util/buffer-pool.ts";
import { SharedSlots, SlotPayloads } from "../util/shared-slots.ts";
import type { Transport } from "../transport/index.ts";
import { MANIFEST_FORMAT, chunkDigestOf, idPart, openRepository, prefixDigest, type BackupWriter, type FrameWrite, type Manifest, maxEntrySize, type NewManifest, type Repository } from "../store/repository.ts";
import { awaitResume, checkPrefix, findResumable, markNotResumable } from "./resume.ts";
import { Channel, CorruptFrame } from "./channel.ts";
import { DamageBudget, RESEND_REPEAT_MS } from "./resend.ts";
import { WorkerPool, jobBytes, workerCount, type WorkerReply } from "./chunk-jobs.ts";
import { OrderedPipeline } from "./pipeline.ts";
import { RootBuilder, ROOT_ALGORITHMS, isDigest, zeroDigest, type DigestAlgorithm } from "../store/root.ts";
import { TbError, asTbError, errnoCode, errnoText, isErrno, outcome } from "./errors.ts";
import { checkPeer, newHelloAck, hasCap } from "./handshake.ts";
import { startKeepalive } from "./keepalive.ts";
import type { Reporter } from "./report.ts";
import { BLAKE3_CAP, INCREMENTAL_CAP, PROTOCOL_VERSION, RESEND_CAP, ROOT_CAP, TOOL } from "./version.ts";
import { zeroChecksum, zeroFrame, zeroFrameDigest } from "./zero.ts";
import { MAX_CHUNK_SIZE } from "./limits.ts";
import { serveRequest, type ServeOptions } from "./serve-restore.ts";
import { ReceiveSessionState } from "./receive-state.ts";
import type { SessionEnd, SessionResult } from "./session.ts";

export type { SessionResult } from "./session.ts";
import { requireAddons } from "../util/zstd.ts";
import { Slots } from "../util/slots.ts";

export interface ReceiveOptions {
  out: string;
  transport: Transport;
  once: boolean;
  allowRestore: boolean;
  /** how long a session may stay silent before it is abandoned */
  idleMs: number;
  reporter: Reporter;
  /** called when a session starts (its HELLO checked out) */
  onSessionStart?: (role: Hello["role"]) => void;
  /** called after each session (for --json and logs) */
  onSession?: (r: SessionResult) => void;
  /** sessions served at once on a socket listener (default: defaultMaxSessions()) */
  maxSessions?: number;
  /** set to stop the server between sessions */
  signal?: AbortSignal;
}


/** What a push session came to, kept to answer the sender's STATUS: its DONE, or why it failed. */
type Outcome = { done: Done } | { error: { code: string; message: string } };
/** how many sessions' outcomes are kept */
const OUTCOMES_KEPT = 16;
/** With --once, how long to stay for the sender's STATUS after a push session, unless it hangs up first. */
const LINGER_MS = 15_000;


const PROGRESS_EVERY_CHUNKS = 256;
const MAX_CHECKS_IN_FLIGHT = 16;
/** a PROGRESS with only the session: "still working", during a push session */
const KEEPALIVE_MS = 5000;
/** errno codes that mean the receiver's disk is full: both sides then report NO_SPACE */
const DISK_FULL = ["ENOSPC", "EDQUOT"] as const;

/** Checks DIR is a writable directory (creating it if needed) before serving anyone. */
export function prepareStore(out: string): boolean {
  try {
    return openRepository(out).prepare();
  } catch (e) {
    throw new TbError("DEST", `cannot write to ${out}: ${errnoText(e)}`, "choose a writable directory for --out (and check free space and permissions)");
  }
}

/** Sessions served at once unless --max-sessions says otherwise: each holds up to about 70 MiB of buffers and its own worker threads. */
export function defaultMaxSessions(): number {
  return Math.min(8, Math.max(2, Math.floor(os.totalmem() / (1024 * 1024 * 1024))));
}

export async function serve(opts: ReceiveOptions): Promise<SessionResult[]> {
  requireAddons(); // before any session: a clear line if this system cannot run it
  // a mistyped --out would put backups somewhere unexpected: say when it is new
  if (prepareStore(opts.out)) opts.reporter.info(`created ${path.resolve(opts.out)} (it did not exist)`);
  const listener = await opts.transport.listen();
  const results: SessionResult[] = [];
  const outcomes = new Map<string, Outcome>();
  const stop = () => void listener.close();
  opts.signal?.addEventListener("abort", stop);
  try {
    opts.reporter.info(`receiving on ${listener.description}, storing under ${path.resolve(opts.out)}`);
    // Connections on a socket are served at once, up to maxSessions (two
    // machines on two cables need not wait for each other); a device carries
    // one connection at a time (a second reader would steal its frames).
    const max = opts.once ? 1 : Math.max(1, opts.maxSessions ?? defaultMaxSessions());
    const active = new Set<Promise<void>>();
    // Thunderbolt peers' devices (conn.concurrent) stay open from one session
    // to the next: they are served side by side and counted by session.
    const peers = new Set<Promise<void>>();
    const sessions = new Slots(max);
    while (!opts.signal?.aborted) {
      while (active.size >= max) await Promise.race(active);
      const conn = await listener.accept();
      if (!conn) break;
      const ch = new Channel(conn);
      const held = conn.concurrent && !opts.once ? peers : active;
      const job: Promise<void> = serveConnection(ch, opts, outcomes, (r) => {
        results.push(r);
        opts.onSession?.(r);
      }, conn.concurrent ? sessions : null)
        .catch((e: unknown) => opts.reporter.info(`a connection failed: ${asTbError(e).oneLine()}`))
        .finally(async () => {
          await ch.close();
          held.delete(job);
        });
      held.add(job);
      if ((conn.lossy && held !== peers) || opts.once) await job;
      if (opts.once && results.length > 0) break;
    }
    await Promise.all([...active, ...peers]);
  } finally {
    opts.signal?.removeEventListener("abort", stop);
    await listener.close();
  }
  return results;
}

/**
 * Answers a sender's STATUS: the DONE of its session again (the first was lost
 * or damaged on the way), or the ERROR it failed with.
 */
async function answerStatus(ch: Channel, f: Frame, outcomes: Map<string, Outcome>): Promise<void> {
  const session = sessionOf(f.payload);
  if (typeof session !== "string") return;
  const o = outcomes.get(session);
  const answer = !o
    ? ch.sendJson(MsgType.ERROR, { session, code: "NOT_FOUND", message: "the receiver has no record of this session (was it restarted?)" })
    : "done" in o
      ? ch.sendJson(MsgType.DONE, o.done)
      : ch.sendJson(MsgType.ERROR, { session, code: o.error.code, message: `receiver: ${o.error.message}` });
  await answer.catch(() => {});
}

/**
 * With --once: answers STATUS until the sender hangs up (it has its answer) or
 * LINGER_MS pass. A cable that shows no hang-up (its CLOSE lost) takes them all.
 */
async function linger(ch: Channel, outcomes: Map<string, Outcome>, reporter: Reporter): Promise<void> {
  const until = Date.now() + LINGER_MS;
  const tell = setTimeout(() => reporter.info(`waiting up to ${Math.round((until - Date.now()) / 1000)} s for the sender to hang up (it may ask again for its confirmation)`), 2000);
  try {
    while (Date.now() < until) {
      let f: Frame;
      try {
        f = await ch.recv(until - Date.now(), "the sender");
      } catch (e) {
        if (e instanceof TbError && e.code === "CORRUPT") continue;
        return;
      }
      if (f.type === MsgType.STATUS) await Promise.race([answerStatus(ch, f, outcomes), Bun.sleep(Math.max(0, until - Date.now()))]);
    }
  } finally {
    clearTimeout(tell);
  }
}

/**
 * Serves sessions on one connection until it ends (a device carries many in
 * turn). `sessions`: a slot per session (one Thunderbolt peer of several).
 */
async function serveConnection(ch: Channel, opts: ReceiveOptions, outcomes: Map<string, Outcome>, done: (r: SessionResult) => void, sessions: Slots | null): Promise<void> {
  let carried: Frame | null = null;
  while (!opts.signal?.aborted) {
    let f: Frame;
    if (carried) {
      f = carried;
      carried = null;
    } else {
      try {
        f = await ch.recv(ch.conn.lossy ? 24 * 3600_000 : opts.idleMs, "a HELLO");
      } catch (e) {
        if (e instanceof TbError && e.code === "CORRUPT" && ch.conn.lossy) continue;
        return;
      }
    }
    if (f.type === MsgType.STATUS) {
      await answerStatus(ch, f, outcomes);
      continue;
    }
    if (f.type !== MsgType.HELLO) continue; // left over from an earlier session
    const hello = decodeJson<Hello>(f.payload); // checked field by field by checkPeer (its messages name what is missing)
    const bad = checkPeer(hello);
    if (bad) {
      await ch.sendJson(MsgType.ERROR, { session: hello?.session, code: "PROTOCOL", message: `receiver ${TOOL} speaks protocol ${PROTOCOL_VERSION}: ${bad.message}` }).catch(() => {});
      opts.reporter.info(`refused a session: ${bad.message}`);
      done({ ok: false, role: "push", error: { code: bad.code, message: bad.message } });
      if (opts.once) return;
      continue;
    }
    let h = hello!;
    let r: SessionEnd | null;
    try {
      let waited = false;
      const session = async () => {
        // one that waited for its slot starts from what its sender says now (it may have given up)
        const now = waited ? await currentHello(ch, h, outcomes) : h;
        if (!now) return null;
        h = now;
        opts.onSessionStart?.(h.role);
        return h.role === "push" ? receiveImage(ch, h, opts) : serveRequest(ch, h, opts as ServeOptions);
      };
      r = sessions
        ? await sessions.run(session, () => {
            waited = true;
            opts.reporter.info(`${h.role} from ${h.host?.hostname ?? "?"} on ${ch.conn.description} waits: ${sessions.size} sessions are in progress (--max-sessions)`);
          })
        : await session();
    } catch (e) {
      // A session that broke outside its own error handling (the sender gone
      // before our answer, a damaged partial) ends this connection, never the receiver.
      const err = asTbError(e);
      opts.reporter.info(`session from ${h.host?.hostname ?? "?"} failed: ${err.oneLine()}`);
      done({ ok: false, role: h.role, host: h.host?.hostname, error: { code: err.code, message: err.message } });
      return;
    }
    if (!r) {
      opts.reporter.info(`${h.role} from ${h.host?.hostname ?? "?"} on ${ch.conn.description} is not started: its sender gave up while it waited`);
      if (ch.isEnded) return;
      continue;
    }
    carried = r.carried;
    done(r.result);
    if (h.role === "push") {
      outcomes.set(h.session, r.done ? { done: r.done } : { error: r.result.error ?? { code: "INTERNAL", message: "unknown failure" } });
      if (outcomes.size > OUTCOMES_KEPT) outcomes.delete(outcomes.keys().next().value!);
    }
    if (opts.once) {
      // its DONE may not have got through: stay for the sender's STATUS a while
      if (h.role === "push" && !carried) await linger(ch, outcomes, opts.reporter);
      return;
    }
    if (!ch.conn.lossy && ch.isEnded) return;
  }
}


/**
 * After a wait for a session slot: the frames that came meanwhile, without
 * waiting for more. The HELLO to start from (a later one replaces `h`), or
 * null when its sender gave up: the connection ended, or its ERROR came.
 */
async function currentHello(ch: Channel, h: Hello, outcomes: Map<string, Outcome>): Promise<Hello | null> {
  let cur: Hello | null = h;
  for (;;) {
    let f: Frame;
    try {
      f = await ch.recv(0, "a HELLO");
    } catch (e) {
      if (e instanceof TbError && e.code === "CORRUPT") continue;
      return ch.isEnded ? null : cur; // TIMEOUT: nothing more has come
    }
    if (f.type === MsgType.STATUS) await answerStatus(ch, f, outcomes);
    else if (f.type === MsgType.ERROR) {
      const s = sessionOf(f.payload);
      if (cur && (typeof s !== "string" || s === cur.session)) cur = null;
    } else if (f.type === MsgType.HELLO) {
      const later = decodeJson<Hello>(f.payload);
      if (later && !checkPeer(later)) cur = later;
    }
  }
}

/** Whether the peer's HELLO lists the integrity-root capability. */
function hasRootCap(hello: Hello): boolean {
  return hasCap(hello, ROOT_CAP);
}

async function receiveImage(ch: Channel, hello: Hello, opts: ReceiveOptions): Promise<SessionEnd> {
  const started = new Date();
  const disk = hello.disk;
  const chunkSize = hello.chunkSize ?? 0;
  // A file-level backup is a tar stream whose length is known only at END.
  const files = hello.content === "files";
  const fail = async (code: TbError["code"], message: string) => {
    await ch.sendJson(MsgType.ERROR, { session: hello.session, code, message }).catch(() => {});
    opts.reporter.info(`session from ${hello.host?.hostname ?? "?"} refused: ${message}`);
    return { result: { ok: false, role: "push" as const, host: hello.host?.hostname, error: { code, message } }, carried: null };
  };
  if (!disk || typeof disk.size !== "number" || disk.size < 0 || !Number.isSafeInteger(disk.size) || (hello.content !== undefined && hello.content !== "image" && !files))
    return fail("PROTOCOL", "HELLO without a valid disk size");
  if (!Number.isInteger(chunkSize) || chunkSize < 4096 || chunkSize > MAX_CHUNK_SIZE || chunkSize % 4096 !== 0)
    return fail("PROTOCOL", `chunk size ${chunkSize} is not supported`);

  // Every chunk is checked and hashed (its SHA-256, for the integrity root) on
  // any worker. The classic whole-image SHA-256 is one running hash, fed in
  // order: when the sender asks for it, or predates the root, one worker does it all.
  const wholeSha = !hasRootCap(hello) || hello.sha256 === true;
  // one session per disk at a time: a second push of it would resume or write the same partial
  // (the store's lock on it; two machines booted from one stick share a hostname and disk names, not machine-id and DMI UUID)
  const repo = openRepository(opts.out);
  const lock = repo.lock(hello.host?.hostname ?? "unknown", disk.name ?? "disk", `${hello.host?.machineId ?? ""}/${hello.host?.productUuid ?? ""}`);
  if (!lock) return fail("BUSY", `another push of ${repo.diskKey(hello.host?.hostname ?? "unknown", disk.name ?? "disk")} is in progress on this receiver`);
  const pool = new WorkerPool(wholeSha ? 1 : workerCount());
  // chunk payloads arrive in these shared slots, where the workers check and
  // write them; a slot comes back once its chunk is written
  // (large enough for a DATA payload, and for a base's stored entry, padding included)
  const slots = new SharedSlots(Math.max(CHUNK_HEADER_SIZE + compressBound(chunkSize) + TRAILER_SIZE, maxEntrySize(chunkSize)));
  pool.share(slots);
  ch.usePool(new SlotPayloads(slots));
  // While our work moves on (a frame taken in, a stored chunk re-checked), the
  // sender hears from us every KEEPALIVE_MS; when it stops moving (host hung,
  // disk stalled) so do these, and a sender blocked on us gives up after --idle.
  const activity = { n: 0 };
  const keepalive = startKeepalive(() => ch.sendJson(MsgType.PROGRESS, { session: hello.session }).catch(() => {}), KEEPALIVE_MS, { moved: () => activity.n });
  try {
    return await receiveSession(ch, hello, opts, { repo, pool, slots, wholeSha, started, disk, chunkSize, files, fail, activity });
  } finally {
    void keepalive.stop();
    lock.release();
    pool.terminate();
    ch.usePool(null);
  }
}

interface SessionSetup {
  repo: Repository;
  pool: WorkerPool;
  /** the pool's shared slots, which the channel builds chunk payloads in */
  slots: SharedSlots;
  /** also compute the whole-image SHA-256 (a pool of one worker) */
  wholeSha: boolean;
  started: Date;
  disk: NonNullable<Hello["disk"]>;
  chunkSize: number;
  files: boolean;
  fail: (code: TbError["code"], message: string) => Promise<{ result: SessionResult; carried: null }>;
  /** counts steps of work done, for the keepalive */
  activity: { n: number };
}

/** One push session, after its HELLO checked out: new or resumed, until DONE or failure. */
async function receiveSession(ch: Channel, hello: Hello, opts: ReceiveOptions, { repo, pool, slots, wholeSha, started, disk, chunkSize, files, fail, activity }: SessionSetup): Promise<SessionEnd> {
  // where the session is (receive-state.ts): every step below is a checked move
  const session = new ReceiveSessionState();
  const root = new RootBuilder();
  // progress lines name the sender: a receiver may serve several at once
  const hostLabel = idPart(hello.host?.hostname ?? "unknown") + (ch.conn.peer ? ` via ${ch.conn.peer}` : "");
  let writer0: BackupWriter | null = null;
  let resumedFrom = 0;
  let prefixZero = 0;

  // The root's chunk digest (docs/FORMAT.md §4a): BLAKE3 when the sender
  // computes it; a backup continued (resumed) or made against a base keeps
  // the digests of the one it continues, and one the sender cannot compute
  // is neither resumed nor a base. HELLO_ACK says which it is (a resume
  // offer, the partial's: declined, the new backup's is the fresh choice).
  const senderBlake3 = hasRootCap(hello) && hasCap(hello, BLAKE3_CAP);
  const fresh: DigestAlgorithm = senderBlake3 ? "blake3" : "sha256";
  const usable = (m: Manifest) => {
    const d = chunkDigestOf(m);
    return d === "sha256" || (d === "blake3" && senderBlake3);
  };
  // An interrupted push of this same disk can continue where it became durable.
  let candidate = files ? null : findResumable(repo, hello);
  if (candidate && !usable(candidate.manifest)) candidate = null;
  let lines = "";
  if (candidate) {
    try {
      lines = repo.openPartial(candidate.backup).chunkListPrefix(candidate.manifest.durable!.chunkListBytes);
    } catch (e) {
      markNotResumable(repo, candidate, `its chunk list cannot be read back: ${(e as Error).message}`);
      candidate = null;
    }
  }
  let digest: DigestAlgorithm = candidate ? chunkDigestOf(candidate.manifest)! : fresh;
  /** what HELLO_ACK says of it: only to a sender that lists BLAKE3 */
  const digestField = () => (senderBlake3 ? { digest } : {});
  if (candidate) {
    session.to("offering");
    const d = candidate.manifest.durable!;
    const offer = { ...newHelloAck(hello, candidate.id), resume: { id: candidate.id, chunks: d.chunks, digest: prefixDigest(lines) }, ...digestField() };
    await ch.sendJson(MsgType.HELLO_ACK, offer);
    const from = await awaitResume(ch, hello, opts.idleMs, () => ch.sendJson(MsgType.HELLO_ACK, offer));
    if (from instanceof TbError) {
      session.to("refused");
      // the partial stays as it was: a later push may still continue it
      const timedOut = from.code === "TIMEOUT";
      const message = timedOut ? `the sender did not answer the resume offer within ${Math.round(opts.idleMs / 1000)} s` : "the sender left before answering the resume offer";
      if (timedOut) await ch.sendJson(MsgType.ERROR, { session: hello.session, code: "TIMEOUT", message: `${message}; push again` }).catch(() => {});
      opts.reporter.info(`session ${hello.session.slice(0, 8)} from ${hello.host?.hostname}: ${message}; ${candidate.id} can still be resumed`);
      return { result: { ok: false, role: "push", host: hello.host?.hostname, error: { code: timedOut ? "TIMEOUT" : "CLOSED", message } }, carried: null };
    }
    if (from === d.chunks) {
      session.to("checking");
      try {
        const prefix = await checkPrefix(repo.openPartial(candidate.backup), candidate.manifest, lines, pool, wholeSha, digest, () => activity.n++);
        writer0 = repo.resume(candidate.backup, candidate.manifest, prefix.entries);
        prefix.digests.forEach((digest, i) => {
          root.add(digest);
          writer0!.recordDigest(digest, prefix.frameDigests[i]!);
        });
        prefixZero = prefix.zero;
        const m = candidate.manifest;
        m.session = hello.session;
        m.resumed = [...(m.resumed ?? []), { at: started.toISOString(), fromChunk: from }];
        // a new --name is taken; read-write mounts seen by either push are kept
        if (typeof hello.label === "string") m.label = hello.label;
        const rw = [...(m.mountedRw ?? []), ...(mountedRwOf(hello.mountedRw) ?? [])];
        const rwKept = mountedRwOf(rw.filter((x, i) => rw.findIndex((y) => y.device === x.device && y.mountpoint === x.mountpoint) === i));
        if (rwKept) m.mountedRw = rwKept;
        delete m.reason;
        resumedFrom = from;
        opts.reporter.info(`session ${hello.session.slice(0, 8)} from ${hello.host?.hostname}: resuming ${candidate.id} at chunk ${from} of ${Math.ceil(disk.size / chunkSize)}`);
      } catch (e) {
        markNotResumable(repo, candidate, `its stored prefix failed a check: ${(e as Error).message}`);
        session.to("refused");
        return fail("VERIFY", `the interrupted backup ${candidate.id} cannot be continued (${(e as Error).message}); push again to start a new one`);
      }
    } else {
      markNotResumable(repo, candidate, "the sender's disk no longer matches it (a new backup was started)");
      digest = fresh; // (as the sender takes it: docs/PROTOCOL.md §5.2)
      session.to("opening");
    }
  }
  // Incremental push (docs/PROTOCOL.md §8.7): a complete backup of this disk to copy unchanged chunks from.
  const base: Base | null = !candidate && !files && hasCap(hello, INCREMENTAL_CAP) ? findBase(repo, hello, senderBlake3) : null;
  if (base) digest = base.digestAlgorithm;
  if (!writer0) {
    let slot;
    try {
      slot = repo.create(hello.host?.hostname ?? "unknown", disk.name ?? "disk", started);
    } catch (e) {
      session.to("refused");
      return fail(isErrno(e, ...DISK_FULL) ? "NO_SPACE" : "DEST", `receiver cannot create a backup directory under ${opts.out}: ${errnoText(e)}`);
    }
    // (the store sets format and, on a file system that can share blocks, align: docs/FORMAT.md §3.5)
    const m: NewManifest = {
      format: MANIFEST_FORMAT,
      kind: files ? "files" : "image",
      status: "partial",
      label: typeof hello.label === "string" ? hello.label : null,
      host: hello.host,
      disk,
      tool: { name: "tbbackup", version: String(hello.tool ?? "").replace(/^tbbackup\//, ""), protocol: hello.proto },
      receiver: { hostname: os.hostname(), tool: TOOL },
      session: hello.session,
      chunkSize,
      compression: { algorithm: "zstd", level: hello.level ?? 1, format: "zstd-seekable" },
      chunks: { count: 0, zero: 0, checksum: "xxh3-64" },
      size: disk.size,
      storedBytes: 0,
      sha256: null,
      root: null,
      digests: { algorithm: ROOT_ALGORITHMS[digest] },
      timings: { started: started.toISOString(), finished: null, seconds: null },
    };
    const layout = files ? undefined : layoutFrom(hello.layout);
    if (layout) m.layout = layout;
    const rw = mountedRwOf(hello.mountedRw);
    if (rw) m.mountedRw = rw;
    try {
      writer0 = await slot.start(m);
    } catch (e) {
      session.to("refused");
      return fail(isErrno(e, ...DISK_FULL) ? "NO_SPACE" : "DEST", `receiver cannot write under ${opts.out}: ${errnoText(e)}`);
    }
  }
  const writer = writer0;
  const manifest = writer.manifest;
  session.to("receiving");
  const expectedChunks = files ? Number.MAX_SAFE_INTEGER : Math.ceil(disk.size / chunkSize);
  let sawShort = false;
  let next = resumedFrom;
  let zero = prefixZero;
  let carried: Frame | null = null;
  let lastProgress = resumedFrom;
  let heardAt = Date.now();
  /** a worker stuck on a stalled disk may still clone from the base: its files then stay open */
  let keepBase = false;
  const ack = { ...newHelloAck(hello, writer.id), ...(base ? { base: { id: base.id, chunks: base.chunks } } : {}), ...digestField() };
  let same = 0;
  /** of `same`, the frames known by their frame digest (not decompressed again) */
  let knownFrames = 0;
  let sharedBytes = 0;
  /** of sharedBytes, those cloned from the base's file (blocks shared on disk, docs/FORMAT.md §3.5) */
  let clonedBytes = 0;
  if (!resumedFrom) {
    opts.reporter.info(`session ${hello.session.slice(0, 8)} from ${hello.host?.hostname}${ch.conn.peer ? ` via ${ch.conn.peer}` : ""} (${hello.tool}): ${disk.path}, ${disk.size} bytes -> ${writer.id}${base ? ` (incremental against ${base.id})` : ""}`);
  }

  // Checked chunks come back in order: their digests go into the root and digests.txt.
  // With the resend capability (docs/PROTOCOL.md §8.2a), a damaged chunk is
  // asked for again: `retry` holds that state. A chunk that fails its check
  // is noted in `retry.failed`, and it and the chunks after it are taken back.
  const retry = resendState(hello, files || wholeSha);
  // `fromBase`: a frame copied from the base for a SAME record: the SHA-256 it must decompress to, and its size
  // `held`: the slot the worker read the frame from, free again once it answered
  const checks = new OrderedPipeline<{ index: number; rawLength: number; reply: WorkerReply; fromBase?: { digest: string; bytes: number }; held?: Uint8Array }>(MAX_CHECKS_IN_FLIGHT, ({ index, rawLength, reply: r, fromBase, held }) => {
    if (r.op === "failed") throw new TbError("INTERNAL", r.error, "report this bug");
    if (r.op === "checked") ch.release(held ?? r.buf);
    if (retry && index >= retry.dropFrom) return; // taken back: it comes again
    // a stored frame of the base that does not check out is never copied into a new backup
    if (fromBase !== undefined && r.op === "checked" && (!r.ok || r.digest !== fromBase.digest)) throw baseDamaged(base!.id, index, r.ok ? "it decompresses to other data than its digest says" : r.error!);
    if (r.op === "checked" && !r.ok) {
      const why = `chunk ${index} (offset ${index * chunkSize}) failed its check: ${r.error}`;
      if (!retry) throw new TbError("CORRUPT", why, "the data was damaged in transit; check the cable and push again");
      retry.failed = { index, why: `it failed its check: ${r.error}` };
      retry.dropFrom = index;
      return;
    }
    if ((r.op === "checked" || r.op === "zeroed") && r.writeError) throw storeFailed("write", r.writeError);
    const d = r.op === "checked" ? r.digest! : zeroDigest(rawLength, digest);
    root.add(d);
    writer.recordDigest(d, r.op === "checked" ? r.frameDigest! : zeroFrameDigest(rawLength));
    if (r.op === "checked" && r.known) knownFrames++;
    if (r.op === "zeroed") zero++;
    // counted once accepted: a chunk taken back for a resend is counted when it comes again
    if (fromBase) {
      same++;
      sharedBytes += fromBase.bytes;
      if (r.op === "checked" && r.cloned) clonedBytes += fromBase.bytes;
    }
  });
  /**
   * Asks the sender for chunk `from` again, and for every chunk after it
   * (within the damage budget, else the session fails): a chunk already
   * recorded from there on is taken back first.
   */
  const askAgain = async (from: number, why: string) => {
    const r = retry!;
    if (r.failed && r.failed.index < from) ({ index: from, why } = r.failed);
    const over = r.budget.note(from, why);
    if (over) throw over;
    // (from is never past next: while resending, next is the chunk asked for, until it comes)
    if (from < next) {
      r.dropFrom = Math.min(r.dropFrom, from);
      await checks.drain(); // the workers finish (their results are dropped) before the files are cut back
      await syncing;
      writer.truncateTo(from);
      next = from;
    }
    r.dropFrom = Number.MAX_SAFE_INTEGER;
    r.failed = null;
    session.to("resending");
    r.request = { session: hello.session, from, seq: ++r.count };
    r.sentAt = Date.now();
    opts.reporter.info(`session ${hello.session.slice(0, 8)}: chunk ${from} arrived damaged (${why}); asked the sender for it again`);
    await ch.sendJson(MsgType.RESEND, r.request);
  };
  /** Repeats the last request while its chunk has not come (the request may have been lost). */
  const askedLongAgo = () => {
    if (!retry?.request || !session.is("resending") || Date.now() - retry.sentAt < RESEND_REPEAT_MS) return;
    retry.sentAt = Date.now();
    void ch.sendJson(MsgType.RESEND, retry.request).catch(() => {});
  };
  const track = (index: number, rawLength: number, p: Promise<WorkerReply>, fromBase?: { digest: string; bytes: number }, held?: Uint8Array) => checks.add(p.then((reply) => ({ index, rawLength, reply, fromBase, held })));
  /**
   * Checks (and then writes) the zstd frame `z`: where it lies in a slot, the
   * worker reads it there; else its buffer goes over and back. A base's frame
   * with a frame digest may be known by it (docs/FORMAT.md §4b).
   */
  const check = (index: number, rawLength: number, checksum: bigint, z: Uint8Array, write: FrameWrite, fromBase?: { digest: string; bytes: number; frameDigest: string | null }) => {
    const known = fromBase?.frameDigest ? { known: { frame: fromBase.frameDigest, raw: fromBase.digest } } : {};
    // (a payload in no slot of ours goes over in its own buffer)
    const { buf, at, transfer, named } = jobBytes(slots, z);
    const job = { op: "check", index, rawLength, checksum, buf, at, length: z.length, hash: wholeSha, digest, frameDigest: true, wantRaw: false, write, ...known } as const;
    return track(index, rawLength, pool.run(job, transfer, wholeSha ? 0 : undefined), fromBase, named ? z : undefined);
  };
  // A write or sync of the backup failed (the workers report an errno code).
  const storeFailed = (doing: string, e: unknown) => {
    if ((DISK_FULL as readonly string[]).includes(errnoCode(e))) return new TbError("NO_SPACE", `the receiver's disk is full (${opts.out})`, "free space on the receiver or choose another --out, then push again");
    return e instanceof TbError ? e : new TbError("DEST", `the receiver cannot ${doing} ${writer.dataLocation}: ${errnoText(e)}`, "check the receiver's disk");
  };
  // Durable-progress syncs run in the thread pool while data keeps arriving.
  let syncing: Promise<void> | null = null;
  // once the complete backup has its final name (writer.committed), a later
  // failure (the DONE not getting through) must not be reported as a partial
  // what DONE says, once the backup is stored complete (a STATUS gets it again)
  let confirmation: Done | undefined;
  let syncFailure: unknown = null;

  try {
    // (inside the session's try: a sender that leaves or stops reading here
    // ends the session like any other, its partial and the base closed)
    if (!resumedFrom) {
      if (!candidate) await ch.sendJson(MsgType.HELLO_ACK, ack);
      if (base) {
        const sent = await Promise.race([sendBaseDigests(ch, base.digests).then(() => true), Bun.sleep(opts.idleMs).then(() => false)]);
        if (!sent) throw new TbError("TIMEOUT", `the sender took none of the base's digests for ${Math.round(opts.idleMs / 1000)} s`, "check that the sender still runs, then push again");
      }
    }
    for (;;) {
      let f: Frame;
      try {
        // while a chunk asked for again has not come, the request is repeated now and then
        f = await ch.recv(session.is("resending") ? Math.min(opts.idleMs, RESEND_REPEAT_MS) : opts.idleMs, "the sender");
      } catch (e) {
        if (session.is("resending") && e instanceof TbError && e.code === "TIMEOUT" && Date.now() - heardAt < opts.idleMs) {
          askedLongAgo();
          continue;
        }
        if (session.is("resending") && e instanceof TbError && e.code === "TIMEOUT")
          throw new TbError("TIMEOUT", `no answer from the sender on ${ch.conn.description} within ${Math.round(opts.idleMs / 1000)} s of asking for chunk ${next} again`, "check that the sender still runs and the cable is plugged in, then push again");
        // a damaged chunk record: asked for again
        // (once all are here and none is awaited, it can only be a stale copy)
        if (retry && e instanceof CorruptFrame && (e.frameType === MsgType.DATA || e.frameType === MsgType.ZERO || e.frameType === MsgType.SAME) && (session.is("resending") || next < expectedChunks)) {
          await askAgain(next, `its ${typeName(e.frameType)} frame failed its checksum`);
          continue;
        }
        // a chunk that failed its check is asked for first (the damaged frame may have been END)
        if (retry?.failed && e instanceof CorruptFrame) {
          await askAgain(retry.failed.index, retry.failed.why);
          continue;
        }
        // Every chunk is here and checked: a damaged frame now can only be END,
        // which a sender that knows STATUS sends again.
        if (e instanceof TbError && e.code === "CORRUPT" && !files && next === expectedChunks) {
          opts.reporter.info(`session ${hello.session.slice(0, 8)}: a damaged frame after the last chunk; waiting for the sender to send END again`);
          continue;
        }
        // a damaged END while chunks are asked for again: the sender sends END again after them
        if (session.is("resending") && e instanceof CorruptFrame && e.frameType === MsgType.END) continue;
        throw e;
      }
      heardAt = Date.now();
      askedLongAgo(); // whatever comes meanwhile (stale records, a sender's STATUS), the request is repeated in time
      activity.n++;
      if (f.type === MsgType.DATA || f.type === MsgType.ZERO || (f.type === MsgType.SAME && base)) {
        const rec = f.type === MsgType.SAME ? decodeSameRecord(f, chunkSize) : decodeChunkRecord(f, chunkSize, zeroChecksum);
        if ("error" in rec && retry && rec.code === "CORRUPT") {
          ch.release(f.payload);
          await askAgain(next, rec.error);
          continue;
        }
        if ("error" in rec) throw new TbError(rec.code, rec.error, rec.code === "CORRUPT" ? "check the cable and push again" : "use the same tbbackup version on both sides");
        const h = rec.header;
        if (retry && h.index !== next) {
          // sent before the sender heard our request (or again after a repeated one): dropped
          ch.release(f.payload);
          // one that came before its turn: the one expected was lost on the way
          if (h.index > next && !session.is("resending")) await askAgain(next, `chunk ${h.index} came in its place`);
          continue;
        }
        if (session.is("resending")) session.to("receiving");
        const offset = h.index * chunkSize;
        const rawLength = files ? h.rawLength : Math.min(chunkSize, disk.size - offset);
        if (files && sawShort) throw new TbError("PROTOCOL", `chunk ${h.index} of the file stream follows a short one`, "use the same tbbackup version on both sides");
        sawShort = rawLength < chunkSize;
        if (h.index !== next || h.offset !== offset || h.rawLength !== rawLength || h.index >= expectedChunks)
          throw new TbError("PROTOCOL", `chunk ${h.index} at offset ${h.offset} arrived out of order (expected chunk ${next})`, "data was lost on the way; check the cable and push again");
        if (rec.kind === "same") {
          // the sender's chunk has the base's SHA-256: copy the base's frame, checked like one that arrived
          ch.release(f.payload);
          // read into a slot of ours (a frame too large for one comes in a buffer of its own, and the slot goes back)
          const into = slots.take();
          let frame: Uint8Array | null = null;
          try {
            frame = base!.frame(h.index, rawLength, h.checksum, into);
          } finally {
            if (frame?.buffer !== into.buffer) slots.give(into);
          }
          const write = writer.record(frame, rawLength, offset, h.checksum, base!.extent(h.index));
          const bytes = write.clone?.length ?? frame.length; // (with the base's padding when laid out alike)
          await check(h.index, rawLength, h.checksum, frame, write, { digest: base!.digest(h.index), bytes, frameDigest: base!.frameDigest(h.index) });
        } else if (rec.kind === "zero") {
          const zf = zeroFrame(rawLength);
          ch.release(f.payload);
          if (wholeSha) {
            // the zeros go into the whole-image SHA-256 on its worker, in order
            const write = writer.record(zf, rawLength, offset, h.checksum);
            await track(h.index, rawLength, pool.run({ op: "zero", index: h.index, rawLength, hash: true, write: { ...write, frame: zf.slice().buffer as ArrayBuffer } }, [], 0));
          } else {
            // a few bytes: written here, not worth a worker's round trip (on a mostly empty disk, most of the records)
            let writeError: string | undefined;
            try {
              writer.append(zf, rawLength, offset, h.checksum);
            } catch (e) {
              writeError = errnoCode(e) || String(e);
            }
            await track(h.index, rawLength, Promise.resolve({ op: "zeroed", index: h.index, writeError }));
          }
        } else {
          const z = rec.zstd;
          const write = writer.record(z, rawLength, offset, h.checksum);
          // the worker checks the chunk, then writes it at its position
          await check(h.index, rawLength, h.checksum, z, write);
        }
        next++;
        await checks.ready();
        if (syncFailure) throw syncFailure;
        if (retry?.failed) {
          await askAgain(retry.failed.index, retry.failed.why);
          continue;
        }
        if (next - lastProgress >= PROGRESS_EVERY_CHUNKS && !syncing) {
          await checks.drain();
          if (retry?.failed) {
            await askAgain(retry.failed.index, retry.failed.why);
            continue;
          }
          lastProgress = next;
          const progress = { chunks: next, bytes: writer.rawBytes };
          // what a later push may continue from: made durable and noted in the manifest
          syncing = writer
            .checkpoint()
            .then(() => ch.sendJson(MsgType.PROGRESS, progress))
            .catch((e: unknown) => {
              syncFailure ??= storeFailed("sync", e);
            })
            .finally(() => (syncing = null));
        }
        if ((next & 15) === 0) opts.reporter.progress({ phase: `receive from ${hostLabel}`, bytes: writer.rawBytes, total: files ? 0 : disk.size, stored: writer.storedBytes });
      } else if (f.type === MsgType.END) {
        // sent before the sender heard our request: it sends END again after the chunks
        if (session.is("resending")) continue;
        const end = decodeMessage(MsgType.END, f.payload);
        const want = files ? next : expectedChunks;
        if (!end || end.chunks !== want || next !== want || end.bytes !== (files ? writer.rawBytes : disk.size))
          throw new TbError("PROTOCOL", `the sender ended after ${next} of ${end?.chunks ?? "?"} chunks`, "push again", [], outcome.incomplete("backup"));
        // a sender with the root capability sends its root; one without, its whole-image SHA-256
        if (hasRootCap(hello) ? !isDigest(end.root) : !isDigest(end.sha256))
          throw new TbError("PROTOCOL", "the sender's END lacks its integrity root or SHA-256", "use the same tbbackup version on both sides");
        session.to("sealing");
        const size = end.bytes;
        await checks.drain();
        if (retry?.failed) {
          await askAgain(retry.failed.index, retry.failed.why);
          continue;
        }
        await syncing;
        if (syncFailure) throw syncFailure;
        const rootHex = root.digest();
        if (end.root !== undefined && rootHex !== end.root)
          throw new TbError("CORRUPT", `integrity root mismatch: received data makes ${rootHex}, the sender read ${end.root}`, "check the cable and push again", [], outcome.incomplete("backup"));
        let sha256: string | null = null;
        if (wholeSha) {
          const digest = await pool.run({ op: "digest" }, [], 0);
          sha256 = digest.op === "digest" ? digest.sha256 : "";
          if (end.sha256 !== undefined && sha256 !== end.sha256)
            throw new TbError("CORRUPT", `whole-image SHA-256 mismatch: received data hashes to ${sha256}, the sender read ${end.sha256}`, "check the cable and push again", [], outcome.incomplete("backup"));
        }
        let storedBytes: number;
        try {
          storedBytes = writer.finish();
        } catch (e) {
          throw storeFailed("finish", e);
        }
        const finished = new Date();
        Object.assign(manifest, {
          status: "complete",
          size,
          ...(files && end.files ? { files: end.files } : {}),
          chunks: { ...manifest.chunks, count: want, zero, ...(same ? { same } : {}) },
          ...(base && same ? { base: base.id, sharedBytes } : {}),
          storedBytes,
          sha256,
          root: rootHex,
          timings: { started: started.toISOString(), finished: finished.toISOString(), seconds: (finished.getTime() - started.getTime()) / 1000 },
        });
        const finalDir = writer.commit();
        session.to("stored");
        confirmation = { session: hello.session, id: writer.id, path: finalDir, ...(hasRootCap(hello) ? { root: rootHex } : {}), ...(sha256 ? { sha256 } : {}), bytes: size, storedBytes, ...(base ? { base: base.id, sameChunks: same } : {}) };
        await ch.sendJson(MsgType.DONE, confirmation);
        opts.reporter.info(`stored ${writer.id}: ${size} bytes as ${storedBytes}${same ? ` (${same} of ${want} chunks${knownFrames ? ` (${knownFrames} known by their frame digests)` : ""}, ${sharedBytes} bytes, copied from ${base!.id}${clonedBytes ? `, ${clonedBytes} of them as blocks shared with it` : ""})` : ""} (root ${rootHex}${sha256 ? `, sha256 ${sha256}` : ""}${resentNote(retry)})`);
        return {
          result: { ok: true, role: "push", id: writer.id, path: finalDir, host: hello.host?.hostname, bytes: size, storedBytes, root: rootHex, sha256: sha256 ?? undefined, seconds: manifest.timings.seconds!, ...(retry ? { resent: retry.count } : {}) },
          carried: null,
          done: confirmation,
        };
      } else if (f.type === MsgType.ERROR) {
        const e = decodeMessage(MsgType.ERROR, f.payload);
        throw new TbError("PEER", `the sender stopped: ${e?.message ?? "unknown reason"}`, "");
      } else if (f.type === MsgType.HELLO) {
        if (sessionOf(f.payload) === hello.session) {
          await ch.sendJson(MsgType.HELLO_ACK, ack);
          // our first answer may be the one that was lost: the digests go again, from the first
          if (base && next === 0) await sendBaseDigests(ch, base.digests);
          continue;
        }
        carried = f;
        throw new TbError("CLOSED", "the sender started a new session before finishing this one", "");
      } else if (f.type === MsgType.STATUS) {
        // the sender asks before its END got here (lost on the way): it sends END again first
        continue;
      } else {
        throw new TbError("PROTOCOL", `unexpected ${typeName(f.type)} message during a push`, "use the same tbbackup version on both sides");
      }
    }
  } catch (e) {
    const err = asTbError(e);
    // Let the worker finish the writes it was given and the sync end before the
    // files are closed: a late write to a reused descriptor would land elsewhere.
    // A worker stuck on a stalled disk keeps them open (a leak, not a garbled file).
    const idle = await pool.idle();
    // (the base's too: a queued clone holds its descriptor's number)
    keepBase = !idle;
    await syncing;
    if (idle) writer.close();
    else opts.reporter.info(`the receiver's disk stalled: ${writer.dataLocation} stays open until tbbackup exits`);
    // (committed but a step after its rename failed: stored all the same)
    if (writer.committed !== null && !session.is("stored")) session.to("stored");
    if (session.is("stored")) {
      const message = `stored complete as ${writer.id}, but the sender may not have received the confirmation: ${err.message}`;
      opts.reporter.info(message);
      return { result: { ok: false, role: "push", id: writer.id, path: writer.committed!, host: hello.host?.hostname, error: { code: err.code, message } }, carried, done: confirmation };
    }
    session.to("failed");
    Object.assign(manifest, { status: "partial", reason: err.message, chunks: { ...manifest.chunks, count: next, zero }, storedBytes: writer.storedBytes });
    try {
      writer.saveManifest();
    } catch {}
    if (err.code !== "CLOSED" && err.code !== "PEER" && err.code !== "TIMEOUT") {
      // with its hint: what to do next is often on the receiver's side (free space there)
      await ch.sendJson(MsgType.ERROR, { session: hello.session, code: err.code, message: `receiver: ${err.oneLine()}` }).catch(() => {});
      if (!ch.conn.lossy) await ch.drain(3000);
    }
    opts.reporter.info(`session ${hello.session.slice(0, 8)} failed, kept as ${writer.partialId}${resentNote(retry)}: ${err.oneLine()}`);
    return { result: { ok: false, role: "push", id: writer.partialId, path: writer.location, host: hello.host?.hostname, error: { code: err.code, message: err.message }, ...(retry ? { resent: retry.count } : {}) }, carried };
  } finally {
    if (!keepBase) base?.close();
  }
}

/** A push session's state for asking for damaged chunks again (docs/PROTOCOL.md §8.2a). */
interface RetryState {
  budget: DamageBudget;
  /** a chunk that failed its check on a worker, not yet asked for again */
  failed: { index: number; why: string } | null;
  /** checks of chunks from here on are dropped (taken back) */
  dropFrom: number;
  /** the last request, repeated while its chunk does not come */
  request: Resend | null;
  sentAt: number;
  /** requests made */
  count: number;
}

/**
 * The retry state when the sender lists the resend capability; null keeps the
 * behaviour of a receiver without it (a damaged chunk ends the session). A
 * file stream cannot be read again, and a whole-image SHA-256 (one running
 * hash on a worker) cannot go back: neither uses it.
 */
function resendState(hello: Hello, cannot: boolean): RetryState | null {
  if (cannot || !hasCap(hello, RESEND_CAP)) return null;
  return { budget: new DamageBudget(), failed: null, dropFrom: Number.MAX_SAFE_INTEGER, request: null, sentAt: 0, count: 0 };
}

/** ", 2 chunks sent twice" for the log, when any was. */
function resentNote(retry: RetryState | null): string {
  return retry?.count ? `; ${retry.count} damaged chunk${retry.count === 1 ? " was" : "s were"} sent again` : "";
}
