// Housekeeping on a store: deleting backups by ID and pruning by a retention
// policy (retention.ts). A deletion first renames the backup directory to
// <name>.deleting (and fsyncs its parent), then removes it: a crash at any
// point leaves the backup whole or out of every listing, never half-deleted
// and listed. Leftover .deleting directories are finished by the next prune.
import { openRepository, type Repository, type StoredBackup } from "../store/repository.ts";
import { entryFor, type BackupEntry } from "./catalogue.ts";
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

/** Whether a receiver may be writing this partial now (it changed under ACTIVE_MS ago). */
export function mayBeActive(repo: Repository, b: StoredBackup, now: Date): boolean {
  return b.partial && now.getTime() - repo.lastActivity(b) < ACTIVE_MS;
}

/** Removes a backup, crash-safely (the store renames it out of every listing first, then deletes it). */
export function removeBackup(repo: Repository, b: StoredBackup): void {
  try {
    repo.delete(b);
  } catch (e) {
    throw new TbError("DEST", `cannot remove ${b.location}: ${errnoText(e)}`, "check the store's permissions (run as the user that runs the receiver)");
  }
}

/** Finishes deletions a crash or kill cut short; returns what they were. */
export function finishDeletions(root: string, dryRun = false): string[] {
  return openRepository(root).finishDeletions(dryRun);
}

/** The backups given by ID, found strictly inside root; any unknown ID or busy partial stops it before anything is deleted. */
export function resolveForDelete(root: string, ids: string[], now = new Date()): { id: string; backup: StoredBackup; storedBytes: number }[] {
  const repo = openRepository(root);
  const out: { id: string; backup: StoredBackup; storedBytes: number }[] = [];
  for (const id of ids) {
    const b = repo.findStrict(id);
    if (!b) throw new TbError("NOT_FOUND", `no backup ${JSON.stringify(id)} in ${root}`, "IDs look like host/disk/timestamp, as 'tbbackup list' shows them");
    if (mayBeActive(repo, b, now)) throw new TbError("REFUSED", `${id} changed less than a minute ago: a receiver may be writing it`, "wait until the push has ended (or stop it), then delete it");
    out.push({ id, backup: b, storedBytes: repo.storedBytes(b) });
  }
  return out;
}

/** Deletes what resolveForDelete() found. */
export function deleteResolved(root: string, b: StoredBackup): void {
  removeBackup(openRepository(root), b);
}

/** Decides, for every backup in root (filtered by host/disk), whether the policy keeps it. */
export function planPrune(root: string, o: PruneOptions): Decision[] {
  const repo = openRepository(root);
  const now = o.now ?? new Date();
  const entries = repo
    .list()
    .map((stored) => ({ stored, b: entryFor(repo, stored) }))
    .filter(({ b }) => (!o.host || b.host === o.host) && (!o.disk || b.disk === o.disk));
  const decisions: Decision[] = [];
  const decide = (b: BackupEntry, action: Decision["action"], reasons: string[]) =>
    decisions.push({ id: b.id, host: b.host, disk: b.disk, status: b.status, storedBytes: b.storedBytes, action, reasons });
  const groups = new Map<string, { b: BackupEntry; time: Date }[]>();
  for (const { stored, b } of entries) {
    const name = stored.name;
    if (stored.partial) {
      decidePartial(repo, stored, b, o, now, decide);
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

function decidePartial(repo: Repository, stored: StoredBackup, b: BackupEntry, o: PruneOptions, now: Date, decide: (b: BackupEntry, a: Decision["action"], r: string[]) => void): void {
  // (one look at the directory serves both the "busy" test and the age)
  const idleMs = now.getTime() - repo.lastActivity(stored);
  if (idleMs < ACTIVE_MS) return decide(b, "keep", ["partial: changed under a minute ago, a receiver may be writing it"]);
  // the listing read its manifest already (null where it could not be read)
  if (stored.manifest?.status === "failed") return decide(b, "remove", ["partial: marked not resumable"]);
  const ageDays = idleMs / 86400_000;
  if (ageDays > o.keepPartialDays) return decide(b, "remove", [`partial: last written ${Math.floor(ageDays)} days ago (--keep-partial ${o.keepPartialDays})`]);
  decide(b, "keep", [`partial: resumable (--keep-partial ${o.keepPartialDays} days)`]);
}

/** Carries out one removal of a plan; a partial that came alive meanwhile is kept. */
export function removeDecided(root: string, d: Decision, now = new Date()): boolean {
  const repo = openRepository(root);
  const b = repo.findStrict(d.id);
  if (!b) return false;
  if (mayBeActive(repo, b, now)) return false;
  removeBackup(repo, b);
  return true;
}
