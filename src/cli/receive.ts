// tbbackup receive --out DIR: store pushed backups; serve list/restore with --allow-restore.
import { Option, type Command } from "commander";
import type { SessionResult } from "../core/receive.ts";
import type { Hello } from "../protocol/messages.ts";
import { TbError, errnoText, isErrno } from "../errors.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { action, intOption, printJson, onInterrupt, type GlobalOpts } from "./common.ts";
import { THUNDERBOLT_GROUP, resolveStream, withThunderboltOptions } from "./stream.ts";

/** File systems of the kernel's that hold no files of ours (statfs magic numbers). */
const KERNEL_FS: Record<number, string> = { 0x9fa0: "proc", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x27e0eb: "cgroup", 0x63677270: "cgroup2", 0x62656570: "configfs" };

/**
 * The store directory, checked before anything else: an existing directory, or
 * a new one made only when its parent exists (a typo must not become a new
 * store unnoticed; the first line of output says it was made). Returns that line, or null.
 */
function prepareOut(out: string): string | null {
  const abs = path.resolve(out);
  const parent = path.dirname(abs);
  const cannot = (why: string) => new TbError("DEST", `cannot write to ${out}: ${why}`, "choose a writable directory for --out (the one that holds the backups, or a new one in an existing directory)");
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(abs);
  } catch (e) {
    if (isErrno(e, "ENOTDIR")) throw cannot(`a part of that path is a file, not a directory`);
    if (!isErrno(e, "ENOENT")) throw cannot(errnoText(e));
  }
  if (st) {
    if (!st.isDirectory()) throw cannot(`it is ${st.isFile() ? "a regular file" : "something else"}, not a directory`);
    return null;
  }
  const up = fs.statSync(parent, { throwIfNoEntry: false });
  if (!up) throw new TbError("DEST", `${out} does not exist, and neither does ${parent}`, `check the path (a mistyped --out would become a new store); to start a new store there, create it first (mkdir -p ${abs})`);
  if (!up.isDirectory()) throw cannot(`${parent} is not a directory`);
  try {
    fs.mkdirSync(abs);
  } catch (e) {
    let kind: string | undefined;
    try {
      kind = KERNEL_FS[fs.statfsSync(parent).type];
    } catch {}
    throw cannot(kind ? `${parent} is a ${kind} file system (the kernel's), which stores no files (${errnoText(e)})` : `cannot create it in ${parent}: ${errnoText(e)}`);
  }
  return `created ${abs} (it did not exist; ${parent} did)`;
}

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
        const created = prepareOut(o.out);
        if (created) process.stderr.write(`${created}\n`);
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
