// tbbackup delete ID... [--out DIR]: remove stored backups by ID, crash-safely.
import type { Command } from "commander";
import { bytes } from "../ui/format.ts";
import { action, existingStore, printJson, type GlobalOpts } from "./common.ts";

export function register(program: Command): void {
  program
    .command("delete")
    .description("delete stored backups by ID (as 'tbbackup list' shows them)")
    .argument("<id...>", "backup IDs: host/disk/timestamp")
    .option("--out <dir>", "the store (default: /var/lib/tbbackup, or $TBBACKUP_STORE)")
    .option("--json", "print JSON")
    .action(
      action(async (ids: string[], o: { out?: string } & GlobalOpts) => {
        const { resolveForDelete, deleteResolved } = await import("../core/housekeeping.ts");
        const root = await existingStore(o.out, "delete");
        // every ID is checked before anything is deleted
        const targets = resolveForDelete(root, ids);
        const deleted: { id: string; storedBytes: number }[] = [];
        for (const t of targets) {
          deleteResolved(root, t.backup);
          deleted.push({ id: t.id, storedBytes: t.storedBytes });
          if (!o.json) process.stdout.write(`deleted ${t.id} (${bytes(t.storedBytes)})\n`);
        }
        if (o.json) printJson({ ok: true, deleted, freedBytes: deleted.reduce((s, d) => s + d.storedBytes, 0) });
      }),
    );
}
