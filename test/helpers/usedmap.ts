// Helpers for the used-block parser tests: a ReadAt over an image file (with
// optional byte patches and a shortened end), partclone's domain log as byte
// ranges, and a copy of an image with every block the map calls unused zeroed.

import * as fs from "node:fs";
import type { ReadAt, UsedBlocks } from "../../src/disk/types.ts";

export interface ImageReader {
  read: ReadAt;
  size: number;
  close(): void;
}

/**
 * Reads an image file through 8 MiB pages kept in memory, so thousands of
 * analyses of the same image (through `patched`) stay fast. A read inside one
 * page returns a view of it: the parsers never write into what they read.
 */
export function imageReader(file: string): ImageReader {
  const fd = fs.openSync(file, "r");
  const size = fs.fstatSync(fd).size;
  const pages = new Map<number, Uint8Array>();
  const PAGE = 8 << 20;
  const page = (n: number): Uint8Array => {
    let p = pages.get(n);
    if (!p) {
      p = new Uint8Array(PAGE);
      fs.readSync(fd, p, 0, PAGE, n * PAGE);
      pages.set(n, p);
    }
    return p;
  };
  const read: ReadAt = (offset, length) => {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) throw new Error(`bad read ${offset}+${length}`);
    if (offset + length > size) throw new Error(`read past the end (${offset}+${length} > ${size})`);
    if (Math.floor(offset / PAGE) === Math.floor((offset + length - 1) / PAGE)) return page(Math.floor(offset / PAGE)).subarray(offset % PAGE, (offset % PAGE) + length);
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const at = offset + done;
      const p = page(Math.floor(at / PAGE));
      const o = at % PAGE;
      const n = Math.min(PAGE - o, length - done);
      out.set(p.subarray(o, o + n), done);
      done += n;
    }
    return out;
  };
  return { read, size, close: () => fs.closeSync(fd) };
}

/**
 * `read` with bytes replaced (offset -> byte), and past `limit` reads that
 * fail like a short device, or with `short`, that return fewer bytes than asked.
 */
export function patched(read: ReadAt, patches?: Map<number, number>, limit?: number, short = false): ReadAt {
  return (offset, length) => {
    if (limit !== undefined && offset + length > limit) {
      if (!short) throw new Error(`read past the end (${offset}+${length} > ${limit})`);
      return read(offset, Math.max(0, limit - offset)).slice();
    }
    const hits = [...(patches ?? [])].filter(([o]) => o >= offset && o < offset + length);
    if (!hits.length) return read(offset, length);
    const out = read(offset, length).slice(); // never write into the shared pages
    for (const [o, v] of hits) out[o - offset] = v;
    return out;
  };
}

/** The used ("+") byte ranges of a ddrescue domain log as `partclone.X -D` writes it. */
export function domainUsed(log: string): [number, number][] {
  const out: [number, number][] = [];
  for (const line of log.split("\n")) {
    const m = /^(0x[0-9A-Fa-f]+)\s+(0x[0-9A-Fa-f]+)\s+\+\s*$/.exec(line);
    if (m) out.push([Number(m[1]), Number(m[2])]);
  }
  return out;
}

export function isUsed(u: UsedBlocks, block: number): boolean {
  if (block >= u.blocks) return true; // past the map: always imaged
  return (u.bitmap[block >> 3]! & (1 << (block & 7))) !== 0;
}

/** Bytes partclone keeps that the map does not (must be 0), and bytes the map keeps beyond partclone's. */
export function compareWithPartclone(u: UsedBlocks, ranges: [number, number][], size: number): { missing: number; extra: number; firstMissing?: number } {
  const theirs = new Uint8Array(Math.ceil(size / u.blockSize));
  let missing = 0;
  let firstMissing: number | undefined;
  for (const [pos, len] of ranges) {
    for (let b = Math.floor(pos / u.blockSize); b < Math.ceil((pos + len) / u.blockSize); b++) {
      theirs[b] = 1;
      if (!isUsed(u, b)) {
        missing += u.blockSize;
        firstMissing ??= b * u.blockSize;
      }
    }
  }
  let extra = 0;
  for (let b = 0; b < theirs.length; b++) if (!theirs[b] && isUsed(u, b)) extra += u.blockSize;
  return { missing, extra, firstMissing };
}

/** Copies `src` to `dst` and zeroes there every block `u` calls unused (what a restore of a used-block image gives). */
export function zeroUnused(src: string, dst: string, u: UsedBlocks): void {
  fs.copyFileSync(src, dst);
  const fd = fs.openSync(dst, "r+");
  try {
    const zeros = new Uint8Array(1 << 20);
    for (let b = 0; b < u.blocks; ) {
      if (isUsed(u, b)) {
        b++;
        continue;
      }
      let e = b;
      while (e < u.blocks && !isUsed(u, e) && (e - b + 1) * u.blockSize <= zeros.length) e++;
      fs.writeSync(fd, zeros, 0, (e - b) * u.blockSize, b * u.blockSize);
      b = e;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** True when every set bit of `a` is set in `b`. */
export function subsetOf(a: UsedBlocks, b: UsedBlocks): boolean {
  if (a.blockSize !== b.blockSize || a.blocks !== b.blocks) return false;
  for (let i = 0; i < a.bitmap.length; i++) if ((a.bitmap[i]! & ~b.bitmap[i]!) !== 0) return false;
  return true;
}

export { rng } from "./prng.ts";
