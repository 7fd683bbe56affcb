// tbbackup verify PATH: re-read a stored backup and check everything.
import type { Command } from "commander";
import { bytes } from "../ui/format.ts";
import { action, existingStore, exitWith, printJson, type GlobalOpts } from "./common.ts";
import { TbError } from "../errors.ts";
import { dataFileName } from "../store/repository.ts";

export function register(program: Command): void {
  program
    .command("verify")
    .description("check a stored backup: every chunk and the whole-image SHA-256")
    .argument("[path]", "a backup directory or its image.zst")
    .option("--out <dir>", "check every complete backup in this store instead (with no PATH and no --out: /var/lib/tbbackup, or $TBBACKUP_STORE)")
    .option("--json", "print JSON")
    .action(
      action(async (p: string | undefined, o: { out?: string } & GlobalOpts) => {
        const { verify } = await import("../core/verify.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        const { listVerifiable } = await import("../core/catalogue.ts");
        if (p && o.out) throw new TbError("USAGE", "verify takes a PATH or --out DIR, not both", "run 'tbbackup verify --help' for usage");
        // neither: the default store, when there is one
        if (!p) o.out = await existingStore(o.out, "verify");
        const reporter = makeReporter();
        try {
          if (p) {
            const r = await verify(p, reporter);
            reporter.stop();
            if (o.json) printJson(r);
            else process.stdout.write(`ok: ${r.path}: ${r.chunks} chunks, ${bytes(r.bytes)}, root ${r.root}${r.sha256 ? `, sha256 ${r.sha256}` : ""}\n`);
            return 0;
          }
          const results: { id: string; ok: boolean; error?: string }[] = [];
          // (a directory three levels down with none of a backup's files is not one: verify --out /etc)
          const all = listVerifiable(o.out!);
          if (all.length === 0) throw new TbError("NOT_FOUND", `no backups found in ${o.out}`, "give the directory passed to 'tbbackup receive --out'");
          const partial = all.filter((b) => b.status === "partial" || b.status === "failed").length;
          // a complete backup whose data file or manifest is gone or unreadable is a bad one
          for (const b of all.filter((b) => b.status === "complete" || b.status === "unreadable")) {
            if (b.status === "unreadable") {
              results.push({ id: b.id, ok: false, error: `its manifest or ${dataFileName(b.kind)} is missing or unreadable` });
              if (!o.json) process.stdout.write(`BAD: ${b.id}: ${results[results.length - 1]!.error}\n`);
              continue;
            }
            try {
              await verify(b.path, reporter);
              results.push({ id: b.id, ok: true });
            } catch (e) {
              results.push({ id: b.id, ok: false, error: e instanceof TbError ? e.oneLine() : String(e) });
            }
            reporter.stop();
            if (!o.json) {
              const last = results[results.length - 1]!;
              process.stdout.write(last.ok ? `ok: ${last.id}\n` : `BAD: ${last.id}: ${last.error}\n`);
            }
          }
          const bad = results.filter((r) => !r.ok).length;
          if (o.json) printJson({ ok: bad === 0, checked: results.length, bad, partial, results });
          else if (partial) process.stdout.write(`(${partial} unfinished backup${partial === 1 ? "" : "s"} not checked: .partial or failed)\n`);
          // (one JSON object: the summary above, not an error object after it)
          if (bad > 0) return exitWith(new TbError("VERIFY", `${bad} of ${results.length} backups in ${o.out} failed verification`, "make new backups of those disks"));
        } finally {
          reporter.stop();
        }
      }),
    );
}
