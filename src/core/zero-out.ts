// Zero chunks onto a block device: runs of them are handed to the device as
// BLKZEROOUT when it can write zeroes itself (sysfs write_zeroes_max_bytes > 0:
// an SSD's deallocate/write-zeroes, SCSI WRITE SAME, a loop device over a
// file), which moves no data over the bus; elsewhere, or when the call fails,
// zeros are written. Either way the read-back checks every byte.
import * as fs from "node:fs";
import * as path from "node:path";
import { blockSysDir } from "../util/sysroot.ts";
import { writeAt } from "./target.ts";
import { loadLibc } from "../util/libc.ts";

/** One BLKZEROOUT at most this long: the call blocks the event loop while the device works. */
const MAX_RUN = 64 * 1024 * 1024;

function queueAttr(dir: string, name: string): number | null {
  // a partition's queue/ is its disk's
  for (const d of [dir, path.dirname(dir)]) {
    try {
      const v = Number(fs.readFileSync(path.join(d, "queue", name), "utf8").trim());
      if (Number.isSafeInteger(v)) return v;
    } catch {}
  }
  return null;
}

export interface ZeroWriter {
  /** how zero runs were written: "write-zeroes" once BLKZEROOUT did one, else "zeros" */
  readonly how: () => "write-zeroes" | "zeros";
  zero(offset: number, length: number): Promise<void>;
  /** writes the pending run; call before fsync */
  flush(): Promise<void>;
}

export function zeroWriter(fd: number, devPath: string, chunkSize: number): ZeroWriter {
  const dir = blockSysDir(devPath);
  const max = dir ? queueAttr(dir, "write_zeroes_max_bytes") : null;
  const lbs = (dir ? queueAttr(dir, "logical_block_size") : null) ?? 512;
  let useIoctl = max !== null && max > 0;
  let zeroBuf: Uint8Array | null = null;
  let run: [number, number] | null = null;
  let zeroedOut = false;
  const writeZeros = (from: number, to: number) => {
    zeroBuf ??= new Uint8Array(chunkSize);
    for (let o = from; o < to; o += zeroBuf.length) writeAt(fd, zeroBuf.subarray(0, Math.min(zeroBuf.length, to - o)), o, devPath);
  };
  const flush = async () => {
    if (!run) return;
    const [from, to] = run;
    run = null;
    if (useIoctl && from % lbs === 0 && (to - from) % lbs === 0) {
      const libc = await loadLibc();
      if (libc && libc.blkZeroOut(fd, from, to - from) === 0) {
        zeroedOut = true;
        return;
      }
      useIoctl = false; // not supported after all: zeros from now on
    }
    writeZeros(from, to);
  };
  return {
    how: () => (zeroedOut ? "write-zeroes" : "zeros"),
    zero: async (offset, length) => {
      if (run && run[1] === offset && run[1] - run[0] + length <= MAX_RUN) {
        run[1] += length;
        return;
      }
      await flush();
      run = [offset, offset + length];
    },
    flush,
  };
}
