// tbbackup receive --out DIR: store pushed backups; serve list/restore with --allow-restore.
import { Option, type Command } from "commander";
import type { SessionResult } from "../core/receive.ts";
import type { Hello } from "../protocol/messages.ts";
import { TbError } from "../errors.ts";
import { action, intOption, printJson, onInterrupt, type GlobalOpts } from "./common.ts";
import { THUNDERBOLT_GROUP, resolveStream, withThunderboltOptions } from "./stream.ts";

export function register(program: Command): void {
  withThunderboltOptions(
    program.command("receive")
      .description("receive backups and store them under DIR (runs until stopped)")
      .requiredOption("--out <dir>", "where backups are stored")
      .option("--stream <spec>", "transport: /dev/tbstreamX, unix:PATH, tcp:[HOST:]PORT (loopback unless HOST) or -")
      .option("--once", "exit after one session (exit status = that session's)")
      .option("--allow-restore", "also serve list and restore requests")
      .option("--idle <seconds>", "abandon a session silent for this long", intOption(5, 86400), 300)
      .option("--json", "print one JSON object per session on stdout"),
  )
    .addOption(new Option("--hopids <in:out>", "use these HopIDs instead of the first free pair from 10").helpGroup(THUNDERBOLT_GROUP))
    .action(
      action(async (o: { out: string; stream?: string; once?: boolean; allowRestore?: boolean; idle: number; peer?: string; hopids?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        const { serve } = await import("../core/receive.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        if (o.stream === "-" && o.json) throw new TbError("USAGE", "--json cannot be used with --stream -", "stdout carries the stream");
        const reporter = makeReporter();
        let serving: Hello["role"] | null = null;
        onInterrupt(() =>
          serving === "push"
            ? "receiver stopped; the push in progress is kept as .partial (push again to resume it)"
            : serving
              ? `receiver stopped; the ${serving} it was serving is cut (run it again)`
              : "receiver stopped between sessions; nothing was lost",
        );
        const stream = await resolveStream(o.stream, "receive", { peer: o.peer, hopids: o.hopids, ringSize: o.ringSize, throttling: o.throttling });
        const results = await serve({
          out: o.out,
          transport: transportFor(stream.spec, true, { watch: stream.watch }),
          once: o.once === true,
          allowRestore: o.allowRestore === true,
          idleMs: o.idle * 1000,
          reporter,
          onSessionStart: (role) => (serving = role),
          onSession: (r: SessionResult) => {
            serving = null;
            if (o.json) printJson(r);
          },
        }).finally(() => stream.cleanup());
        reporter.stop();
        const last = results[results.length - 1];
        if (o.once && last && !last.ok) {
          throw new TbError((last.error?.code as TbError["code"]) ?? "INTERNAL", `session failed: ${last.error?.message ?? "unknown"}`, "");
        }
      }),
    );
}
