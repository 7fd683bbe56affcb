// tbbackup receive [--out DIR]: store pushed backups; serve list/restore with --allow-restore.
import { Option, type Command } from "commander";
import type { SessionResult } from "../core/receive.ts";
import type { Hello } from "../protocol/messages.ts";
import { TbError, errnoText, isErrno } from "../errors.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { DIR_MODE, defaultStore, fsyncDir, reflinkSetting } from "../store/repository.ts";
import { action, fewerTierUps, intOption, printJson, onInterrupt, type GlobalOpts } from "./common.ts";
import type { Transport } from "../transport/index.ts";
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
    fsyncDir(path.dirname(dir));
  } catch (e) {
    throw new TbError("DEST", `cannot create the default store ${dir}: ${errnoText(e)}`, "give --out DIR, or create it (mkdir -m 0700)");
  }
  return dir;
}

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
    // private, like the default store: backups are whole disks
    fs.mkdirSync(abs, { mode: DIR_MODE });
    fsyncDir(parent);
  } catch (e) {
    let kind: string | undefined;
    try {
      kind = KERNEL_FS[fs.statfsSync(parent).type];
    } catch {}
    throw cannot(kind ? `${parent} is a ${kind} file system (the kernel's), which stores no files (${errnoText(e)})` : `cannot create it in ${parent}: ${errnoText(e)}`);
  }
  return `created ${abs} (it did not exist; ${parent} did)`;
}

/** The transport of a receiver without --stream: every Thunderbolt peer's stream (src/transport/thunderbolt.ts). */
async function thunderboltPeers(o: { peer?: string; hopids?: string; ringSize?: number; throttling?: number; once?: boolean }, log: (m: string) => void): Promise<Transport> {
  const { ThunderboltPeers } = await import("../transport/thunderbolt.ts");
  const { parseHopIds } = await import("../thunderbolt/setup.ts");
  // --once: one session, so one peer (several: choose with --peer)
  return new ThunderboltPeers({ peer: o.peer, hopids: o.hopids ? parseHopIds(o.hopids) : undefined, ringSize: o.ringSize, throttling: o.throttling, log, one: o.once === true });
}

export function register(program: Command): void {
  withThunderboltOptions(
    withKeyOptions(program.command("receive")
      .description("receive backups and store them under DIR (runs until stopped)")
      .option("--out <dir>", "where backups are stored (default: /var/lib/tbbackup, or $TBBACKUP_STORE)")
      .option("--stream <spec>", "transport: /dev/tbstreamX, unix:PATH, tcp:[HOST:]PORT (loopback unless HOST) or -")
      .option("--once", "exit after one session (exit status = that session's)")
      .option("--max-sessions <n>", "sessions served at once: unix:/tcp: connections, or Thunderbolt peers without --stream (default: 2..8 by memory)", intOption(1, 64))
      .option("--allow-restore", "also serve list and restore requests")
      .option("--idle <seconds>", "abandon a session silent for this long", intOption(5, 86400), 300)
      .option("--group <name>", "unix: let this group connect to the socket too (0660; default 0600, this user only)")
      .option("--json", "print one JSON object per session on stdout"), true),
  )
    .addOption(new Option("--hopids <in:out>", "use these HopIDs instead of the first free pair from 10").helpGroup(THUNDERBOLT_GROUP))
    .action(
      action(async (o: { keyFile?: string; insecure?: boolean; out?: string; group?: string; stream?: string; once?: boolean; maxSessions?: number; allowRestore?: boolean; idle: number; peer?: string; hopids?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        fewerTierUps();
        const { serve } = await import("../core/receive.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        if (o.stream === "-" && o.json) throw new TbError("USAGE", "--json cannot be used with --stream -", "stdout carries the stream");
        if (o.group && !o.stream?.startsWith("unix:")) throw new TbError("USAGE", "--group applies to a unix: socket only", "use it with --stream unix:PATH");
        const gid = o.group === undefined ? undefined : groupId(o.group);
        reflinkSetting(); // a malformed TBBACKUP_REFLINK is refused before anything starts
        const key = await keyFor(o.stream, true, o);
        const out = o.out ?? defaultStoreFor();
        // a new --out is made only when its parent exists, and the first line says so
        const created = o.out ? prepareOut(o.out) : null;
        if (created) process.stderr.write(`${created}\n`);
        const reporter = makeReporter();
        // the sessions being served now (a socket receiver serves several at once)
        const serving: Hello["role"][] = [];
        // SIGTERM is how systemd stops a service: a receiver stopped that way has not failed (exit 0)
        onInterrupt(
          () =>
            serving.includes("push")
              ? `receiver stopped; the push${serving.length > 1 ? "es" : ""} in progress ${serving.length > 1 ? "are" : "is"} kept as .partial (push again to resume)`
              : serving.length
                ? `receiver stopped; the ${serving[0]} it was serving is cut (run it again)`
                : "receiver stopped between sessions; nothing was lost",
          0,
        );
        // without --stream: every Thunderbolt peer, each on its own stream, served side by side
        const stream = o.stream ? await resolveStream(o.stream, { peer: o.peer, hopids: o.hopids, ringSize: o.ringSize, throttling: o.throttling }) : null;
        const transport = stream
          ? await withKey(transportFor(stream.spec, true, { gid }), key, (m) => reporter.info(m))
          : await thunderboltPeers(o, (m) => reporter.info(m));
        const results = await serve({
          out,
          transport,
          once: o.once === true,
          allowRestore: o.allowRestore === true,
          idleMs: o.idle * 1000,
          reporter,
          maxSessions: o.maxSessions,
          onSessionStart: (role) => {
            // each session's rate and ETA count from its own start (another one's keep theirs)
            if (serving.length === 0) reporter.stop();
            serving.push(role);
          },
          onSession: (r: SessionResult) => {
            const i = serving.indexOf(r.role);
            if (i >= 0) serving.splice(i, 1);
            if (serving.length === 0) reporter.stop();
            if (o.json) printJson(r);
          },
        }).finally(() => stream?.cleanup());
        reporter.stop();
        const last = results[results.length - 1];
        if (o.once && last && !last.ok) {
          throw new TbError((last.error?.code as TbError["code"]) ?? "INTERNAL", `session failed: ${last.error?.message ?? "unknown"}`, "");
        }
      }),
    );
}
