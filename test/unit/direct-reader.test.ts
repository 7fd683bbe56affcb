// push's O_DIRECT reads of a disk (src/core/source.ts directReader), on a
// regular file opened with O_DIRECT where the file system allows it: aligned
// requests read in place, others through the aligned scratch, and each way
// back to the page cache (a refused O_DIRECT, a failed or short read), with
// the same bytes and the same error as readFully's.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ptr } from "bun:ffi";
import { directReader } from "../../src/core/source.ts";
import { TbError } from "../../src/core/errors.ts";

const SIZE = 3 * 1024 * 1024 + 1536;
let dir: string;
let file: string;
let data: Uint8Array;
let fd: number;
let direct: number | undefined;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tbb-direct-"));
  file = path.join(dir, "disk.img");
  data = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(SIZE, i + 65536)));
  fs.writeFileSync(file, data);
  fd = fs.openSync(file, "r");
  try {
    direct = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch {
    direct = undefined; // a file system without O_DIRECT: nothing to show here
  }
});
afterAll(() => {
  fs.closeSync(fd);
  if (direct !== undefined) fs.closeSync(direct);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Requests of every kind: aligned, misaligned start or end, inside one block, the 512-byte tail, a fresh (aligned) buffer and a subarray of one. */
const REQUESTS: [number, number, number][] = [
  // [position, length, offset into a 1 MiB buffer]
  [0, 1024 * 1024, 0],
  [1024 * 1024, 512 * 1024, 0],
  [4096 + 1024, 8192, 1024],
  [100, 7, 3],
  [SIZE - 1536, 1536, 0],
  [SIZE - 1000, 1000, 17],
  [2 * 1024 * 1024 - 512, 4096 + 1024, 512],
];

describe("directReader", () => {
  test("reads what the page cache reads, for aligned and misaligned requests, and at the end", () => {
    if (direct === undefined) return;
    for (const lbs of [512, 4096]) {
      const read = directReader(fd, direct, lbs, file);
      for (const [pos, len, at] of REQUESTS) {
        const buf = new Uint8Array(1024 * 1024 + 8192);
        read(buf.subarray(at, at + len), pos);
        expect(Buffer.from(buf.subarray(at, at + len)).equals(Buffer.from(data.subarray(pos, pos + len))), `lbs ${lbs} at ${pos}+${len}`).toBe(true);
        // nothing around the request is touched
        expect(buf.subarray(0, at).every((v) => v === 0) && buf.subarray(at + len).every((v) => v === 0)).toBe(true);
      }
    }
  });

  test("a refused O_DIRECT (EINVAL: a block smaller than the file system's) goes on through the page cache", () => {
    if (direct === undefined) return;
    // 256-byte "blocks": requests that O_DIRECT on this file system refuses
    const read = directReader(fd, direct, 256, file);
    for (const [pos, len] of [[256, 256], [0, 65536], [768, 1024]] as [number, number][]) {
      const buf = new Uint8Array(len);
      read(buf, pos);
      expect(Buffer.from(buf).equals(Buffer.from(data.subarray(pos, pos + len)))).toBe(true);
    }
  });

  /**
   * Runs `check` with each of two bad "direct" descriptors: a shorter copy of
   * the file (it ends early, the real one does not), and one that cannot be
   * read (EBADF); `short` tells which.
   */
  const withBadDirect = (tag: string, check: (d: number, short: boolean) => void) => {
    const short = path.join(dir, `short-${tag}.img`);
    fs.writeFileSync(short, data.subarray(0, 1024 * 1024));
    const shortFd = fs.openSync(short, "r");
    const writeOnly = fs.openSync(path.join(dir, `w-${tag}.img`), "w");
    try {
      check(shortFd, true);
      check(writeOnly, false);
    } finally {
      fs.closeSync(shortFd);
      fs.closeSync(writeOnly);
    }
  };
  /** whether buf holds the file's bytes at pos */
  const holds = (buf: Uint8Array, pos: number) => Buffer.from(buf).equals(Buffer.from(data.subarray(pos, pos + buf.length)));

  test("a failed or short O_DIRECT read is read again through the page cache: the bytes, or readFully's error", () => {
    withBadDirect("one", (d) => {
      const read = directReader(fd, d, 4096, file);
      const buf = new Uint8Array(1024 * 1024);
      read(buf, 2 * 1024 * 1024);
      expect(holds(buf, 2 * 1024 * 1024)).toBe(true);
      // past the end of the real file too: readFully's message, at the byte where it ended
      expect(() => read(new Uint8Array(4096), SIZE - 512)).toThrow(new TbError("SOURCE", `${file} ended at byte ${SIZE}, before its size`, ""));
    });
  });

  /** `n` buffers of `size` bytes, consecutive in one 4096-aligned arena (as push's chunk slots are), and zeroed. */
  const slots = (n: number, size: number, skew = 0) => {
    const b = new Uint8Array(n * size + 8192);
    const start = (4096 - (ptr(b) % 4096)) % 4096 + skew;
    return Array.from({ length: n }, (_, k) => b.subarray(start + k * size, start + (k + 1) * size));
  };
  const same = (bufs: Uint8Array[], pos: number) => bufs.every((b, k) => Buffer.from(b).equals(Buffer.from(data.subarray(pos + k * b.length, pos + (k + 1) * b.length))));

  test("many() reads consecutive aligned chunks in one request, and declines what it cannot read so (not aligned, refused), reading nothing", () => {
    if (direct === undefined) return;
    const read = directReader(fd, direct, 4096, file);
    const three = slots(3, 1024 * 1024);
    expect(read.many(three, 0)).toBe(true);
    expect(same(three, 0)).toBe(true);
    // the run that ends in the 1536-byte tail, and one whose buffers are not aligned in memory: declined, untouched
    const tail = slots(2, 1024 * 1024);
    expect(read.many([tail[0]!, tail[1]!.subarray(0, 1536)], 2 * 1024 * 1024)).toBe(false);
    const skewed = slots(2, 65536, 512);
    expect(read.many(skewed, 4096)).toBe(false);
    expect(tail.every((b) => b.every((v) => v === 0)) && skewed.every((b) => b.every((v) => v === 0))).toBe(true);
    // one buffer: nothing to gain
    expect(read.many(slots(1, 65536), 0)).toBe(false);
    // still on: the next aligned run is read in one request
    const two = slots(2, 65536);
    expect(read.many(two, 65536)).toBe(true);
    expect(same(two, 65536)).toBe(true);
    // a refused O_DIRECT (EINVAL): declined, and a single read still goes on through the page cache
    const refused = directReader(fd, direct, 256, file);
    expect(refused.many(slots(2, 65536), 256)).toBe(false);
    const one = new Uint8Array(1024);
    refused(one, 768);
    expect(Buffer.from(one).equals(Buffer.from(data.subarray(768, 1792)))).toBe(true);
  });

  test("many(): after a request that came short or failed it declines every run (a failing disk is read a chunk at a time), while single reads go on", () => {
    withBadDirect("many", (d, short) => {
      const read = directReader(fd, d, 4096, file);
      // past the short copy's end (or unreadable): declined
      expect(read.many(slots(2, 1024 * 1024), 1024 * 1024)).toBe(false);
      // and from then on, even where that descriptor could read
      if (short) expect(read.many(slots(2, 4096), 0)).toBe(false);
      const buf = new Uint8Array(1024 * 1024);
      read(buf, 2 * 1024 * 1024);
      expect(holds(buf, 2 * 1024 * 1024)).toBe(true);
    });
  });

});
