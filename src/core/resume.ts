// Resuming an interrupted push (docs/PROTOCOL.md §8.4). The receiver records in each
// partial's manifest what was durable at the last PROGRESS; a later push of the
// same disk is offered that prefix, and the sender re-reads its own prefix to
// check that its chunk list hashes the same before continuing after it.
import * as fs from "node:fs";
import * as path from "node:path";
import { MsgType, decodeMessage, sessionOf, type Hello } from "../protocol/messages.ts";
import { PARTIAL_SUFFIX, sanitizeName, within } from "../store/layout.ts";
import { readManifest, writeManifest, type Manifest } from "../store/manifest.ts";
import { MAX_PADDING, PADDING_MAGIC, frameChecksum, type SeekEntry } from "../store/seekable.ts";
import { parseChunkLine } from "../store/image-reader.ts";
import { zstd } from "../util/zstd.ts";
import type { Channel } from "./channel.ts";
import type { WorkerPool } from "./chunk-jobs.ts";
import { zeroChecksum } from "./zero.ts";
import { TbError } from "./errors.ts";
import { sameDisk } from "./identity.ts";

export interface Resumable {
  id: string;
  dir: string;
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
 * The backups of the sender's disk in the store, newest first, whose
 * directory names pass `keep`, with their readable manifests (the others
 * are passed over); nothing for a file-level push.
 */
export function* diskBackups(out: string, hello: Hello, keep: (name: string) => boolean): Generator<{ id: string; dir: string; name: string; manifest: Manifest }> {
  const disk = hello.disk;
  if (!disk || disk.kind === "files" || hello.content === "files") return;
  const host = sanitizeName(hello.host?.hostname ?? "unknown");
  const diskName = sanitizeName(disk.name ?? "disk");
  let parent: string;
  let names: string[];
  try {
    parent = within(out, host, diskName);
    names = fs.readdirSync(parent).filter(keep).sort().reverse();
  } catch {
    return;
  }
  for (const name of names) {
    const dir = path.join(parent, name);
    let manifest: Manifest;
    try {
      manifest = readManifest(dir);
    } catch {
      continue;
    }
    yield { id: `${host}/${diskName}/${name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name}`, dir, name, manifest };
  }
}

/** The newest partial backup of this sender's disk that can be continued, if any. */
export function findResumable(out: string, hello: Hello): Resumable | null {
  for (const { id, dir, manifest: m } of diskBackups(out, hello, (n) => n.endsWith(PARTIAL_SUFFIX))) {
    const d = m.durable;
    if (m.status === "partial" && d !== undefined && d.chunks > 0 && backupOfThisDisk(m, hello) && fs.existsSync(path.join(dir, m.data + ".tmp"))) return { id, dir, manifest: m };
  }
  return null;
}

/** The first `bytes` of a chunk list, as text. */
export function readPrefix(file: string, bytes: number): string {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(bytes);
    const n = fs.readSync(fd, buf, 0, bytes, 0);
    if (n !== bytes) throw new Error(`chunk list is shorter than its recorded durable part`);
    return buf.toString("latin1");
  } finally {
    fs.closeSync(fd);
  }
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
 * to continue with and the chunks' digests (for the integrity root).
 */
export async function checkPrefix(dir: string, m: Manifest, lines: string, pool: WorkerPool, wholeSha: boolean, onChunk: () => void): Promise<{ entries: SeekEntry[]; zero: number; digests: string[] }> {
  const d = m.durable!;
  const rows = lines.split("\n").filter(Boolean);
  if (rows.length !== d.chunks) throw new Error(`the chunk list has ${rows.length} durable lines, the manifest says ${d.chunks}`);
  const fd = fs.openSync(path.join(dir, m.data + ".tmp"), "r");
  const entries: SeekEntry[] = [];
  const digests: string[] = [];
  let zero = 0;
  try {
    const z = zstd();
    const window = new Uint8Array(z.compressBound(m.chunkSize) + 64);
    let position = 0;
    for (let i = 0; i < rows.length; i++) {
      const { index, offset, length: rawLength, checksum } = parseChunkLine(rows[i]!);
      if (index !== i || offset !== i * m.chunkSize || rawLength !== Math.min(m.chunkSize, m.size - offset)) throw new Error(`chunk list line ${i} does not fit the backup's layout`);
      const n = fs.readSync(fd, window, 0, Math.min(window.length, d.storedBytes - position), position);
      const size = z.findFrameCompressedSize(window.subarray(0, n));
      const frame = window.slice(0, size);
      const r = await pool.run({ op: "check", index: i, rawLength, checksum, buf: frame.buffer as ArrayBuffer, at: 0, length: size, hash: wholeSha, digest: true, wantRaw: false }, [frame.buffer as ArrayBuffer], 0);
      if (r.op !== "checked" || !r.ok) throw new Error(`chunk ${i}: ${r.op === "checked" ? r.error : "worker failed"}`);
      digests.push(r.digest!);
      onChunk();
      // an aligned image (docs/FORMAT.md §3.5): the padding after the frame is part of its entry
      const padding = m.align ? paddingAt(fd, position + size, d.storedBytes) : 0;
      entries.push({ compressedSize: size + padding, rawSize: rawLength, checksum: frameChecksum(window.subarray(0, size)) });
      if (checksum === zeroChecksum(rawLength)) zero++;
      position += size + padding;
    }
    if (position !== d.storedBytes) throw new Error(`the durable frames end at ${position}, the manifest says ${d.storedBytes}`);
  } finally {
    fs.closeSync(fd);
  }
  return { entries, zero, digests };
}

/** Bytes of padding (skippable frames, at most MAX_PADDING) at `position` of a partial image, before `end`. */
function paddingAt(fd: number, position: number, end: number): number {
  const header = new Uint8Array(8);
  const v = new DataView(header.buffer);
  let at = position;
  while (at < end && fs.readSync(fd, header, 0, 8, at) === 8 && (v.getUint32(0, true) & 0xfffffff0) === PADDING_MAGIC) {
    at += 8 + v.getUint32(4, true);
    if (at - position > MAX_PADDING || at > end) throw new Error(`the padding at ${position} is malformed`);
  }
  return at - position;
}

/** Marks a partial as one that will not be offered again (kept for inspection). */
export function markNotResumable(r: Resumable, reason: string): void {
  try {
    writeManifest(r.dir, { ...r.manifest, status: "failed", reason: `not resumable: ${reason}` });
  } catch {}
}
