// manifest.json: what a stored backup is, where it came from, and how to check it.
import * as fs from "node:fs";
import * as path from "node:path";
import type { DiskIdentity, FilesSummary, HostIdentity, Layout, MountedRw } from "../protocol/messages.ts";
import { FILE_MODE, MANIFEST_FILE, fsyncDir } from "./layout.ts";
import { StoreError } from "./errors.ts";
import { digestAlgorithmOf, type DigestAlgorithm, type RootAlgorithm } from "./root.ts";

/**
 * The newest format this version reads, and writes for a backup whose chunk
 * digests are BLAKE3 (docs/FORMAT.md §4a): 4, aligned or not. With SHA-256
 * chunk digests (a sender that predates BLAKE3, or a backup continuing a
 * chain of such: README, "Incremental backups"), 3 for an aligned image
 * (`align`: frames padded to file-system blocks, docs/FORMAT.md §3.5), and 2
 * otherwise: the integrity root (`root`, `digests`) and an optional `sha256`.
 * Each is the oldest format whose readers can check the backup, so an older
 * tbbackup refuses what it could not check. Format 1 manifests (a `sha256`,
 * no root) are still read, verified and restored.
 */
export const MANIFEST_FORMAT = 4;
/** an image with padding, SHA-256 chunk digests */
export const ALIGNED_FORMAT = 3;
/** an image without padding, SHA-256 chunk digests (a tbbackup older than alignment reads it) */
export const UNALIGNED_FORMAT = 2;

/** The format a backup is written as: the oldest that can read it. */
export function formatFor(align: number, digest: DigestAlgorithm): number {
  return digest === "blake3" ? MANIFEST_FORMAT : align ? ALIGNED_FORMAT : UNALIGNED_FORMAT;
}

export type BackupStatus = "complete" | "partial" | "failed";

export interface Manifest {
  format: number;
  id: string;
  kind: "image" | "files";
  status: BackupStatus;
  /** why a partial or failed backup stopped */
  reason?: string;
  /** partial only: what was durable when it stopped, for resuming */
  durable?: { chunks: number; rawBytes: number; storedBytes: number; chunkListBytes: number };
  /** when an interrupted push was continued */
  resumed?: { at: string; fromChunk: number }[];
  label: string | null;
  host: HostIdentity;
  disk: DiskIdentity;
  tool: { name: string; version: string; protocol: number };
  receiver: { hostname: string; tool: string };
  session: string;
  chunkSize: number;
  compression: { algorithm: "zstd"; level: number; format: "zstd-seekable" };
  /** `same`: chunks copied from the base backup (incremental push) */
  chunks: { count: number; zero: number; same?: number; checksum: "xxh3-64"; file: string };
  /** incremental push: the backup unchanged chunks were copied from, and their stored bytes (docs/FORMAT.md §5) */
  base?: string;
  sharedBytes?: number;
  /** raw bytes of the image (or tar stream) */
  size: number;
  storedBytes: number;
  /** the whole-image SHA-256: always in format 1; in format 2 only when asked for (--sha256) */
  sha256: string | null;
  /** format 2: the integrity root (docs/FORMAT.md §4a), null until complete */
  root?: string | null;
  /** format 2 and later: how the root is made (its chunk digest) and where the per-chunk digests are */
  digests?: { algorithm: RootAlgorithm; file: string };
  data: string;
  /** format 3: large frames start on multiples of this many bytes (the store's file-system block), docs/FORMAT.md §3.5 */
  align?: number;
  timings: { started: string; finished: string | null; seconds: number | null };
  files?: FilesSummary;
  /** an image pushed with used-block imaging: the partitions and how each was imaged (docs/FORMAT.md) */
  layout?: Layout;
  /** file systems of the disk that were mounted read-write while it was pushed (the image may be inconsistent) */
  mountedRw?: MountedRw[];
}

/**
 * The chunk digest of a backup's root: SHA-256 in one without `digests`
 * before format 4 (format 1 has no root); null for one this version does not
 * know, or a format 4 manifest without `digests` (damaged).
 */
export function chunkDigestOf(m: Manifest): DigestAlgorithm | null {
  if (!m.digests) return m.format >= 4 ? null : "sha256";
  return digestAlgorithmOf(m.digests.algorithm);
}

/** Why chunkDigestOf(m) is null, for an error line: "its manifest ..." */
export function unknownDigest(m: Manifest): string {
  return m.digests ? `its manifest names chunk digests of an unknown kind (${String(m.digests.algorithm).slice(0, 40)})` : `its manifest (format ${m.format}) names no chunk digest`;
}

export function writeManifest(dir: string, m: Manifest): void {
  const file = path.join(dir, MANIFEST_FILE);
  const tmp = file + ".tmp";
  const fd = fs.openSync(tmp, "w", FILE_MODE);
  try {
    fs.writeSync(fd, JSON.stringify(m, null, 2) + "\n");
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(dir);
}

export function readManifest(dir: string): Manifest {
  const text = fs.readFileSync(path.join(dir, MANIFEST_FILE), "utf8");
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new StoreError("DAMAGED", (e as Error).message);
  }
  if (typeof m !== "object" || m === null || typeof m.format !== "number") throw new StoreError("NOT_A_BACKUP", "not a tbbackup manifest");
  if (m.format > MANIFEST_FORMAT) throw new StoreError("NEWER_FORMAT", `manifest format ${m.format} is newer than this tbbackup understands`);
  return m;
}
