// The catalogue: what backups a store directory holds.
import { openRepository, type Repository, type StoredBackup } from "../store/repository.ts";

export interface BackupEntry {
  id: string;
  host: string;
  disk: string;
  kind: "image" | "files";
  status: "complete" | "partial" | "failed" | "unreadable";
  /** for an unreadable one, why, when that is known (a newer format, a damaged manifest) */
  why?: string;
  size: number;
  storedBytes: number;
  ratio: number | null;
  date: string;
  label: string | null;
  sha256: string | null;
  /** the integrity root (docs/FORMAT.md §4a); null for backups older than it */
  root: string | null;
  path: string;
  machineId: string | null;
  productUuid: string | null;
  diskSerial: string | null;
  diskWwn: string | null;
  diskPath: string | null;
  /** what was backed up: a block device or an image file */
  diskKind: "block" | "file" | null;
  /**
   * true: pushed with used-block imaging; blocks the file systems did not use
   * are zeros in the image, and sha256 is of that image, not of the disk
   */
  unusedAsZeros: boolean;
  /** incremental push (README, "Incremental backups and delta restore"): the backup unchanged chunks were copied from, and their stored bytes; null for a full backup */
  base: string | null;
  sharedBytes: number | null;
  /** file-level backups: files that could not be read (stored as zeros or left out), and files that changed while read */
  unreadableFiles?: number;
  changedFiles?: number;
}

/** A listed backup as list, prune and serve-restore show it. */
export function entryFor(repo: Repository, b: StoredBackup): BackupEntry {
  const m = b.manifest;
  let status: BackupEntry["status"] = !m ? "unreadable" : b.partial ? "partial" : m.status;
  if (status === "complete" && !b.hasData) status = "unreadable";
  // why an unreadable one is: a newer tbbackup's backup is not a damaged one
  const why = b.manifestTrouble === "NEWER_FORMAT" ? "written by a newer tbbackup: upgrade to read it" : b.manifestTrouble === "DAMAGED" ? "its manifest is damaged" : undefined;
  return {
    id: b.id,
    host: b.host,
    disk: b.disk,
    kind: m?.kind ?? (b.looksLikeFiles ? "files" : "image"),
    status,
    ...(status === "unreadable" && why ? { why } : {}),
    size: m?.size ?? 0,
    // a partial's manifest is written before its data: what it holds is what its files take
    storedBytes: b.partial || !m ? repo.storedBytes(b) : m.storedBytes,
    // (a partial's stored bytes cover only part of its size)
    ratio: m && status === "complete" && m.storedBytes > 0 ? m.size / m.storedBytes : null,
    date: m?.timings.started ?? "",
    label: m?.label ?? null,
    sha256: m?.sha256 ?? null,
    root: m?.root ?? null,
    path: b.location,
    machineId: m?.host.machineId ?? null,
    productUuid: m?.host.productUuid ?? null,
    diskSerial: m?.disk.serial ?? null,
    diskWwn: m?.disk.wwn ?? null,
    diskPath: m?.disk.path ?? null,
    diskKind: m?.disk.kind === "block" || m?.disk.kind === "file" ? m.disk.kind : null,
    unusedAsZeros: m?.layout !== undefined,
    base: typeof m?.base === "string" ? m.base : null,
    sharedBytes: typeof m?.sharedBytes === "number" ? m.sharedBytes : null,
    ...(m?.kind === "files" && m.files ? { unreadableFiles: m.files.unreadable?.length ?? 0, changedFiles: m.files.changed?.length ?? 0 } : {}),
  };
}

/** Every backup under root, oldest first within each host/disk. */
export function listBackups(root: string): BackupEntry[] {
  const repo = openRepository(root);
  return repo.list().map((b) => entryFor(repo, b));
}

/** The backups verify --all checks: every one with anything of a backup in it (a manifest or its data). */
export function listVerifiable(root: string): BackupEntry[] {
  const repo = openRepository(root);
  return repo
    .list()
    .filter((b) => b.hasAnyFile)
    .map((b) => entryFor(repo, b));
}
