// Resuming an interrupted push (docs/PROTOCOL.md §8.4). The receiver records in each
// partial's manifest what was durable at the last PROGRESS; a later push of the
// same disk is offered that prefix, and the sender re-reads its own prefix to
// check that its chunk list hashes the same before continuing after it.
import { MsgType, decodeMessage, sessionOf, type Hello } from "../protocol/messages.ts";
import { frameChecksum, parseChunkLine, type Manifest, type PartialBackup, type Repository, type SeekEntry, type StoredBackup } from "../store/repository.ts";
import { zstd } from "../util/zstd.ts";
import type { DigestAlgorithm } from "../store/root.ts";
import type { Channel } from "./channel.ts";
import type { WorkerPool } from "./chunk-jobs.ts";
import { zeroChecksum } from "./zero.ts";
import { TbError } from "./errors.ts";
import { sameDisk } from "./identity.ts";

export interface Resumable {
  /** its ID once complete (host/disk/timestamp) */
  id: string;
  backup: StoredBackup;
  manifest: Manifest;
}

/**
 * Whether a stored image backup is of the disk this push HELLO sends, so that
 * it can be continued (resume, §8.4) or built upon (incremental base, §8.7):
 * the same host (hostname and machine-id) and chunk size, and the same disk
 * by the `recorded` rule of identity.ts (path, size, serial, WWN as recorded).
 */
export function backupOfThisDisk(m: Manifest, hello: Hello): boolean {
  const disk = hello.disk;
  return (
    disk !== undefined &&
    m.disk !== undefined &&
    m.kind === "image" &&
    m.chunkSize === hello.chunkSize &&
    m.host?.hostname === hello.host?.hostname &&
    m.host?.machineId === hello.host?.machineId &&
    sameDisk(m.disk, disk, { by: "recorded" })
  );
}

/**
 * The backups of the sender's disk in the store, newest first (partials or
 * complete ones), with their readable manifests (the others are passed
 * over); nothing for a file-level push.
 */
export function* diskBackups(repo: Repository, hello: Hello, which: "partial" | "complete"): Generator<{ id: string; backup: StoredBackup; manifest: Manifest }> {
  const disk = hello.disk;
  if (!disk || disk.kind === "files" || hello.content === "files") return;
  for (const b of repo.backupsOf(hello.host?.hostname ?? "unknown", disk.name ?? "disk", which)) {
    yield { id: b.finalId, backup: b, manifest: b.manifest! };
  }
}

/** The newest partial backup of this sender's disk that can be continued, if any. */
export function findResumable(repo: Repository, hello: Hello): Resumable | null {
  for (const { id, backup, manifest: m } of diskBackups(repo, hello, "partial")) {
    const d = m.durable;
    if (m.status === "partial" && d !== undefined && d.chunks > 0 && backupOfThisDisk(m, hello) && backup.hasData) return { id, backup, manifest: m };
  }
  return null;
}

/**
 * Waits for the sender's RESUME answer: the chunk to continue from, or why
 * there is none. Every frame restarts the wait: while re-reading a large
 * prefix the sender sends PROGRESS as a keepalive.
 */
export async function awaitResume(ch: Channel, hello: Hello, idleMs: number, resendOffer: () => Promise<void>): Promise<number | TbError> {
  for (;;) {
    let f;
    try {
      f = await ch.recv(idleMs, "the sender's answer to the resume offer");
    } catch (e) {
      return e instanceof TbError ? e : new TbError("CLOSED", String(e), "push again");
    }
    // a repeated HELLO: our offer was lost on the way (a device drops early bytes)
    if (f.type === MsgType.HELLO && sessionOf(f.payload) === hello.session) await resendOffer();
    if (f.type !== MsgType.RESUME) continue;
    const r = decodeMessage(MsgType.RESUME, f.payload);
    if (r?.session === hello.session && Number.isSafeInteger(r.from) && r.from >= 0) return r.from;
  }
}

/**
 * Re-checks the durable prefix of a partial image: every frame decompresses
 * (on the pool's first worker, feeding its SHA-256 in order when `wholeSha`)
 * to the length and XXH3 its chunk-list line gives. Returns the seek entries
 * to continue with and the chunks' digests (for the integrity root), and
 * their frames' (frame-xxh3.txt).
 */
export async function checkPrefix(partial: PartialBackup, m: Manifest, lines: string, pool: WorkerPool, wholeSha: boolean, digest: DigestAlgorithm, onChunk: () => void): Promise<{ entries: SeekEntry[]; zero: number; digests: string[]; frameDigests: string[] }> {
  const d = m.durable!;
  const rows = lines.split("\n").filter(Boolean);
  if (rows.length !== d.chunks) throw new Error(`the chunk list has ${rows.length} durable lines, the manifest says ${d.chunks}`);
  const entries: SeekEntry[] = [];
  const digests: string[] = [];
  const frameDigests: string[] = [];
  let zero = 0;
  const z = zstd();
  let i = 0;
  for (const { frame, padding } of partial.frames(d, z.compressBound(m.chunkSize) + 64, (bytes) => z.findFrameCompressedSize(bytes))) {
    const { index, offset, length: rawLength, checksum } = parseChunkLine(rows[i]!);
    if (index !== i || offset !== i * m.chunkSize || rawLength !== Math.min(m.chunkSize, m.size - offset)) throw new Error(`chunk list line ${i} does not fit the backup's layout`);
    const size = frame.length;
    const sum = frameChecksum(frame); // (before the buffer goes to the worker)
    const r = await pool.run({ op: "check", index: i, rawLength, checksum, buf: frame.buffer as ArrayBuffer, at: 0, length: size, hash: wholeSha, digest, frameDigest: true, wantRaw: false }, [frame.buffer as ArrayBuffer], 0);
    if (r.op !== "checked" || !r.ok) throw new Error(`chunk ${i}: ${r.op === "checked" ? r.error : "worker failed"}`);
    digests.push(r.digest!);
    frameDigests.push(r.frameDigest!);
    onChunk();
    // an aligned image (docs/FORMAT.md §3.5): the padding after the frame is part of its entry
    entries.push({ compressedSize: size + padding, rawSize: rawLength, checksum: sum });
    if (checksum === zeroChecksum(rawLength)) zero++;
    i++;
  }
  return { entries, zero, digests, frameDigests };
}

/** Marks a partial as one that will not be offered again (kept for inspection). */
export function markNotResumable(repo: Repository, r: Resumable, reason: string): void {
  try {
    repo.saveManifest(r.backup, { ...r.manifest, status: "failed", reason: `not resumable: ${reason}` });
  } catch {}
}
