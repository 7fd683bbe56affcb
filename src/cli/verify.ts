// tbbackup verify PATH: re-read a stored backup and check everything.
import type { Command } from "commander";
import { verify } from "../core/verify.ts";
import { makeReporter } from "../ui/progress.ts";
import { bytes } from "../ui/format.ts";
import { action, printJson, type GlobalOpts } from "./common.ts";

export function register(program: Command): void {
  program
    .command("verify")
    .description("check a stored backup: every chunk and the whole-image SHA-256")
    .argument("<path>", "a backup directory or its image.zst")
    .option("--json", "print JSON")
    .action(
      action(async (p: string, o: GlobalOpts) => {
        const reporter = makeReporter();
        try {
          const r = await verify(p, reporter);
          reporter.stop();
          if (o.json) printJson(r);
          else process.stdout.write(`ok: ${r.path}: ${r.chunks} chunks, ${bytes(r.bytes)}, sha256 ${r.sha256}\n`);
        } finally {
          reporter.stop();
        }
      }),
    );
}
