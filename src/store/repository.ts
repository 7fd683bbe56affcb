// The store as core sees it: a Repository of backups, a BackupWriter that a
// push session appends checked frames to, and a BackupReader that gives a
// stored backup's frames, chunk list, digests and manifest. Core (receive,
// verify, restore, the catalogue, housekeeping, the NBD export) speaks only
// to these; where and how the files lie (layout.ts, image-writer.ts,
// image-reader.ts, manifest.ts) is the implementation's business. The local
// directory store (local.ts, docs/FORMAT.md) is the one implementation.
import type { Manifest } from "./manifest.ts";
import type { StoreErrorKind } from "./errors.ts";
import type { FrameWrite } from "./reflink.ts";
import type { SeekEntry } from "./seekable.ts";
import type { ChunkLine } from "./image-reader.ts";
import { FILES_FILE, IMAGE_FILE } from "./layout.ts";
import { LocalRepository, probeLocalBackup, openLocalBackup } from "./local.ts";

export { defaultStore } from "./layout.ts";
/** The mode of a store's directories (a new default store is made with it). */
export { DIR_MODE, fsyncDir } from "./layout.ts";
/** How a name from a peer (a host, a disk) appears in backup IDs. */
export { sanitizeName as idPart } from "./layout.ts";
export type { Manifest } from "./manifest.ts";
// the format's pure pieces core needs beside the interface: a chunk list's
// lines (both ends build them; a resume compares their digest), the frames'
// checksums, the manifest's format number
export { parseChunkLine, type ChunkLine } from "./image-reader.ts";
export { chunkLine, prefixDigest } from "./image-writer.ts";
export { MAX_PADDING, frameChecksum, maxEntrySize, type SeekEntry } from "./seekable.ts";
export { reflinkSetting, type FrameWrite } from "./reflink.ts";
export { MANIFEST_FORMAT, chunkDigestOf, unknownDigest } from "./manifest.ts";

/** One backup as a listing sees it. */
export interface StoredBackup {
  /** host/disk/name, with the name as stored (a partial's ends in ".partial") */
  id: string;
  /** the ID it has (or will have once complete): without ".partial" */
  finalId: string;
  host: string;
  disk: string;
  name: string;
  /** still being written, or interrupted */
  partial: boolean;
  /** where it lies, for messages and list's `path` */
  location: string;
  /** its manifest; null when there is none or it cannot be read */
  manifest: Manifest | null;
  /** why its manifest could not be read, when the store can tell (a newer format, a damaged one) */
  manifestTrouble?: StoreErrorKind;
  /** its data (image.zst or files.tar.zst) is there: under its final name, or a partial's under its temporary one */
  hasData: boolean;
  /** without a manifest: whether what is there looks like a file-level backup */
  looksLikeFiles: boolean;
  /** anything of a backup is there at all (a manifest or data) */
  hasAnyFile: boolean;
}

/** A manifest as core starts it: the store names the files it keeps (data, chunk list, digests). */
export type NewManifest = Omit<Manifest, "id" | "data" | "digests" | "chunks"> & { chunks: Omit<Manifest["chunks"], "file">; digests: Omit<NonNullable<Manifest["digests"]>, "file"> };

/** What a partial held durable when it stopped (its manifest's `durable`): the prefix a resume continues after. */
export type Durable = NonNullable<Manifest["durable"]>;

/** A partial backup opened to be continued: its durable prefix, read back for checking. */
export interface PartialBackup {
  readonly backup: StoredBackup;
  /** the first `bytes` of its chunk list, as text (throws when it is shorter) */
  chunkListPrefix(bytes: number): string;
  /**
   * The durable prefix's frames in order, each found with `frameSize` (the
   * length of the zstd frame at the start of the bytes given), read into a
   * window of `window` bytes, with the bytes of padding after each (an aligned
   * image, docs/FORMAT.md §3.5); throws when they do not end at `storedBytes`.
   */
  frames(durable: Durable, window: number, frameSize: (bytes: Uint8Array) => number): Generator<{ frame: Uint8Array; padding: number }>;
}

export interface Repository {
  /** where the store is, for messages */
  readonly location: string;
  /** Whether the store is there at all. */
  exists(): boolean;
  /** Makes sure the store exists and can be written (errno errors as they come); true when it was created. */
  prepare(): boolean;
  /** Every backup, partials included, sorted by host, disk and name (oldest first). */
  list(): StoredBackup[];
  /** The backups of one host's disk (names as a push gives them), newest first, with readable manifests. */
  backupsOf(host: string, disk: string, which: "partial" | "complete"): StoredBackup[];
  /** The "host/disk" a push of this host's disk is stored under. */
  diskKey(host: string, disk: string): string;
  /**
   * Claims a disk for one push session in this process; null when another
   * holds it. `machine` (the sender's machine-id and product UUID, when it has
   * them) tells apart machines that share a hostname and a disk name.
   */
  lock(host: string, disk: string, machine?: string): DiskLock | null;
  /** Reserves a new partial backup of host/disk made at `when` (throws errno errors, or StoreError LAYOUT). */
  create(host: string, disk: string, when: Date): NewBackup;
  /** A partial to read back before continuing it. */
  openPartial(b: StoredBackup): PartialBackup;
  /** Continues a partial after its checked durable prefix: `entries` are the prefix's frames. */
  resume(b: StoredBackup, manifest: Manifest, entries: SeekEntry[]): BackupWriter;
  /** Rewrites a backup's manifest (a partial marked not resumable). */
  saveManifest(b: StoredBackup, m: Manifest): void;
  /** A backup by ID (host/disk/name), strictly inside the store; null when there is none. */
  find(id: string): StoredBackup | null;
  /** The same for changing it (delete, prune): every step a plain directory, no link followed. */
  findStrict(id: string): StoredBackup | null;
  /** A backup's manifest read again (StoreError DAMAGED, NEWER_FORMAT, NOT_A_BACKUP or an errno error when it cannot be). */
  manifestOf(b: StoredBackup): Manifest;
  /** Opens a backup for reading (its data, chunk list, digests); throws StoreError or errno errors. */
  open(b: StoredBackup): BackupReader;
  /** Bytes a backup takes in the store. */
  storedBytes(b: StoredBackup): number;
  /** When anything of a backup last changed (ms since the epoch). */
  lastActivity(b: StoredBackup): number;
  /** Removes a backup crash-safely: it is whole or out of every listing, never half-deleted and listed. */
  delete(b: StoredBackup): void;
  /** Finishes deletions a crash cut short; returns what they were. */
  finishDeletions(dryRun: boolean): string[];
}

export interface DiskLock {
  release(): void;
}

/** A new backup's reserved name; start() writes its manifest and opens its files. */
export interface NewBackup {
  /** host/disk/timestamp: the ID it will have when complete */
  readonly id: string;
  readonly location: string;
  /**
   * Writes its manifest and opens its files. The store sets the manifest's
   * `format`, and on a file system that can share blocks between files its
   * `align` (docs/FORMAT.md §3.5).
   */
  start(manifest: NewManifest): Promise<BackupWriter>;
}

/**
 * A backup being written. Frames are recorded in chunk order; record() says
 * the position a frame goes to, and whoever checked it (a worker thread)
 * writes it there into `frameTarget`, so the caller never blocks on the disk.
 */
export interface BackupWriter {
  /** the ID it has when complete */
  readonly id: string;
  /** the partial's location, and its ID while partial */
  readonly location: string;
  readonly partialId: string;
  /** the data file being written, for messages */
  readonly dataLocation: string;
  /** its manifest: the caller fills it in; checkpoint(), commit() and saveManifest() store it */
  readonly manifest: Manifest;
  /** a file descriptor the workers pwrite recorded frames into, at the positions record() gave */
  readonly frameTarget: number;
  readonly chunks: number;
  readonly rawBytes: number;
  /** bytes of frames recorded (the data file's length once they are written) */
  readonly storedBytes: number;
  /**
   * Records chunk `frame` (with a content checksum) and returns where it goes
   * in frameTarget, for the worker that checks it to write (writeFrame). With
   * `source` (another backup's entry of the same store, BackupReader.extent)
   * the write may clone it from there instead, sharing its blocks.
   */
  record(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint, source?: { fd: number; offset: number; length: number }): FrameWrite;
  /** Records and writes a frame at once (tools and tests). */
  append(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint): void;
  /** Records the next checked chunk's digest, and its stored frame's digest (frame-xxh3.txt; in chunk order). */
  recordDigest(digest: string, frameDigest: string): void;
  /** Forgets chunks from `chunks` on (sent again); nobody may be writing a frame meanwhile. */
  truncateTo(chunks: number): void;
  /**
   * Makes what was recorded so far durable (off the main thread) and notes it
   * in the manifest as the prefix a later push may continue after.
   */
  checkpoint(): Promise<void>;
  /** Seals the data (seek table, sync, final name); returns its stored size. */
  finish(): number;
  /** After finish(): stores the manifest and gives the backup its final name; returns its location. */
  commit(): string;
  /** Its final location once commit() has given it its final name (even if a later step of commit failed), else null. */
  readonly committed: string | null;
  /** Stores the manifest as it stands (a partial that stopped); errors are the caller's. */
  saveManifest(): void;
  /** Closes the files; what was written stays in the partial. */
  close(): void;
}

/** A stored backup opened for reading. */
export interface BackupReader {
  readonly location: string;
  /** its data file, for messages */
  readonly dataLocation: string;
  readonly manifest: Manifest | null;
  /** one entry per chunk: stored and raw size */
  readonly entries: readonly SeekEntry[];
  readonly rawSize: number;
  readonly chunks: number;
  /** The stored frame of chunk i, read into `into` when it fits. */
  frame(i: number, into?: Uint8Array): Uint8Array;
  /**
   * Where chunk i's entry (frame and padding) lies in the data file, for a
   * writer of the same store to clone it (docs/FORMAT.md §3.5).
   */
  extent(i: number): { fd: number; offset: number; length: number };
  /**
   * The chunk list from its first line, in order; null when the backup has
   * none (no manifest, or no list). `required`: a missing list throws instead.
   */
  chunkList(required?: boolean): ChunkLines | null;
  /**
   * Every chunk's XXH3-64 from the chunk list, checked against the frames
   * (throws DAMAGED); null when it has none (as chunkList()), unless `required`.
   */
  checksums(required?: boolean): BigUint64Array | null;
  /** digests.txt as stored (throws an errno error when it cannot be read). */
  digestList(): Buffer;
  /** Its size in bytes, or -1 when there is none. */
  digestListSize(): number;
  /**
   * frame-xxh3.txt (docs/FORMAT.md §4b; without one, the frame-digests.txt
   * of the version before), opened when it has exactly one line per chunk;
   * else (none, cut short, unreadable) null. Its lines are read one at a
   * time, as asked: a base of millions of chunks is never read whole.
   */
  frameDigests(): FrameDigests | null;
  /** The files that make it up (a restore target must not be one of them). */
  members(): string[];
  close(): void;
}

export interface FrameDigests {
  /** line i's digest (hex: 16 digits of XXH3-64, or 64 of an older list's SHA-256), or null when it is not one (or cannot be read) */
  at(i: number): string | null;
  close(): void;
}

export interface ChunkLines {
  next(): ChunkLine | null;
  close(): void;
}

/** What is at a path given for a backup (a directory or its data file), for verify, restore and nbd. */
export type BackupAt =
  | { exists: false }
  | {
      exists: true;
      location: string;
      dataLocation: string;
      isDir: boolean;
      manifest: { ok: true; manifest: Manifest } | { ok: false; error: unknown; at: string } | null;
      hasData: boolean;
      /** a path to a file that starts like zstd data */
      looksLikeData: boolean;
      partial: boolean;
      /** the data is files.tar.zst */
      filesData: boolean;
    };

/** What a backup's data file is called in the local store (for messages). */
export function dataFileName(kind: "image" | "files"): string {
  return kind === "files" ? FILES_FILE : IMAGE_FILE;
}

/** The repository at `location` (a directory: the local store). */
export function openRepository(location: string): Repository {
  return new LocalRepository(location);
}

/** Looks at a path given for one backup, outside any repository. */
export function backupAt(p: string): BackupAt {
  return probeLocalBackup(p);
}

/** Opens the backup a backupAt() found. */
export function openBackupAt(at: Extract<BackupAt, { exists: true }>): BackupReader {
  return openLocalBackup(at.location, at.dataLocation, at.manifest?.ok ? at.manifest.manifest : null);
}
