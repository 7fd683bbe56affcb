// tbbackup mount BACKUP DIR: a stored backup's file systems, read-only, under DIR/p1, DIR/p2, ...
import type { Command } from "commander";
import { action, printJson, type GlobalOpts } from "./common.ts";

export function register(program: Command): void {
  program
    .command("mount")
    .description("mount a stored backup's partitions read-only under DIR/p1, DIR/p2, ... (undo with tbbackup umount DIR)")
    .argument("<backup>", "a backup directory, its image.zst, or an ID with --out")
    .argument("<dir>", "an empty directory (created if missing)")
    .option("--out <dir>", "the store to look the backup ID up in")
    .option("--json", "print JSON")
    .action(
      action(async (backup: string, dir: string, o: { out?: string } & GlobalOpts) => {
        const { mountBackup } = await import("../nbd/mount.ts");
        const r = await mountBackup(backup, dir, { out: o.out });
        if (o.json) printJson({ ok: true, ...r });
        else {
          const ok = r.parts.filter((p) => p.dir);
          if (ok.length) process.stdout.write(`${ok.map((p) => `${p.dir} (${p.fstype})`).join("  ")}: mounted read-only\n`);
          for (const p of r.parts.filter((p) => !p.dir)) process.stdout.write(`${p.name} (${p.device}${p.fstype ? `, ${p.fstype}` : ""}): not mounted: ${p.reason}\n`);
          process.stdout.write(`backup ${r.id} on ${r.loop} (read-only); 'tbbackup umount ${dir}' undoes it\n`);
        }
      }),
    );
}
