// Retention: which backups of one host/disk a --keep-* policy keeps, in the
// spirit of restic's `forget` (a backup kept by any rule is kept; each rule
// says why). Pure: dates in, decisions out; housekeeping.ts acts on them.

export interface KeepPolicy {
  /** the newest N backups */
  last: number;
  /** the newest backup of each of the last N days (UTC) that have one */
  daily: number;
  /** the same per ISO week */
  weekly: number;
  /** the same per calendar month */
  monthly: number;
}

export interface Dated {
  id: string;
  time: Date;
}

/** "2026-12-06" */
function dayKey(d: Date): string {
  return d.toISOString().slice(0, 10);
}

/** ISO 8601 week: "2026-W49" (the week's Thursday decides its year). */
function weekKey(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - dow);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, "0")}`;
}

function monthKey(d: Date): string {
  return d.toISOString().slice(0, 7);
}

/**
 * For one group (one host/disk), the reasons each backup is kept; a backup
 * with no reasons goes. The newest is always kept ("newest").
 */
export function applyPolicy(backups: Dated[], policy: KeepPolicy): Map<string, string[]> {
  const newestFirst = [...backups].sort((a, b) => b.time.getTime() - a.time.getTime() || (a.id < b.id ? 1 : -1));
  const reasons = new Map<string, string[]>(newestFirst.map((b) => [b.id, []]));
  newestFirst.forEach((b, i) => {
    if (i === 0) reasons.get(b.id)!.push("newest");
    if (i < policy.last) reasons.get(b.id)!.push(`last ${policy.last}`);
  });
  const buckets: [string, number, (d: Date) => string][] = [
    ["daily", policy.daily, dayKey],
    ["weekly", policy.weekly, weekKey],
    ["monthly", policy.monthly, monthKey],
  ];
  for (const [rule, n, key] of buckets) {
    let seen: string | null = null;
    let kept = 0;
    for (const b of newestFirst) {
      if (kept >= n) break;
      const k = key(b.time);
      if (k === seen) continue;
      seen = k;
      kept++;
      reasons.get(b.id)!.push(`${rule} ${k}`);
    }
  }
  return reasons;
}

/** When a backup was made, from its directory name (20261206T123407Z[-n]); null if the name is not one. */
export function timeFromName(name: string): Date | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z(?:-\d+)?(?:\.partial)?$/.exec(name);
  if (!m) return null;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
  return Number.isFinite(t) ? new Date(t) : null;
}
