// verify: re-reads a stored backup, checks every chunk (zstd frame checksum and
// our xxh3 of the raw data) and the integrity root (and the whole-image
// SHA-256 where the backup records one), writing nothing.
import * as path from "node:path";
import { backupAt, chunkDigestOf, unknownDigest, maxEntrySize, openBackupAt, type BackupAt, type BackupReader, type ChunkLine, type ChunkLines, type Manifest } from "../store/repository.ts";
import { storeKind } from "../store/errors.ts";
import { SharedSlots } from "../util/shared-slots.ts";
import { MAX_CHUNK_SIZE } from "./limits.ts";
import { WorkerPool, jobBytes, workerCount, type WorkerReply } from "./chunk-jobs.ts";
import { OrderedPipeline } from "./pipeline.ts";
import { RootBuilder, zeroDigest } from "../store/root.ts";
import { isZeroFrame } from "./zero.ts";
import { TbError } from "./errors.ts";
import type { Reporter } from "./report.ts";
import { requireAddons } from "../util/zstd.ts";

export interface VerifyResult {
  path: string;
  id: string | null;
  ok: true;
  chunks: number;
  bytes: number;
  /** the integrity root recomputed from the data (docs/FORMAT.md §4a) */
  root: string;
  /** the whole-image SHA-256, recomputed when the backup records one */
  sha256: string | null;
  seconds: number;
}

/** A backup given by path (a backup directory or its image), found. */
export type Located = { dir: string; image: string; manifest: Manifest | null; at: Extract<BackupAt, { exists: true }> };

/** Finds the backup directory and image for a path that names either. */
export function locateBackup(p: string): Located {
  const at = backupAt(p);
  if (!at.exists) throw new TbError("NOT_FOUND", `${p} does not exist`, "give a backup directory (tbbackup list shows them) or its image.zst");
  const dir = at.location;
  let manifest: Manifest | null = null;
  if (at.manifest?.ok === false) {
    const e = at.manifest.error;
    if (storeKind(e) === "NEWER_FORMAT") throw new TbError("PROTOCOL", `${at.manifest.at}: ${(e as Error).message}`, "upgrade tbbackup to read this backup");
    throw new TbError("VERIFY", `${at.manifest.at} is unreadable: ${(e as Error).message}`, "the backup's manifest is damaged");
  }
  if (at.manifest?.ok) manifest = at.manifest.manifest;
  const image = at.dataLocation;
  // a disk image given by mistake (restore --from disk.img) is not a damaged backup
  if (!at.isDir && !manifest && !at.looksLikeData)
    throw new TbError("NOT_FOUND", `${p} is not a tbbackup backup (not a zstd file, no manifest.json beside it)`, "give a backup directory (tbbackup list shows them) or its image.zst");
  if (!at.hasData) {
    const partial = manifest?.status === "partial" || at.partial;
    throw new TbError(partial ? "VERIFY" : "NOT_FOUND", partial ? `${dir} is an incomplete backup (${manifest?.reason ?? "interrupted"})` : `no ${path.basename(image)} in ${dir}`, partial ? "push again to make a complete backup" : "give a backup directory made by tbbackup receive");
  }
  return { dir, image, manifest, at };
}

/** Opens a stored backup's image and chunk list for reading; `hint` says what to do if the image is damaged. */
export function openBackup(p: string, hint: string): { dir: string; image: string; manifest: Manifest | null; reader: BackupReader; list: ChunkLines | null } {
  const located = locateBackup(p);
  return { ...openLocated(located, hint), dir: located.dir, image: located.image, manifest: located.manifest };
}

/** Opens a backup locateBackup() found: its reader, and its chunk list (null without a manifest or list). */
export function openLocated(located: Located, hint: string): { reader: BackupReader; list: ChunkLines | null } {
  let reader: BackupReader;
  try {
    reader = openBackupAt(located.at);
  } catch (e) {
    throw new TbError("VERIFY", `${located.image} is damaged: ${(e as Error).message}`, hint);
  }
  return { reader, list: reader.chunkList() };
}

/** The chunk list's next line, which must be chunk i's as the seek table has it (else the error `damaged` makes). */
export function nextChunkLine(reader: BackupReader, list: ChunkLines, i: number, damaged: (why: string) => TbError): ChunkLine {
  let line: ChunkLine | null;
  try {
    line = list.next();
  } catch (err) {
    throw damaged((err as Error).message);
  }
  if (!line || line.index !== i || line.length !== reader.entries[i]!.rawSize) throw damaged("the chunk list does not match the image");
  return line;
}

/**
 * Slots to read a stored backup's frames into for the workers. Sized by the
 * entries the seek table lists (their sizes are bounded by the file's, unlike
 * a chunk size it or the manifest claims), and at most what a chunk tbbackup
 * writes can take: a longer entry is read into a buffer of its own
 * (readStoredChunk).
 */
export function frameSlots(reader: BackupReader): SharedSlots {
  let longest = 1;
  for (const e of reader.entries) longest = Math.max(longest, e.compressedSize);
  return new SharedSlots(Math.min(longest, maxEntrySize(MAX_CHUNK_SIZE)));
}

/**
 * Chunk i of a stored backup: its chunk-list line (checked against the seek
 * table; null for a backup without a list) and its frame, read into `into`
 * when it fits. A damaged backup (a line that does not match, a frame cut
 * short, a malformed list) ends in the error `damaged` makes, never a raw one.
 */
export function readStoredChunk(reader: BackupReader, list: ChunkLines | null, i: number, into: Uint8Array, damaged: (why: string) => TbError): { line: ChunkLine | null; frame: Uint8Array } {
  const line = list ? nextChunkLine(reader, list, i, damaged) : null;
  try {
    return { line, frame: reader.frame(i, into) };
  } catch (err) {
    throw damaged((err as Error).message);
  }
}

/**
 * readStoredChunk into a slot of `slots`: the frame is in that slot (to give
 * back once the workers are done with it), or, longer than a slot holds, in a
 * buffer of its own, and the slot went back at once (also on an error).
 */
export function readStoredChunkInSlot(reader: BackupReader, list: ChunkLines | null, i: number, slots: SharedSlots, damaged: (why: string) => TbError): { line: ChunkLine | null; frame: Uint8Array } {
  const into = slots.take();
  let got: ReturnType<typeof readStoredChunk> | null = null;
  try {
    got = readStoredChunk(reader, list, i, into, damaged);
  } finally {
    if (got?.frame.buffer !== into.buffer) slots.give(into);
  }
  return got;
}

export async function verify(p: string, reporter: Reporter): Promise<VerifyResult> {
  requireAddons(); // before any session: a clear line if this system cannot run it
  const started = Date.now();
  const { dir, manifest, reader, list } = openBackup(p, "this backup cannot be trusted; make a new one");
  // Every chunk is checked and hashed on any worker (the integrity root); a
  // backup that records the whole-image SHA-256 has it recomputed too, by one
  // worker fed in order.
  const wholeSha = !!manifest?.sha256 || !manifest;
  const pool = new WorkerPool(wholeSha ? 1 : workerCount());
  const bad = (i: number, why: string) =>
    new TbError("VERIFY", `chunk ${i} (raw offset ${offsetOf(reader, i)}) is bad: ${why}`, "this backup cannot be trusted; make a new one");
  try {
    if (manifest && manifest.status !== "complete") throw new TbError("VERIFY", `${dir} is marked ${manifest.status}`, "push again to make a complete backup");
    if (manifest && manifest.chunks.count !== reader.entries.length)
      throw new TbError("VERIFY", `the manifest lists ${manifest.chunks.count} chunks but the image has ${reader.entries.length}`, "this backup cannot be trusted; make a new one");
    if (manifest && manifest.size !== reader.rawSize)
      throw new TbError("VERIFY", `the manifest says ${manifest.size} bytes but the image holds ${reader.rawSize}`, "this backup cannot be trusted; make a new one");
    // frames are read into slots the workers are given once, and named in a job (src/util/shared-slots.ts)
    const slots = frameSlots(reader);
    pool.share(slots);
    const root = new RootBuilder();
    // its chunk digest (a bare image without a manifest has only its SHA-256 to check: any will do)
    const chunkHash = manifest ? chunkDigestOf(manifest) : "sha256";
    if (chunkHash === null) throw new TbError("VERIFY", `${dir} is damaged: ${unknownDigest(manifest!)}`, "this backup cannot be trusted; make a new one");
    // `held`: the slot the frame was read into, free again once its worker answered
    const checks = new OrderedPipeline<{ i: number; r: WorkerReply | null; held?: Uint8Array }>(4 * pool.size + 4, ({ i, r, held }) => {
      // the canonical zero frame holds zeros by construction: nothing to decompress or hash
      if (!r) return root.add(zeroDigest(reader.entries[i]!.rawSize, chunkHash));
      if (r.op === "checked" && held) slots.give(held);
      if (r.op === "checked" && !r.ok) throw bad(i, r.error ?? "check failed");
      if (r.op === "failed") throw new TbError("INTERNAL", r.error, "report this bug");
      if (r.op === "checked") root.add(r.digest!);
    });
    let bytes = 0;
    for (let i = 0; i < reader.entries.length; i++) {
      const e = reader.entries[i]!;
      const { line: c, frame } = readStoredChunkInSlot(reader, list, i, slots, (why) => bad(i, why));
      if (!wholeSha && isZeroFrame(frame, e.rawSize, c?.checksum ?? -1n)) {
        slots.give(frame); // (a frame in a buffer of its own is in no slot: nothing to give)
        await checks.add(Promise.resolve({ i, r: null }));
        bytes += e.rawSize;
        continue;
      }
      const { buf, at, transfer, named } = jobBytes(slots, frame);
      const reply = pool.run({ op: "check", index: i, rawLength: e.rawSize, checksum: c?.checksum ?? -1n, buf, at, length: frame.length, hash: wholeSha, digest: chunkHash, wantRaw: false }, transfer, wholeSha ? 0 : undefined);
      await checks.add(reply.then((r) => ({ i, r, ...(named ? { held: frame } : {}) })));
      bytes += e.rawSize;
      if ((i & 31) === 0) reporter.progress({ phase: "verify", bytes, total: reader.rawSize });
    }
    await checks.drain();
    const rootHex = root.digest();
    if (manifest?.root && manifest.root !== rootHex)
      throw new TbError("VERIFY", `the integrity root is ${rootHex}, the manifest says ${manifest.root}`, "this backup cannot be trusted; make a new one");
    if (manifest?.root && manifest.digests) checkDigestList(reader, rootHex);
    let sha256: string | null = null;
    if (wholeSha) {
      const d = await pool.run({ op: "digest" }, [], 0);
      sha256 = d.op === "digest" ? d.sha256 : "";
      if (manifest?.sha256 && manifest.sha256 !== sha256)
        throw new TbError("VERIFY", `whole-image SHA-256 is ${sha256}, the manifest says ${manifest.sha256}`, "this backup cannot be trusted; make a new one");
    }
    return { path: dir, id: manifest?.id ?? null, ok: true, chunks: reader.entries.length, bytes, root: rootHex, sha256, seconds: (Date.now() - started) / 1000 };
  } finally {
    pool.terminate();
    reader.close();
    list?.close();
  }
}

/** digests.txt must hash to the root just recomputed from the data (docs/FORMAT.md §4a). */
function checkDigestList(reader: BackupReader, rootHex: string): void {
  const file = path.join(reader.location, reader.manifest!.digests!.file);
  let text: Buffer;
  try {
    text = reader.digestList();
  } catch (e) {
    throw new TbError("VERIFY", `${file} cannot be read: ${(e as Error).message}`, "the backup's data checks out; its digest list is damaged (incremental pushes against it will send everything)");
  }
  const listed = new Bun.CryptoHasher("sha256").update(text).digest("hex");
  if (listed !== rootHex) throw new TbError("VERIFY", `${file} does not match the data (it hashes to ${listed}, the data to ${rootHex})`, "the backup's data checks out; its digest list is damaged");
}

function offsetOf(r: BackupReader, i: number): number {
  let o = 0;
  for (let k = 0; k < i; k++) o += r.entries[k]!.rawSize;
  return o;
}
