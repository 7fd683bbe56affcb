// tbbackup list --out DIR | --stream SPEC: the backups a store holds.
import type { Command } from "commander";
import type { BackupEntry } from "../core/catalogue.ts";
import { TbError } from "../errors.ts";
import { bytes } from "../ui/format.ts";
import { action, existingStore, intOption, printJson, type GlobalOpts } from "./common.ts";
import * as fs from "node:fs";
import { keyFor, resolveStream, withKey, withKeyOptions, withThunderboltOptions } from "./stream.ts";
import { sysPath } from "../util/sysroot.ts";
import { BUS_DIR } from "../thunderbolt/sysfs.ts";

/** A file-level backup that left files out or caught them changing says so beside its status. */
function statusText(r: Omit<BackupEntry, "path">): string {
  if (r.status === "unreadable" && typeof r.why === "string") return `unreadable (${r.why})`;
  const notes = [r.unreadableFiles ? `${r.unreadableFiles} unreadable` : "", r.changedFiles ? `${r.changedFiles} changed` : ""].filter(Boolean);
  return notes.length ? `${r.status} (${notes.join(", ")})` : r.status;
}

export function formatTable(rows: Omit<BackupEntry, "path">[]): string {
  if (rows.length === 0) return "no backups\n";
  const head = ["ID", "KIND", "STATUS", "SIZE", "STORED", "NEW", "RATIO", "DATE", "LABEL"];
  // NEW: stored bytes not copied from a base (an older receiver's rows lack sharedBytes)
  const body = rows.map((r) => [r.id, r.kind, statusText(r), bytes(r.size), bytes(r.storedBytes), bytes(r.storedBytes - (r.sharedBytes ?? 0)), r.ratio ? `${r.ratio.toFixed(2)}x` : "-", r.date.replace(/\.\d+Z$/, "Z"), r.label ?? ""]);
  // labels and names come from the peer: no control characters reach the terminal
  for (const b of body) for (let i = 0; i < b.length; i++) b[i] = b[i]!.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  return [head, ...body].map((cols) => cols.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n") + "\n";
}

/** The last line of the table: how many backups are shown and what they take on the receiver. */
export function totalLine(rows: Omit<BackupEntry, "path">[]): string {
  const stored = rows.reduce((sum, r) => sum + (Number.isFinite(r.storedBytes) && r.storedBytes > 0 ? r.storedBytes : 0), 0);
  return `total: ${rows.length} backup${rows.length === 1 ? "" : "s"}, ${bytes(stored)} stored\n`;
}

export function register(program: Command): void {
  withThunderboltOptions(
    withKeyOptions(program.command("list")
      .description("list backups in a local store (--out, default /var/lib/tbbackup) or on a receiver (--stream)")
      .option("--out <dir>", "a local store directory (default: /var/lib/tbbackup, or $TBBACKUP_STORE, when it exists)")
      .option("--stream <spec>", "ask the receiver at the other end of this stream")
      .option("--host <name>", "only the backups of this host (as in the ID)")
      .option("--disk <name>", "only the backups of this disk (as in the ID)")
      .option("--wait <seconds>", "how long to wait for the receiver", intOption(1, 86400), 60)
      .option("--json", "print JSON")),
  )
    .action(
      action(async (o: { keyFile?: string; out?: string; stream?: string; host?: string; disk?: string; wait: number; peer?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        const { listBackups } = await import("../core/catalogue.ts");
        const { listRemote } = await import("../core/remote.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        const { defaultStore } = await import("../store/repository.ts");
        if (o.out && o.stream) throw new TbError("USAGE", "use either --out (a local store) or --stream (a receiver), not both", "run 'tbbackup list --help' for usage");
        const key = await keyFor(o.stream, false, o);
        let rows: Omit<BackupEntry, "path">[];
        let local = o.out;
        // Neither: the default store when this machine has one; else a receiver
        // over the Thunderbolt cable, when this machine has a Thunderbolt bus.
        if (!o.out && !o.stream) {
          if (fs.existsSync(defaultStore())) local = defaultStore();
          else if (!o.peer && !fs.existsSync(sysPath(BUS_DIR)))
            throw new TbError("USAGE", `list needs --out DIR (a store; there is none at ${defaultStore()}) or --stream SPEC (a receiver)`, "run 'tbbackup list --help' for usage");
        }
        if (local) {
          rows = listBackups(await existingStore(local, "list"));
        } else {
          const stream = await resolveStream(o.stream, { wait: o.wait, peer: o.peer, ringSize: o.ringSize, throttling: o.throttling });
          try {
            const transport = await withKey(transportFor(stream.spec, false), key, (m) => process.stderr.write(`tbbackup: ${m}\n`));
            rows = await listRemote(transport, o.wait * 1000, makeReporter({ quiet: true }));
          } finally {
            await stream.cleanup();
          }
        }
        rows = rows.filter((r) => (!o.host || r.host === o.host) && (!o.disk || r.disk === o.disk));
        if (o.json) printJson(rows);
        else process.stdout.write(formatTable(rows) + (rows.length ? totalLine(rows) : ""));
      }),
    );
}
