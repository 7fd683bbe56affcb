// Used-block imaging for push: analyses the disk (src/disk/analyze.ts) and
// wraps it as a PushSource that reads only the blocks the file systems use.
// A chunk with nothing used is a hole (not read, sent as zeros); in the others
// the unused blocks read as zeros. README, "Used-block imaging".
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeDisk, planQueries, type DiskPlan, type MountInfo } from "../disk/analyze.ts";
import { MAX_READ, type ReadAt } from "../disk/types.ts";
import type { Layout } from "../protocol/messages.ts";
import { holeTest, openSource, readFully, readRun } from "./source.ts";
import { blockSysDir } from "../util/sysroot.ts";
import type { PushSource } from "./push.ts";
import { mountsOn, type MountOnDisk } from "../util/mounts.ts";

/** The layout a push reports and the receiver stores. */
export function planLayout(plan: DiskPlan): Layout {
  return {
    table: plan.table.type,
    sectorSize: plan.table.sectorSize,
    ...(plan.tableError ? { note: `partition table not trusted: ${plan.tableError}` } : plan.table.note ? { note: plan.table.note } : {}),
    partitions: plan.parts.map(({ partition: p, analysis: a }) => ({
      index: p.index,
      start: p.start,
      length: p.length,
      type: p.type,
      ...(p.name ? { name: p.name } : {}),
      ...(p.uuid ? { partUuid: p.uuid } : {}),
      fs: a.fs,
      ...(a.label ? { label: a.label } : {}),
      ...(a.uuid ? { uuid: a.uuid } : {}),
      method: a.method,
      ...(a.reason ? { reason: a.reason } : {}),
      usedBytes: a.usedBytes,
    })),
    outsideBytes: plan.outsideBytes,
    usedBytes: plan.usedBytes,
  };
}

/**
 * For a block device: which of its partitions (by number; 0 = the disk) hold
 * a file system mounted read-write now, directly or under a device built on
 * them (src/util/mounts.ts finds them by device number, and by the source's
 * name where the kernel reports an anonymous one, as btrfs does). A mount
 * that cannot be tied to one partition makes them all count as mounted.
 */
function mountInfoFor(devPath: string, readWrite?: MountOnDisk[]): MountInfo | undefined {
  const dir = blockSysDir(devPath);
  if (!dir) return undefined; // an image file: a loop device over it is not looked for
  const byIndex = new Map<number, string>();
  let anywhere: string | null = null;
  for (const m of readWrite ?? mountsOn(devPath)) {
    if (m.readOnly) continue;
    const name = m.on ?? path.basename(m.device);
    if (name === path.basename(dir)) {
      byIndex.set(0, m.mountpoint);
      continue;
    }
    let n = NaN;
    try {
      n = Number(fs.readFileSync(path.join(dir, name, "partition"), "utf8").trim());
    } catch {}
    if (Number.isSafeInteger(n) && n > 0) byIndex.set(n, m.mountpoint);
    else anywhere ??= m.mountpoint;
  }
  return { readWrite: (i) => byIndex.get(i) ?? anywhere };
}

/**
 * A push source for `devPath` that images only the used blocks; the plan is
 * made when it is opened. `readWrite`: its file systems mounted read-write,
 * when the caller has looked already (util/mounts.ts mountsOn).
 */
export async function usedBlocksSource(devPath: string, readWrite?: MountOnDisk[]): Promise<{ source: PushSource; plan: DiskPlan }> {
  const src = openSource(devPath);
  try {
    // the analysis's small reads of metadata go through the page cache (read-ahead helps them); the data, through readAt
    const read: ReadAt = (offset, length) => {
      if (length > MAX_READ || offset < 0 || offset + length > src.size) throw new RangeError(`read at ${offset}+${length} outside the disk`);
      const b = new Uint8Array(length);
      readFully(src.fd, b, offset, devPath);
      return b;
    };
    const plan = analyzeDisk(read, src.size, src.disk.logicalBlockSize ?? 512, mountInfoFor(devPath, readWrite));
    const q = planQueries(plan);
    const source: PushSource = {
      size: src.size,
      disk: src.disk,
      content: "image",
      layout: planLayout(plan),
      read: async (buf, offset) => {
        const n = Math.max(0, Math.min(buf.length, src.size - offset));
        let pos = offset;
        for (const [a, b] of q.usedRanges(offset, n)) {
          buf.fill(0, pos - offset, a - offset);
          src.readAt(buf.subarray(a - offset, b - offset), a);
          pos = b;
        }
        buf.fill(0, pos - offset, n);
        return n;
      },
      // a run of chunks the file systems use whole (or that lie outside them) is read in one request
      ...(src.readMany
        ? {
            readMany: async (bufs: Uint8Array[], offset: number) => {
              const whole = (o: number, n: number) => {
                const r = [...q.usedRanges(o, n)];
                return r.length === 1 && r[0]![0] === o && r[0]![1] === o + n;
              };
              let at = offset;
              const used = bufs.every((b) => {
                const n = Math.max(0, Math.min(b.length, src.size - at));
                const ok = n === 0 || whole(at, n);
                at += b.length;
                return ok;
              });
              // (else the push reads them one by one: read() zero-fills what is unused)
              return used ? readRun(src, bufs, offset) : 0;
            },
          }
        : {}),
      holes: async () => {
        const sparse = src.regularFile ? await holeTest(src.fd, src.size, devPath) : null;
        return (offset, length) => q.unused(offset, length) || (sparse?.(offset, length) ?? false);
      },
      close: () => src.close(),
    };
    return { source, plan };
  } catch (e) {
    src.close();
    throw e;
  }
}
