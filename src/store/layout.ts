// Where backups live: DIR/<host>/<disk>/<UTC timestamp>[.partial]. Names that
// come from a peer are sanitised so nothing is ever written outside DIR.
import * as path from "node:path";
import * as fs from "node:fs";
import { StoreError } from "./errors.ts";

export const PARTIAL_SUFFIX = ".partial";
export const IMAGE_FILE = "image.zst";
export const FILES_FILE = "files.tar.zst";
export const MANIFEST_FILE = "manifest.json";
export const CHUNKS_FILE = "chunks.txt";
export const DIGESTS_FILE = "digests.txt";
/** the XXH3-64 of each stored frame, taken when it was checked (docs/FORMAT.md §4b) */
export const FRAME_DIGESTS_FILE = "frame-xxh3.txt";
/** the same list with SHA-256 lines, as the version before (session 7) wrote it: still read */
export const SHA_FRAME_DIGESTS_FILE = "frame-digests.txt";
/** A backup directory being removed: renamed to this first, so a crash never leaves a half-deleted backup that looks whole. */
export const DELETING_SUFFIX = ".deleting";

/** Backups are private to the receiver's user: directories 0700, files 0600 (the store's root keeps its own mode). */
export const DIR_MODE = 0o700;
export const FILE_MODE = 0o600;

/** The store used when no --out is given; TBBACKUP_STORE overrides it (tests, other layouts). */
export function defaultStore(): string {
  return process.env.TBBACKUP_STORE || "/var/lib/tbbackup";
}

/** A safe single path component: [A-Za-z0-9._-], no leading dot, 1..64 chars. */
export function sanitizeName(raw: string, fallback = "unknown"): string {
  let s = raw.normalize("NFKC").replace(/[^A-Za-z0-9._-]+/g, "_");
  s = s.replace(/^[._]+/, "").replace(/_+$/, "").slice(0, 64);
  return s || fallback;
}

export function timestampName(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

/** Joins under root and refuses anything that would leave it. */
export function within(root: string, ...parts: string[]): string {
  const base = path.resolve(root);
  const p = path.resolve(base, ...parts);
  if (p !== base && !p.startsWith(base + path.sep)) throw new StoreError("LAYOUT", `path ${p} leaves ${base}`);
  return p;
}

/** Creates a fresh partial directory for a new backup and returns its id and path. */
export function createBackupDir(root: string, host: string, disk: string, when: Date): { id: string; dir: string } {
  const h = sanitizeName(host);
  const d = sanitizeName(disk);
  const parent = within(root, h, d);
  // new directories on the way (the first backup of a host or disk) must survive a crash too
  const first = fs.mkdirSync(parent, { recursive: true, mode: DIR_MODE });
  if (first !== undefined)
    for (let dir = path.resolve(parent); dir !== path.dirname(dir); dir = path.dirname(dir)) {
      fsyncDir(path.dirname(dir));
      if (dir === path.resolve(first)) break;
    }
  const ts = timestampName(when);
  for (let n = 0; n < 1000; n++) {
    const name = n === 0 ? ts : `${ts}-${n}`;
    const final = within(parent, name);
    const partial = final + PARTIAL_SUFFIX;
    if (fs.existsSync(final)) continue;
    try {
      fs.mkdirSync(partial, { mode: DIR_MODE });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw e;
    }
    fsyncDir(parent); // the new directory's entry must survive a crash: a resume looks for it
    return { id: `${h}/${d}/${name}`, dir: partial };
  }
  throw new StoreError("LAYOUT", `too many backups named ${ts} under ${parent}`);
}

/**
 * Resolves a backup ID (host/disk/timestamp) strictly inside root: no "..",
 * no absolute paths, no symlinks that lead out.
 */
export function resolveBackupId(root: string, id: string): string | null {
  const parts = id.split("/");
  if (parts.length !== 3 || parts.some((p) => !p || p === "." || p === ".." || sanitizeName(p, "") !== p)) return null;
  if (parts[2]!.endsWith(DELETING_SUFFIX)) return null; // being deleted
  const p = within(root, ...parts);
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch {
    return null;
  }
  const realRoot = fs.realpathSync(root);
  if (!real.startsWith(realRoot + path.sep)) return null;
  return real;
}

/**
 * A backup's directory by ID, for changing it (delete, prune): each of
 * host/disk/timestamp must be a plain directory right inside the one before
 * (lstat: a symlink is never followed, even one that stays inside root).
 * Null when there is no such backup.
 */
export function backupDirStrict(root: string, id: string): string | null {
  const parts = id.split("/");
  if (parts.length !== 3 || parts.some((p) => !p || p === "." || p === ".." || sanitizeName(p, "") !== p)) return null;
  if (parts[2]!.endsWith(DELETING_SUFFIX)) return null;
  let p = path.resolve(root);
  for (const part of parts) {
    p = within(p, part);
    try {
      if (!fs.lstatSync(p).isDirectory()) return null;
    } catch {
      return null;
    }
  }
  return p;
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
