// Housekeeping on a store: deleting backups by ID and pruning by a retention
// policy (retention.ts). A deletion first renames the backup directory to
// <name>.deleting (and fsyncs its parent), then removes it: a crash at any
// point leaves the backup whole or out of every listing, never half-deleted
// and listed. Leftover .deleting directories are finished by the next prune.
import * as fs from "node:fs";
import * as path from "node:path";
import { DELETING_SUFFIX, PARTIAL_SUFFIX, backupDirStrict, fsyncDir } from "../store/layout.ts";
import { readManifest } from "../store/manifest.ts";
import { diskUsage, listBackups, type BackupEntry } from "./catalogue.ts";
import { TbError, errnoText } from "./errors.ts";
import { applyPolicy, timeFromName, type KeepPolicy } from "./retention.ts";

/** A partial changed more recently than this may be one a receiver is writing now: never removed. */
export const ACTIVE_MS = 60_000;

export interface Decision {
  id: string;
  host: string;
  disk: string;
  status: BackupEntry["status"];
  storedBytes: number;
  action: "keep" | "remove";
  /** why it is kept (the rules that keep it), or why it goes */
  reasons: string[];
}

export interface PruneOptions extends KeepPolicy {
  /** partials whose last write is older than this many days go */
  keepPartialDays: number;
  host?: string;
  disk?: string;
  now?: Date;
}

/** When anything in a backup directory last changed (ms since the epoch). */
export function lastActivity(dir: string): number {
  let t = 0;
  try {
    t = fs.statSync(dir).mtimeMs;
    for (const n of fs.readdirSync(dir)) {
      try {
        t = Math.max(t, fs.lstatSync(path.join(dir, n)).mtimeMs);
      } catch {}
    }
  } catch {}
  return t;
}

/** Whether a receiver may be writing this partial now (it changed under ACTIVE_MS ago). */
export function mayBeActive(dir: string, now: Date): boolean {
  return dir.endsWith(PARTIAL_SUFFIX) && now.getTime() - lastActivity(dir) < ACTIVE_MS;
}

/** Removes a backup directory, crash-safely: rename to .deleting and fsync the parent, then delete. */
export function removeBackupDir(dir: string): void {
  const parent = path.dirname(dir);
  let doomed = dir + DELETING_SUFFIX;
  for (let n = 1; fs.existsSync(doomed); n++) doomed = `${dir}-${n}${DELETING_SUFFIX}`;
  try {
    fs.renameSync(dir, doomed);
    fsyncDir(parent);
  } catch (e) {
    throw new TbError("DEST", `cannot remove ${dir}: ${errnoText(e)}`, "check the store's permissions (run as the user that runs the receiver)");
  }
  // from here it is out of every listing; what is left if this stops is finished by the next prune
  fs.rmSync(doomed, { recursive: true, force: true });
}

/** Finishes deletions a crash or kill cut short; returns the directories removed. */
export function finishDeletions(root: string, dryRun = false): string[] {
  const done: string[] = [];
  for (const host of subdirs(root)) {
    for (const disk of subdirs(path.join(root, host))) {
      for (const b of subdirs(path.join(root, host, disk))) {
        if (!b.endsWith(DELETING_SUFFIX)) continue;
        const p = path.join(root, host, disk, b);
        if (!dryRun) fs.rmSync(p, { recursive: true, force: true });
        done.push(`${host}/${disk}/${b}`);
      }
    }
  }
  return done;
}

function subdirs(p: string): string[] {
  try {
    return fs.readdirSync(p, { withFileTypes: true }).filter((d) => d.isDirectory() && !d.name.startsWith(".")).map((d) => d.name).sort();
  } catch {
    return [];
  }
}

/** The backups given by ID, resolved strictly inside root; any unknown ID or busy partial stops it before anything is deleted. */
export function resolveForDelete(root: string, ids: string[], now = new Date()): { id: string; dir: string; storedBytes: number }[] {
  const out: { id: string; dir: string; storedBytes: number }[] = [];
  for (const id of ids) {
    const dir = backupDirStrict(root, id);
    if (!dir) throw new TbError("NOT_FOUND", `no backup ${JSON.stringify(id)} in ${root}`, "IDs look like host/disk/timestamp, as 'tbbackup list' shows them");
    if (mayBeActive(dir, now)) throw new TbError("REFUSED", `${id} changed less than a minute ago: a receiver may be writing it`, "wait until the push has ended (or stop it), then delete it");
    out.push({ id, dir, storedBytes: diskUsage(dir) });
  }
  return out;
}

/** Decides, for every backup in root (filtered by host/disk), whether the policy keeps it. */
export function planPrune(root: string, o: PruneOptions): Decision[] {
  const now = o.now ?? new Date();
  const entries = listBackups(root).filter((b) => (!o.host || b.host === o.host) && (!o.disk || b.disk === o.disk));
  const decisions: Decision[] = [];
  const decide = (b: BackupEntry, action: Decision["action"], reasons: string[]) =>
    decisions.push({ id: b.id, host: b.host, disk: b.disk, status: b.status, storedBytes: b.storedBytes, action, reasons });
  const groups = new Map<string, { b: BackupEntry; time: Date }[]>();
  for (const b of entries) {
    const name = b.id.split("/")[2]!;
    if (name.endsWith(PARTIAL_SUFFIX)) {
      decidePartial(b, o, now, decide);
      continue;
    }
    if (b.status !== "complete") {
      decide(b, "keep", [`${b.status}: left for you to look at (delete it by ID)`]);
      continue;
    }
    const time = timeFromName(name) ?? (b.date ? new Date(b.date) : null);
    if (!time || !Number.isFinite(time.getTime())) {
      decide(b, "keep", ["no date: left for you to look at (delete it by ID)"]);
      continue;
    }
    const key = `${b.host}/${b.disk}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push({ b, time });
  }
  for (const list of groups.values()) {
    const reasons = applyPolicy(list.map((x) => ({ id: x.b.id, time: x.time })), o);
    for (const { b } of list) {
      const r = reasons.get(b.id) ?? [];
      decide(b, r.length ? "keep" : "remove", r.length ? r : ["no rule keeps it"]);
    }
  }
  return decisions.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function decidePartial(b: BackupEntry, o: PruneOptions, now: Date, decide: (b: BackupEntry, a: Decision["action"], r: string[]) => void): void {
  if (mayBeActive(b.path, now)) return decide(b, "keep", ["partial: changed under a minute ago, a receiver may be writing it"]);
  let status: string | null = null;
  try {
    status = readManifest(b.path).status;
  } catch {}
  if (status === "failed") return decide(b, "remove", ["partial: marked not resumable"]);
  const ageDays = (now.getTime() - lastActivity(b.path)) / 86400_000;
  if (ageDays > o.keepPartialDays) return decide(b, "remove", [`partial: last written ${Math.floor(ageDays)} days ago (--keep-partial ${o.keepPartialDays})`]);
  decide(b, "keep", [`partial: resumable (--keep-partial ${o.keepPartialDays} days)`]);
}

/** Carries out one removal of a plan; a partial that came alive meanwhile is kept. */
export function removeDecided(root: string, d: Decision, now = new Date()): boolean {
  const dir = backupDirStrict(root, d.id);
  if (!dir) return false;
  if (mayBeActive(dir, now)) return false;
  removeBackupDir(dir);
  return true;
}
