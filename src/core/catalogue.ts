// The catalogue: what backups a store directory holds.
import * as fs from "node:fs";
import * as path from "node:path";
import { PARTIAL_SUFFIX, IMAGE_FILE, FILES_FILE, DELETING_SUFFIX } from "../store/layout.ts";
import { readManifest, type Manifest } from "../store/manifest.ts";
import { storeKind } from "../store/errors.ts";

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

function dirs(p: string): string[] {
  try {
    return fs.readdirSync(p, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();
  } catch {
    return [];
  }
}

/** Bytes a directory's files take on disk (what du counts), not descending further. */
export function diskUsage(dir: string): number {
  let total = 0;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return 0;
  }
  for (const n of names) {
    try {
      const st = fs.lstatSync(path.join(dir, n));
      if (st.isFile()) total += st.blocks * 512;
    } catch {}
  }
  return total;
}

export function entryFor(dir: string, id: string): BackupEntry {
  const [host = "", disk = ""] = id.split("/");
  let m: Manifest | null = null;
  // why an unreadable one is: a newer tbbackup's backup is not a damaged one
  let why: string | undefined;
  try {
    m = readManifest(dir);
  } catch (e) {
    why = storeKind(e) === "NEWER_FORMAT" ? "written by a newer tbbackup: upgrade to read it" : storeKind(e) === "DAMAGED" ? "its manifest is damaged" : undefined;
  }
  const partial = dir.endsWith(PARTIAL_SUFFIX);
  const dataFile = m ? path.join(dir, m.data) : path.join(dir, IMAGE_FILE);
  let status: BackupEntry["status"] = !m ? "unreadable" : partial ? "partial" : m.status;
  if (status === "complete" && !fs.existsSync(dataFile)) status = "unreadable";
  return {
    id,
    host,
    disk,
    kind: m?.kind ?? (fs.existsSync(path.join(dir, FILES_FILE)) ? "files" : "image"),
    status,
    ...(status === "unreadable" && why ? { why } : {}),
    size: m?.size ?? 0,
    // a partial's manifest is written before its data: what it holds is what its files take
    storedBytes: partial || !m ? diskUsage(dir) : m.storedBytes,
    // (a partial's stored bytes cover only part of its size)
    ratio: m && status === "complete" && m.storedBytes > 0 ? m.size / m.storedBytes : null,
    date: m?.timings.started ?? "",
    label: m?.label ?? null,
    sha256: m?.sha256 ?? null,
    root: m?.root ?? null,
    path: dir,
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
  const out: BackupEntry[] = [];
  for (const host of dirs(root)) {
    if (host.startsWith(".")) continue;
    for (const disk of dirs(path.join(root, host))) {
      for (const b of dirs(path.join(root, host, disk))) {
        // being deleted (or left half-deleted by a crash): no longer a backup
        if (b.endsWith(DELETING_SUFFIX) || b.startsWith(".")) continue;
        out.push(entryFor(path.join(root, host, disk, b), `${host}/${disk}/${b}`));
      }
    }
  }
  return out;
}
