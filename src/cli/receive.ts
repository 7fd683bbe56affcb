// tbbackup receive [--out DIR]: store pushed backups; serve list/restore with --allow-restore.
import { Option, type Command } from "commander";
import type { SessionResult } from "../core/receive.ts";
import type { Hello } from "../protocol/messages.ts";
import * as fs from "node:fs";
import { TbError, errnoText } from "../core/errors.ts";
import { DIR_MODE, defaultStore } from "../store/layout.ts";
import { action, intOption, printJson, onInterrupt, type GlobalOpts } from "./common.ts";
import { THUNDERBOLT_GROUP, keyFor, resolveStream, withKey, withKeyOptions, withThunderboltOptions } from "./stream.ts";

/** A group name (or number) as a gid. */
function groupId(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  try {
    for (const line of fs.readFileSync("/etc/group", "utf8").split("\n")) {
      const [n, , gid] = line.split(":");
      if (n === name && gid && /^\d+$/.test(gid)) return Number(gid);
    }
  } catch {}
  const r = Bun.spawnSync(["getent", "group", name], { stdout: "pipe", stderr: "ignore" });
  const gid = r.exitCode === 0 ? r.stdout.toString().split(":")[2] : undefined;
  if (gid && /^\d+$/.test(gid)) return Number(gid);
  throw new TbError("USAGE", `no group named ${JSON.stringify(name)}`, "give an existing group (getent group NAME) or its number to --group");
}

/**
 * The default store: created 0700 when it does not exist yet and its parent
 * does (/var/lib); a missing parent is an error, not a tree made on a guess.
 */
function defaultStoreFor(): string {
  const dir = defaultStore();
  if (fs.existsSync(dir)) return dir;
  try {
    fs.mkdirSync(dir, { mode: DIR_MODE });
  } catch (e) {
    throw new TbError("DEST", `cannot create the default store ${dir}: ${errnoText(e)}`, "give --out DIR, or create it (mkdir -m 0700)");
  }
  return dir;
}

export function register(program: Command): void {
  withThunderboltOptions(
    withKeyOptions(program.command("receive")
      .description("receive backups and store them under DIR (runs until stopped)")
      .option("--out <dir>", "where backups are stored (default: /var/lib/tbbackup, or $TBBACKUP_STORE)")
      .option("--stream <spec>", "transport: /dev/tbstreamX, unix:PATH, tcp:[HOST:]PORT (loopback unless HOST) or -")
      .option("--once", "exit after one session (exit status = that session's)")
      .option("--allow-restore", "also serve list and restore requests")
      .option("--idle <seconds>", "abandon a session silent for this long", intOption(5, 86400), 300)
      .option("--group <name>", "unix: let this group connect to the socket too (0660; default 0600, this user only)")
      .option("--json", "print one JSON object per session on stdout"), true),
  )
    .addOption(new Option("--hopids <in:out>", "use these HopIDs instead of the first free pair from 10").helpGroup(THUNDERBOLT_GROUP))
    .action(
      action(async (o: { keyFile?: string; insecure?: boolean; out?: string; group?: string; stream?: string; once?: boolean; allowRestore?: boolean; idle: number; peer?: string; hopids?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        const { serve } = await import("../core/receive.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        if (o.stream === "-" && o.json) throw new TbError("USAGE", "--json cannot be used with --stream -", "stdout carries the stream");
        if (o.group && !o.stream?.startsWith("unix:")) throw new TbError("USAGE", "--group applies to a unix: socket only", "use it with --stream unix:PATH");
        const gid = o.group === undefined ? undefined : groupId(o.group);
        const key = await keyFor(o.stream, true, o);
        const out = o.out ?? defaultStoreFor();
        const reporter = makeReporter();
        let serving: Hello["role"] | null = null;
        // SIGTERM is how systemd stops a service: a receiver stopped that way has not failed (exit 0)
        onInterrupt(
          () =>
            serving === "push"
              ? "receiver stopped; the push in progress is kept as .partial (push again to resume it)"
              : serving
                ? `receiver stopped; the ${serving} it was serving is cut (run it again)`
                : "receiver stopped between sessions; nothing was lost",
          0,
        );
        const stream = await resolveStream(o.stream, "receive", { peer: o.peer, hopids: o.hopids, ringSize: o.ringSize, throttling: o.throttling });
        const transport = await withKey(transportFor(stream.spec, true, { watch: stream.watch }, { gid }), key, (m) => reporter.info(m));
        const results = await serve({
          out,
          transport,
          once: o.once === true,
          allowRestore: o.allowRestore === true,
          idleMs: o.idle * 1000,
          reporter,
          onSessionStart: (role) => {
            serving = role;
            reporter.stop(); // each session's rate and ETA count from its own start
          },
          onSession: (r: SessionResult) => {
            serving = null;
            reporter.stop();
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
