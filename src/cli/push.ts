// tbbackup push SOURCE: send an image (only the changes, against a base the receiver offers) of a disk or image file to a receiver.
import type { Command } from "commander";
import { DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE } from "../core/limits.ts";
import { TbError, isErrno, outcome, saysUnfinished } from "../errors.ts";
import { bytes, ratio } from "../ui/format.ts";
import { action, exitWith, fewerTierUps, intOption, printJson, sizeOption, onInterrupt, type GlobalOpts } from "./common.ts";
import type { FilesSummary, Layout, MountedRw } from "../protocol/messages.ts";
import { describeDevice, mountsOn, type MountOnDisk } from "../util/mounts.ts";
import * as fs from "node:fs";
import { keyFor, resolveStream, withKey, withKeyOptions, withThunderboltOptions } from "./stream.ts";

/** mount points listed one a line; the rest are counted */
const MOUNTS_SHOWN = 20;

/** The plan of a used-block push, before it starts (README, "Used-block imaging"). */
export function formatLayout(diskName: string, size: number, l: Layout): string {
  const clean = (s: string) => s.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
  const lines: string[] = [];
  const table = l.table === "none" ? "no partition table" : `${l.table.toUpperCase()}, ${l.partitions.length} partition${l.partitions.length === 1 ? "" : "s"}`;
  lines.push(`${clean(diskName)}: ${table}${l.note ? ` (${clean(l.note)})` : ""}`);
  const rows = l.partitions.map((p) => {
    const state = p.method === "used-blocks" ? `${bytes(p.usedBytes)} used` : p.method === "header-only" ? "(content not kept)" : `kept whole: ${p.reason ?? "not analysed"}`;
    return [p.index === 0 ? "disk" : `p${p.index}`, clean(p.label ?? p.name ?? ""), clean(p.fs), bytes(p.length), clean(state)];
  });
  const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(`  ${r[0]!.padEnd(widths[0]!)}  ${r[1]!.padEnd(widths[1]!)}  ${r[2]!.padEnd(widths[2]!)}  ${r[3]!.padStart(widths[3]!)}   ${r[4]}`);
  if (l.table !== "none") lines.push(`  outside partitions: ${bytes(l.outsideBytes)} (kept whole)`);
  lines.push(`sending ${bytes(l.usedBytes)} of ${bytes(size)} (unused blocks are stored as zeros; --all-blocks sends every byte)`);
  return lines.join("\n") + "\n";
}

/**
 * What can be said about SOURCE before any backup starts: that it is missing,
 * or a directory (a file-level backup is --files), and which of its file
 * systems are mounted read-write (a warning, or with --strict a refusal):
 * those, which the used-block plan then takes instead of looking again.
 */
function checkSource(source: string, strict: boolean): MountOnDisk[] {
  let st: fs.Stats;
  try {
    st = fs.statSync(source);
  } catch (e) {
    if (isErrno(e, "ENOENT", "ENOTDIR")) throw new TbError("SOURCE", `source ${source} does not exist`, "check the device or file name (lsblk lists disks); no backup was started");
    return []; // the open says what is wrong
  }
  if (st.isDirectory()) throw new TbError("SOURCE", `${source} is a directory, not a disk or an image file`, `to back up the files in it, run 'tbbackup push --files ${source}'; no backup was started`);
  const rw = mountsOn(source).filter((m) => !m.readOnly);
  const list = rw.map((m) => `${describeDevice(m)} on ${m.mountpoint}`).join(", ");
  if (rw.length && strict)
    throw new TbError("REFUSED", `${source} has a file system mounted read-write (${list}): its image could be inconsistent`, "unmount it or remount it read-only (mount -o remount,ro MOUNTPOINT), then push again; without --strict push warns and goes on; no backup was started");
  for (const m of rw) process.stderr.write(`warning: ${describeDevice(m)} is mounted read-write on ${m.mountpoint}: what is written there during the push can leave the image inconsistent (unmount it, or remount it read-only, for a consistent backup); the manifest records it\n`);
  return rw;
}

export function register(program: Command): void {
  withThunderboltOptions(
    withKeyOptions(program.command("push")
      .description("send a full image of SOURCE (a block device or an image file), or directory trees (--files), to a receiver")
      .argument("[source]", "block device (e.g. /dev/nvme0n1) or regular file")
      .option("--files <dir...>", "send these directory trees as a file-level backup (tar) instead of an image")
      .option("--strict", "with --files: stop at the first unreadable file instead of skipping it; with a disk: refuse one mounted read-write")
      .option("--cross-mounts", "with --files: also walk into file systems mounted inside the trees (/proc under /, say)")
      .option("--all-blocks", "image every byte of SOURCE, not only the blocks its file systems use")
      .option("--no-resume", "start a new backup even when the receiver holds an interrupted one of this disk")
      .option("--full", "send every chunk, even when the receiver holds an earlier backup of this disk to send only the changes against")
      .option("--stream <spec>", "transport: /dev/tbstreamX, unix:PATH, tcp:HOST:PORT or -")
      .option("--name <label>", "a label stored with the backup")
      .option("--level <n>", "zstd level (1 fastest .. 19)", intOption(1, 19), 1)
      .option("--chunk-size <size>", "chunk size (4K..4M, a multiple of 4K)", sizeOption, DEFAULT_CHUNK_SIZE)
      .option("--wait <seconds>", "how long to wait for the receiver", intOption(1, 86400), 60)
      .option("--idle <seconds>", "give up when the receiver takes no data and says nothing for this long", intOption(5, 86400), 300)
      .option("--sha256", "also compute the classic whole-image SHA-256 (sha256sum of the disk) on both sides, besides the integrity root")
      .option("--json", "print one JSON result on stdout")),
  )
    .action(
      action(async (source: string | undefined, o: { keyFile?: string; stream?: string; name?: string; level: number; chunkSize: number; wait: number; idle: number; peer?: string; ringSize?: number; throttling?: number; files?: string[]; strict?: boolean; crossMounts?: boolean; resume: boolean; sha256?: boolean; allBlocks?: boolean; full?: boolean } & GlobalOpts) => {
        fewerTierUps();
        const { push } = await import("../core/push.ts");
        const { transportFor } = await import("../transport/index.ts");
        const { makeReporter } = await import("../ui/progress.ts");
        const { tarSource } = await import("../core/files/tar-source.ts");
        if (!source === !o.files) throw new TbError("USAGE", o.files ? "give either SOURCE or --files, not both" : "push needs a SOURCE (disk or image) or --files DIR...", "e.g. tbbackup push /dev/nvme0n1, or tbbackup push --files /mnt/home");
        if (o.chunkSize < 4096 || o.chunkSize > MAX_CHUNK_SIZE || o.chunkSize % 4096 !== 0)
          throw new TbError("USAGE", `--chunk-size ${o.chunkSize} is not allowed`, "use a multiple of 4K from 4K to 4M");
        // before anything starts, and outside the 'backup is incomplete' wording below
        (await import("../util/zstd.ts")).requireAddons();
        const readWrite = source ? checkSource(source, o.strict === true) : [];
        const mountedRw: MountedRw[] = readWrite.map(({ device, mountpoint }) => ({ device, mountpoint }));
        const key = await keyFor(o.stream, false, o);
        const reporter = makeReporter();
        onInterrupt("the backup is incomplete; run push again");
        if (o.files && o.allBlocks) throw new TbError("USAGE", "--all-blocks applies to an image push, not to --files", "leave out --all-blocks");
        let input = o.files ? tarSource({ roots: o.files, strict: o.strict === true, label: o.name ?? null, crossMounts: o.crossMounts === true }) : undefined;
        const stream = await resolveStream(o.stream, { wait: o.wait, peer: o.peer, ringSize: o.ringSize, throttling: o.throttling });
        if (o.stream === "-" && o.json) throw new TbError("USAGE", "--json cannot be used with --stream -", "stdout carries the stream; leave out --json");
        if (o.stream === "-" && process.stdout.isTTY) throw new TbError("USAGE", "--stream - sends the backup to stdout, which is a terminal", "pipe it to the receiver (e.g. through ssh or socat)");
        const transport = await withKey(transportFor(stream.spec, false), key, (m) => reporter.info(m));
        try {
          if (!input && !o.allBlocks) {
            const { usedBlocksSource } = await import("../core/used-source.ts");
            const u = await usedBlocksSource(source!, readWrite);
            input = u.source;
            if (!o.json) process.stderr.write(formatLayout(u.source.disk.name, u.plan.size, u.source.layout!));
          }
          const r = await push({ source: source ?? o.files!.join(" "), input, transport, mountedRw, label: o.name ?? null, level: o.level, chunkSize: o.chunkSize, waitMs: o.wait * 1000, idleMs: o.idle * 1000, reporter, resume: o.resume, sha256: o.sha256 === true, full: o.full === true });
          reporter.stop();
          const files = r.files as FilesSummary | undefined;
          const unreadable = files?.unreadable.length ?? 0;
          if (o.json) printJson({ ok: unreadable === 0, ...r });
          else {
            if (files) {
              const mounts = files.mounts ?? [];
              for (const m of mounts.slice(0, MOUNTS_SHOWN)) process.stderr.write(`another file system, not walked into (--cross-mounts does): ${m}\n`);
              if (mounts.length > MOUNTS_SHOWN) process.stderr.write(`... and ${mounts.length - MOUNTS_SHOWN} more mount points, listed in the manifest\n`);
              for (const c of files.changed) process.stderr.write(`changed while being read: ${c}\n`);
              // a file read in part is archived with zeros where reads failed: "PATH: stored with N bytes zeroed (EIO)"
              for (const u of files.unreadable) process.stderr.write(`${/: stored with \d+ bytes zeroed \([^()]*\)$/.test(u) ? "unreadable in part" : "unreadable, skipped"}: ${u}\n`);
            }
            if (r.base !== undefined) process.stderr.write(`incremental against ${r.base}: ${r.changedChunks} of ${r.chunks} chunks changed\n`);
            process.stderr.write(`sent ${bytes(r.sentBytes)}, stored ${bytes(r.newStoredBytes)} new\n`);
            process.stderr.write(`backup complete: ${r.id} (${files ? `${files.count} entries, ` : ""}${bytes(r.bytes)} stored as ${bytes(r.storedBytes)}, ratio ${ratio(r.bytes, r.storedBytes)}, ${r.seconds.toFixed(1)} s${r.resent ? `, ${r.resent} damaged chunk${r.resent === 1 ? "" : "s"} sent again` : ""})\n${r.root ? `root ${r.root}\n` : ""}${r.sha256 ? `sha256 ${r.sha256}\n` : ""}`);
          }
          if (unreadable > 0)
            return exitWith(new TbError("PARTIAL_FILES", `completed with ${unreadable} unreadable file${unreadable === 1 ? "" : "s"} (listed above)`, "the rest is stored; copy those files another way or use --strict to stop at the first one"));
        } catch (e) {
          reporter.stop();
          // (a usage mistake, e.g. a --stream that cannot be used, started no backup)
          if (e instanceof TbError && e.code !== "USAGE" && !saysUnfinished(e.outcome)) throw new TbError(e.code, e.message, e.hint, [], outcome.incomplete("backup"));
          throw e;
        } finally {
          await stream.cleanup();
        }
      }),
    );
}
