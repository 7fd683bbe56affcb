// Incremental push (docs/PROTOCOL.md §8.7, README "Incremental backups and
// delta restore"). The receiver offers the newest complete backup of the same
// disk as a base and sends its per-chunk SHA-256s; the sender sends a SAME
// record for a chunk whose SHA-256 equals the base's, and the receiver copies
// the base's stored frame for it into the new image after checking it. Every
// backup stays a whole image of its own: deleting the base never breaks it.
import { MsgType, sessionOf, type Hello } from "../protocol/messages.ts";
import { encodeFrame } from "../protocol/frame.ts";
import { BASE_DIGESTS_PER_FRAME, decodeBaseDigests, encodeBaseDigests } from "../protocol/chunk-record.ts";
import { chunkDigestOf, maxEntrySize, type BackupReader, type FrameDigests, type Manifest, type Repository, type StoredBackup } from "../store/repository.ts";
import { DIGEST_LINE_BYTES, isDigest, digestAt, type DigestAlgorithm } from "../store/root.ts";
import type { Channel } from "./channel.ts";
import { TbError } from "./errors.ts";
import { peerError } from "./handshake.ts";
import { backupOfThisDisk, diskBackups } from "./resume.ts";

/**
 * The most chunks a base may have: its digests are held in memory on both
 * sides (32 bytes each, 256 MiB at this limit: 8 TiB of disk at 1 MiB chunks).
 * A larger disk gets full pushes.
 */
export const MAX_BASE_CHUNKS = 8 * 1024 * 1024;

/** A stored backup a push may send SAME records against, opened for the session. */
export class Base {
  private constructor(
    readonly id: string,
    readonly manifest: Manifest,
    /** the base's per-chunk digests (of its manifest's algorithm), 32 bytes each, in chunk order */
    readonly digests: Uint8Array,
    private readonly reader: BackupReader,
    /** each chunk's XXH3-64 from the base's chunks.txt, read whole at open (a resend goes back to earlier chunks) */
    private readonly checksums: BigUint64Array,
    /** its frame-xxh3.txt (or older frame-digests.txt), null without either */
    private readonly frameDigests: FrameDigests | null,
  ) {}

  get chunks(): number {
    return this.digests.length / 32;
  }

  /** the chunk digest of its root (known: readDigests checked it) */
  get digestAlgorithm(): DigestAlgorithm {
    return chunkDigestOf(this.manifest) ?? "sha256";
  }

  /**
   * Opens a complete backup as a base, or says why it cannot be one. Its
   * digests.txt must hash to the manifest's root and its image must hold one
   * frame per chunk. The files stay open for the session: a base deleted
   * meanwhile is still read whole.
   */
  static open(repo: Repository, b: StoredBackup, id: string, m: Manifest): Base | string {
    let reader: BackupReader | null = null;
    try {
      reader = repo.open(b);
      const digests = readDigests(reader, m);
      if (typeof digests === "string") {
        reader.close();
        return digests;
      }
      const count = digests.length / 32;
      if (reader.chunks !== count) throw new Error(`its image has ${reader.chunks} frames, the manifest says ${count}`);
      return new Base(id, m, digests, reader, reader.checksums(true)!, reader.frameDigests());
    } catch (e) {
      reader?.close();
      return (e as Error).message;
    }
  }

  /** The hex digest of chunk i of the base. */
  digest(i: number): string {
    return digestAt(this.digests, i);
  }

  /**
   * The digest its stored frame i had when it was checked (docs/FORMAT.md
   * §4b: XXH3-64, or an older list's SHA-256), or null when unknown: a frame
   * that still hashes to it need not be decompressed to be known good.
   */
  frameDigest(i: number): string | null {
    return this.frameDigests?.at(i) ?? null;
  }

  /**
   * The stored frame of chunk i, for a SAME record of that chunk (in any
   * order: a resend goes back), after the cheap checks: its raw length and
   * its chunk-list line's XXH3-64 must be the sender's. The caller decompresses
   * it and compares its SHA-256 with digest(i) before storing it. Read into
   * the start of `into` when it fits there.
   */
  frame(i: number, rawLength: number, checksum: bigint, into?: Uint8Array): Uint8Array {
    const damaged = (why: string) => baseDamaged(this.id, i, why);
    const e = this.reader.entries[i];
    if (!e || e.rawSize !== rawLength) throw damaged("its stored length differs from the chunk's");
    if (e.compressedSize > maxEntrySize(this.manifest.chunkSize)) throw damaged("its stored frame is too large");
    try {
      if (this.checksums[i] !== checksum) throw new Error("its chunk-list checksum differs from the data's");
      return this.reader.frame(i, into);
    } catch (err) {
      throw damaged((err as Error).message);
    }
  }

  /** Where chunk i's stored entry (frame and padding) lies in the base's image: what a new image may clone (docs/FORMAT.md §3.5). */
  extent(i: number): { fd: number; offset: number; length: number } {
    return this.reader.extent(i);
  }

  close(): void {
    this.frameDigests?.close();
    this.reader.close();
  }
}

/**
 * A complete backup's per-chunk digests, 32 bytes each, from its
 * digests.txt, which must hash to the manifest's root; or why there are none
 * to trust (a backup older than the root, a count that does not fit, a list
 * that is damaged).
 */
export function readDigests(reader: BackupReader, m: Manifest): Uint8Array | string {
  const count = m.chunks?.count;
  if (m.status !== "complete" || m.kind !== "image" || m.format < 2 || !isDigest(m.root) || !m.digests) return "it has no integrity root";
  if (chunkDigestOf(m) === null) return "its chunk digests are of a kind this tbbackup does not know";
  if (!Number.isSafeInteger(count) || count <= 0 || count > MAX_BASE_CHUNKS || count !== Math.ceil(m.size / m.chunkSize)) return "its chunk count does not fit";
  try {
    if (reader.digestListSize() !== count * DIGEST_LINE_BYTES) return "its digest list has the wrong size";
    const text = reader.digestList();
    if (new Bun.CryptoHasher("sha256").update(text).digest("hex") !== m.root) return "its digest list does not match its root";
    const digests = new Uint8Array(count * 32);
    const hex = text.toString("latin1");
    for (let i = 0; i < count; i++) {
      const line = hex.slice(i * DIGEST_LINE_BYTES, i * DIGEST_LINE_BYTES + 64);
      if (!isDigest(line) || hex[i * DIGEST_LINE_BYTES + 64] !== "\n") return `its digest list is malformed at line ${i + 1}`;
      digests.set(Buffer.from(line, "hex"), i * 32);
    }
    return digests;
  } catch (e) {
    return (e as Error).message;
  }
}

/** The error for a base whose stored chunk fails a check: the new backup is not made from it. */
export function baseDamaged(id: string, i: number, why: string): TbError {
  return new TbError("VERIFY", `chunk ${i} of the base backup ${id} is damaged (${why}); nothing damaged was stored`, "push again with --full, and run 'tbbackup verify' on that base");
}

/**
 * The newest complete backup of the sender's disk that can serve as a base,
 * if any: one whose chunk digests the sender computes (BLAKE3 only when
 * `blake3`, the sender lists it).
 */
export function findBase(repo: Repository, hello: Hello, blake3: boolean): Base | null {
  for (const { id, backup, manifest: m } of diskBackups(repo, hello, "complete")) {
    if (m.status !== "complete" || !backupOfThisDisk(m, hello)) continue;
    if (chunkDigestOf(m) === "blake3" && !blake3) continue;
    const b = Base.open(repo, backup, id, m);
    if (typeof b !== "string") return b;
  }
  return null;
}

/** Sends the base's digests, BASE_DIGESTS_PER_FRAME at a time (§8.7). */
export async function sendBaseDigests(ch: Channel, digests: Uint8Array): Promise<void> {
  const chunks = digests.length / 32;
  for (let first = 0; first < chunks; first += BASE_DIGESTS_PER_FRAME) {
    const n = Math.min(BASE_DIGESTS_PER_FRAME, chunks - first);
    await ch.sendFrame(encodeFrame(MsgType.BASE_DIGESTS, encodeBaseDigests(first, digests.subarray(first * 32, (first + n) * 32))));
  }
}

/**
 * Sender: takes in the base's digests after a HELLO_ACK that offered `chunks`
 * of them (waiting at most `waitMs` for each frame: they follow at once). Returns them (32 bytes each), or why the push goes on without a
 * base: a damaged or missing frame, a count that is not the disk's. An ERROR
 * from the receiver for this session ends the push.
 */
export async function receiveBaseDigests(ch: Channel, session: string, chunks: number, expected: number, waitMs: number): Promise<Uint8Array | string> {
  if (chunks !== expected || chunks <= 0 || chunks > MAX_BASE_CHUNKS) return `the receiver's base has ${chunks} chunks, this disk ${expected}`;
  const out = new Uint8Array(chunks * 32);
  let have = 0;
  while (have < chunks) {
    let f;
    try {
      f = await ch.recv(waitMs, "the base backup's digests");
    } catch (e) {
      return e instanceof TbError ? e.message : String(e);
    }
    if (f.type === MsgType.ERROR) {
      const s = sessionOf(f.payload);
      if (s === undefined || s === session) throw peerError(f.payload);
      continue;
    }
    if (f.type !== MsgType.BASE_DIGESTS) continue; // a repeated HELLO_ACK, a keepalive
    const d = decodeBaseDigests(f.payload);
    // first 0 again: the receiver sends them all again (our HELLO was repeated: its first answer may be lost)
    if (d?.first === 0) have = 0;
    if (!d || d.first !== have || have + d.digests.length / 32 > chunks) return "the base's digests arrived out of order";
    out.set(d.digests, have * 32);
    have += d.digests.length / 32;
  }
  return out;
}
