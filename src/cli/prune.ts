// tbbackup prune --keep-last N ...: remove the backups a retention policy does
// not keep, stale partials, and deletions a crash left unfinished.
import type { Command } from "commander";
import { TbError } from "../core/errors.ts";
import { bytes } from "../ui/format.ts";
import { action, existingStore, intOption, printJson, type GlobalOpts } from "./common.ts";

interface PruneFlags extends GlobalOpts {
  out?: string;
  keepLast?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepPartial: number;
  host?: string;
  disk?: string;
  dryRun?: boolean;
}

export function register(program: Command): void {
  const count = intOption(0, 1_000_000);
  program
    .command("prune")
    .description("remove backups that no --keep-* rule keeps, per host and disk (the newest of each is always kept)")
    .option("--out <dir>", "the store (default: /var/lib/tbbackup, or $TBBACKUP_STORE)")
    .option("--keep-last <n>", "keep the newest N backups", count)
    .option("--keep-daily <n>", "keep the newest backup of each of the last N days that have one", count)
    .option("--keep-weekly <n>", "keep the newest backup of each of the last N weeks that have one", count)
    .option("--keep-monthly <n>", "keep the newest backup of each of the last N months that have one", count)
    .option("--keep-partial <days>", "remove unfinished (.partial) backups not written to for this many days", intOption(0, 36500), 7)
    .option("--host <name>", "only the backups of this host (as in the ID)")
    .option("--disk <name>", "only the backups of this disk (as in the ID)")
    .option("--dry-run", "say what would be removed, remove nothing")
    .option("--json", "print JSON")
    .action(
      action(async (o: PruneFlags) => {
        const { planPrune, removeDecided, finishDeletions } = await import("../core/housekeeping.ts");
        if ([o.keepLast, o.keepDaily, o.keepWeekly, o.keepMonthly].every((n) => n === undefined))
          throw new TbError("USAGE", "prune needs a policy: --keep-last N (and/or --keep-daily, --keep-weekly, --keep-monthly)", "e.g. tbbackup prune --keep-last 3 --keep-daily 7 --dry-run");
        const root = await existingStore(o.out, "prune");
        const say = (line: string) => {
          if (!o.json) process.stdout.write(line + "\n");
        };
        const leftovers = finishDeletions(root, o.dryRun === true);
        for (const l of leftovers) say(`${o.dryRun ? "would finish" : "finished"} deleting ${l} (left by an interrupted delete)`);
        const plan = planPrune(root, {
          last: o.keepLast ?? 0,
          daily: o.keepDaily ?? 0,
          weekly: o.keepWeekly ?? 0,
          monthly: o.keepMonthly ?? 0,
          keepPartialDays: o.keepPartial,
          host: o.host,
          disk: o.disk,
        });
        let freed = 0;
        let removed = 0;
        for (const d of plan) {
          if (d.action === "keep") {
            say(`keep    ${d.id}  ${d.reasons.join(", ")}`);
            continue;
          }
          if (o.dryRun) {
            say(`would remove  ${d.id}  ${bytes(d.storedBytes)}  ${d.reasons.join(", ")}`);
          } else if (removeDecided(root, d)) {
            say(`removed ${d.id}  ${bytes(d.storedBytes)}  ${d.reasons.join(", ")}`);
          } else {
            // (a partial that a receiver started writing again, or gone meanwhile)
            d.action = "keep";
            d.reasons = ["changed while prune ran: left alone"];
            say(`keep    ${d.id}  ${d.reasons[0]}`);
            continue;
          }
          removed++;
          freed += d.storedBytes;
        }
        if (o.json) printJson({ ok: true, dryRun: o.dryRun === true, removed, freedBytes: freed, finishedDeletions: leftovers, backups: plan });
        else say(`${o.dryRun ? "would remove" : "removed"} ${removed} backup${removed === 1 ? "" : "s"} (${bytes(freed)}), kept ${plan.length - removed}`);
      }),
    );
}
