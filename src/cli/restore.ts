// tbbackup restore TARGET: write a backup back onto a disk or into an image file.
import type { Command } from "commander";
import * as fs from "node:fs";
import { sameDisk } from "../core/identity.ts";
import { TbError, outcome } from "../errors.ts";
import type { RestoreInfo } from "../protocol/messages.ts";
import { isBlank, type TargetInfo } from "../core/target.ts";
import { bytes } from "../ui/format.ts";
import { ask } from "../ui/prompt.ts";
import { action, intOption, printJson, onInterrupt, type GlobalOpts } from "./common.ts";
import { keyFor, resolveStream, withKey, withKeyOptions, withThunderboltOptions } from "./stream.ts";

function describeTarget(t: TargetInfo): string {
  const id = [t.identity.model, t.identity.serial && `serial ${t.identity.serial}`, t.identity.wwn && `wwn ${t.identity.wwn}`].filter(Boolean).join(", ");
  if (t.kind === "block") return `${t.path} (disk, ${bytes(t.size)}${id ? ", " + id : ""}${t.identity.partitionTable ? ", " + t.identity.partitionTable + " partition table" : ""})`;
  return t.exists ? `${t.path} (existing file of ${bytes(t.size)}, will be replaced)` : `${t.path} (new file)`;
}

/**
 * Why the target disk is not one to overwrite without a word: it holds data and
 * is not the disk the backup was made from (by WWN, else serial, else path).
 * Null for that disk, a blank disk, or an image file.
 */
function otherDisk(t: TargetInfo, b: RestoreInfo): string | null {
  if (t.kind !== "block") return null;
  const d = b.disk;
  if (sameDisk(d, t.identity, { by: "hardware", strictPath: false }) || isBlank(t.path)) return null;
  const was = [d.path, d.model, d.serial && `serial ${d.serial}`].filter(Boolean).join(", ");
  return `${describeTarget(t)} holds data and is not the disk backup ${b.id} was made from (${was})`;
}

/** Shows what will be overwritten; asks on a TTY, otherwise requires --yes (and --force for another disk that holds data). */
function confirmer(yes: boolean, force: boolean) {
  return async (t: TargetInfo, b: RestoreInfo): Promise<boolean> => {
    const other = otherDisk(t, b);
    if (yes) {
      // a mistyped device (sdb for sda, or disks renamed at boot) must not be overwritten unasked
      if (other && !force) throw new TbError("REFUSED", `refusing to overwrite: ${other}`, "check the device name; to overwrite it anyway, add --force (at boot: rd.tbbackup.force=1); the target was not changed");
      process.stderr.write(`overwriting ${describeTarget(t)} with backup ${b.id} (disk ${b.disk.path}, taken ${b.date})\n`);
      return true;
    }
    if (!process.stdin.isTTY || !process.stderr.isTTY)
      throw new TbError("REFUSED", `refusing to overwrite ${t.path} without confirmation`, "run on a terminal to confirm, or pass --yes; the target was not changed");
    process.stderr.write(
      `\nThis will OVERWRITE ${describeTarget(t)}\nwith backup ${b.id}\n  from host ${b.host.hostname}, disk ${b.disk.path} (${b.disk.model ?? b.disk.name}), taken ${b.date}\n  ${bytes(b.size)}, ${b.root ? `root ${b.root}` : `sha256 ${b.sha256}`}\n${other ? "\nWARNING: this target holds data and is NOT the disk the backup was made from.\n" : ""}\n`,
    );
    const answer = await ask(`Type "yes" to overwrite ${t.path}: `);
    if (answer === null) {
      process.stderr.write("\n");
      throw new TbError("REFUSED", "restore cancelled (end of input at the question)", "the target was not changed");
    }
    return answer.trim() === "yes";
  };
}

export function register(program: Command): void {
  withThunderboltOptions(
    withKeyOptions(program.command("restore")
      .description("write a backup onto TARGET (a block device or an image file)")
      .argument("[target]", "disk (e.g. /dev/nvme0n1) or image file to write")
      .option("--files <dest>", "extract a file-level backup under this directory instead")
      .option("--overwrite", "with --files: replace files that already exist under DEST")
      .option("--stream <spec>", "restore from the receiver at the other end of this stream")
      .option("--from <path>", "restore from a stored backup directory (or its image.zst) on this machine")
      .option("--backup <id>", "which backup (host/disk/timestamp, see tbbackup list); default: the newest of this disk")
      .option("--yes", "do not ask before overwriting TARGET")
      .option("--force", "with --yes: also overwrite a disk that holds data and is not the one the backup was made from")
      .option("--no-verify", "skip reading the target back after writing")
      .option("--no-delta", "write every chunk, even where the target already holds the same bytes")
      .option("--wait <seconds>", "how long to wait for the receiver", intOption(1, 86400), 60)
      .option("--json", "print one JSON result on stdout")),
  )
    .action(
      action(async (targetArg: string | undefined, o: { keyFile?: string; stream?: string; from?: string; backup?: string; yes?: boolean; force?: boolean; verify: boolean; delta: boolean; wait: number; files?: string; overwrite?: boolean; peer?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        const { restore } = await import("../core/restore.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        if (!targetArg === !o.files) throw new TbError("USAGE", o.files ? "give either TARGET or --files DEST, not both" : "restore needs a TARGET (disk or image file) or --files DEST", "e.g. tbbackup restore /dev/nvme0n1 --stream SPEC");
        if (o.files && !o.backup && !o.from) throw new TbError("USAGE", "restore --files needs --backup ID (or --from DIR)", "tbbackup list --stream SPEC shows the IDs");
        const target = targetArg ?? o.files!;
        if (o.from && o.stream) throw new TbError("USAGE", "use either --from or --stream, not both", "--from reads a local backup, --stream asks a receiver");
        if (o.from && o.backup) throw new TbError("USAGE", "--backup goes with --stream", "with --from, give the backup's directory itself");
        const key = await keyFor(o.stream, false, o);
        const reporter = makeReporter();
        // A new image file that a failed restore leaves behind would look complete
        // (full size, sparse): it is removed. What existed before is left as it is.
        let writing = false;
        const isNewFile = !o.files && !fs.existsSync(target);
        const removeUnfinished = (): boolean => {
          if (!isNewFile || !writing) return false;
          try {
            if (!fs.lstatSync(target).isFile()) return false;
            fs.unlinkSync(target);
            return true;
          } catch {
            return false;
          }
        };
        const unfinished = `the target ${target} is now incomplete`;
        const removed = `the unfinished ${target} was removed`;
        onInterrupt(() => (!writing ? `nothing was written: the target ${target} was not changed` : removeUnfinished() ? `${removed}; run restore again` : `${unfinished}; run restore again`));
        const stream = o.from ? null : await resolveStream(o.stream, { wait: o.wait, peer: o.peer, ringSize: o.ringSize, throttling: o.throttling });
        try {
          const transport = stream ? await withKey(transportFor(stream.spec, false), key, (m) => reporter.info(m)) : undefined;
          const r = await restore({
            target,
            filesDest: o.files,
            overwrite: o.overwrite === true,
            from: o.from,
            transport,
            backup: o.backup,
            verify: o.verify,
            delta: o.delta,
            waitMs: o.wait * 1000,
            idleMs: 300_000,
            reporter,
            confirm: confirmer(o.yes === true, o.force === true),
            writing: () => (writing = true),
          }).catch((e: unknown) => {
            if (e instanceof TbError && removeUnfinished()) throw e.outcome?.kind === "target-incomplete" ? new TbError(e.code, e.message, e.advice, e.details, outcome.removed(target)) : e;
            throw e;
          });
          reporter.stop();
          if (o.json) printJson({ ok: true, ...r });
          else if (r.extracted) {
            for (const sk of r.extracted.skipped) process.stderr.write(`not created: ${sk}\n`);
            process.stderr.write(`restore complete: ${r.id} -> ${r.target} (${r.extracted.entries} entries, ${r.extracted.files} files, ${bytes(r.extracted.bytes)}; archive ${r.root ? "integrity root" : "sha256"} checked)\n`);
          } else {
            if (r.delta) process.stderr.write(`the target already held ${r.bytes ? Math.floor((100 * r.delta.keptBytes) / r.bytes) : 100}% of this backup: wrote ${bytes(r.delta.writtenBytes)}${r.delta.askedBytes !== undefined ? `, received ${bytes(r.delta.askedBytes)} (only the chunks that differ were sent)` : ""}\n`);
            process.stderr.write(`restore complete: ${r.id} -> ${r.target} (${bytes(r.bytes)}, ${r.seconds.toFixed(1)} s, ${r.verified ? "read back and verified" : "NOT read back (--no-verify)"})\n${r.root ? `root ${r.root}\n` : ""}${r.sha256 ? `sha256 ${r.sha256}\n` : ""}`);
          }
        } finally {
          reporter.stop();
          await stream?.cleanup();
        }
      }),
    );
}
