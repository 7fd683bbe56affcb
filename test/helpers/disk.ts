// Helpers for the used-block tests: a ReadAt over a file, the used map as byte
// ranges, partclone's domain log as the referee, and copying only used blocks.
import * as fs from "node:fs";
import type { ReadAt, UsedBlocks } from "../../src/disk/types.ts";
import { sh } from "./cli.ts";
import { domainUsed } from "./usedmap.ts";

/** A ReadAt over [base, base + size) of a file. */
export function fileReader(file: string, base = 0, size?: number): { read: ReadAt; size: number; close: () => void } {
  const fd = fs.openSync(file, "r");
  const total = size ?? fs.fstatSync(fd).size - base;
  const read: ReadAt = (offset, length) => {
    if (offset < 0 || offset + length > total) throw new RangeError(`read past the end (${offset}+${length} of ${total})`);
    const b = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, b, done, length - done, base + offset + done);
      if (n === 0) throw new Error("short read");
      done += n;
    }
    return b;
  };
  return { read, size: total, close: () => fs.closeSync(fd) };
}

export function isUsed(u: UsedBlocks, i: number): boolean {
  return i >= u.blocks || (u.bitmap[i >> 3]! & (1 << (i & 7))) !== 0;
}

/** Is every byte of [off, off + len) inside blocks the map keeps? */
export function rangeKept(u: UsedBlocks, off: number, len: number): boolean {
  for (let i = Math.floor(off / u.blockSize); i * u.blockSize < off + len; i++) if (!isUsed(u, i)) return false;
  return true;
}

/** partclone's used ranges ("+" lines of its ddrescue domain log) for a file system in `img`. */
export function partcloneUsed(tool: string, img: string, dir: string): [number, number][] {
  const log = `${dir}/domain-${Math.random().toString(36).slice(2)}.log`;
  sh(`${tool} -q -D -s ${JSON.stringify(img)} -o ${JSON.stringify(log)} >/dev/null 2>&1`);
  const out = domainUsed(fs.readFileSync(log, "utf8"));
  fs.rmSync(log);
  return out;
}

/** Copies `src` to `dst` with every block the map does not keep written as zeros (what a restore gives). */
export function copyUsedOnly(src: string, dst: string, u: UsedBlocks, base = 0): void {
  fs.copyFileSync(src, dst);
  const fd = fs.openSync(dst, "r+");
  const zero = new Uint8Array(u.blockSize);
  try {
    for (let i = 0; i < u.blocks; i++) if (!isUsed(u, i)) fs.writeSync(fd, zero, 0, u.blockSize, base + i * u.blockSize);
  } finally {
    fs.closeSync(fd);
  }
}
