// Used-block imaging for push: analyses the disk (src/disk/analyze.ts) and
// wraps it as a PushSource that reads only the blocks the file systems use.
// A chunk with nothing used is a hole (not read, sent as zeros); in the others
// the unused blocks read as zeros. README, "Used-block imaging".
import * as fs from "node:fs";
import * as path from "node:path";
import { analyzeDisk, planQueries, type DiskPlan, type MountInfo } from "../disk/analyze.ts";
import { MAX_READ, type ReadAt } from "../disk/types.ts";
import type { Layout } from "../protocol/messages.ts";
import { holeTest, openSource, readFully } from "./source.ts";
import { blockSysDir } from "./identity.ts";
import type { PushSource } from "./push.ts";
import { sysPath } from "../util/sysroot.ts";

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

/** "major:minor" of every file system mounted read-write, from /proc/self/mountinfo. */
function readWriteMounts(): Map<string, string> {
  const out = new Map<string, string>();
  let text: string;
  try {
    text = fs.readFileSync(sysPath("/proc/self/mountinfo"), "utf8");
  } catch {
    return out;
  }
  for (const line of text.split("\n")) {
    // id parent major:minor root mountpoint options ... - fstype source superoptions
    const f = line.split(" ");
    if (f.length < 6) continue;
    const opts = f[5]!.split(",");
    const sep = f.indexOf("-");
    const superOpts = sep > 0 && f[sep + 3] ? f[sep + 3]!.split(",") : [];
    if (opts.includes("rw") && !superOpts.includes("ro")) out.set(f[2]!, f[4]!.replace(/\\040/g, " "));
  }
  return out;
}

/** For a block device: which of its partitions (by number; 0 = the disk) are mounted read-write. */
function mountInfoFor(devPath: string): MountInfo | undefined {
  const dir = blockSysDir(devPath);
  if (!dir) return undefined; // an image file: a loop device over it is not looked for
  const rw = readWriteMounts();
  const byIndex = new Map<number, string>();
  const devOf = (d: string) => {
    try {
      return fs.readFileSync(path.join(d, "dev"), "utf8").trim();
    } catch {
      return null;
    }
  };
  const own = devOf(dir);
  if (own && rw.has(own)) byIndex.set(0, rw.get(own)!);
  let children: string[] = [];
  try {
    children = fs.readdirSync(dir);
  } catch {}
  for (const c of children) {
    let n: number;
    try {
      n = Number(fs.readFileSync(path.join(dir, c, "partition"), "utf8").trim());
    } catch {
      continue;
    }
    const d = devOf(path.join(dir, c));
    if (d && rw.has(d) && Number.isSafeInteger(n)) byIndex.set(n, rw.get(d)!);
  }
  return { readWrite: (i) => byIndex.get(i) ?? null };
}

/** A push source for `devPath` that images only the used blocks; the plan is made when it is opened. */
export async function usedBlocksSource(devPath: string): Promise<{ source: PushSource; plan: DiskPlan }> {
  const src = openSource(devPath);
  try {
    const read: ReadAt = (offset, length) => {
      if (length > MAX_READ || offset < 0 || offset + length > src.size) throw new RangeError(`read at ${offset}+${length} outside the disk`);
      const b = new Uint8Array(length);
      readFully(src.fd, b, offset, devPath);
      return b;
    };
    const plan = analyzeDisk(read, src.size, src.disk.logicalBlockSize ?? 512, mountInfoFor(devPath));
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
          readFully(src.fd, buf.subarray(a - offset, b - offset), a, devPath);
          pos = b;
        }
        buf.fill(0, pos - offset, n);
        return n;
      },
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
