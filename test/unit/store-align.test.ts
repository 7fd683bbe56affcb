// An aligned image (docs/FORMAT.md §3.5): the padding rule, the writer's
// layout (large frames on block boundaries, padding counted in the entry
// before), taking chunks back, and the readers leaving the padding off.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { ImageWriter } from "../../src/store/image-writer.ts";
import { ImageReader, frameOfEntry } from "../../src/store/image-reader.ts";
import { isPadding, paddingFrame, paddingTo } from "../../src/store/seekable.ts";
import { zeroFrame } from "../../src/core/zero.ts";
import { zstd } from "../../src/util/zstd.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir("tbb-align-");
});
afterAll(() => cleanup(dir));

function compress(raw: Uint8Array): Uint8Array {
  const z = zstd();
  const c = new z.CCtx();
  c.setParameter(z.CParameter.compressionLevel, 1);
  c.setParameter(z.CParameter.checksumFlag, 1);
  c.setParameter(z.CParameter.contentSizeFlag, 1);
  const out = new Uint8Array(z.compressBound(raw.length));
  return out.slice(0, c.compress2(out, raw));
}

function decompress(frame: Uint8Array, rawLength: number): Buffer {
  const out = new Uint8Array(rawLength + 16);
  return Buffer.from(out.subarray(0, new (zstd().DCtx)().decompress(out, frame)));
}

const random = (n: number) => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
};

/** Random data whose frame is exactly `size` bytes (random data is stored raw: the frame grows with it). */
function rawOfFrameSize(size: number): Uint8Array {
  for (let n = size - 40; n < size; n++) {
    const raw = random(n);
    if (compress(raw).length === size) return raw;
  }
  throw new Error(`no raw length gives a frame of ${size} bytes`);
}

describe("paddingTo", () => {
  test("none on a boundary; a gap of 8 or more is one skippable frame; 1..7 bytes take a block more", () => {
    expect(paddingTo(0, 4096)).toBe(0);
    expect(paddingTo(8192, 4096)).toBe(0);
    expect(paddingTo(1, 4096)).toBe(4095);
    expect(paddingTo(4088, 4096)).toBe(8);
    expect(paddingTo(4089, 4096)).toBe(7 + 4096);
    expect(paddingTo(4095, 4096)).toBe(1 + 4096);
    expect(paddingTo(65537, 65536)).toBe(65535);
  });
});

describe("frameOfEntry", () => {
  const frame = compress(new TextEncoder().encode("tbbackup ".repeat(1000)));
  test("leaves off skippable frames after the frame, and only those", () => {
    const padded = new Uint8Array(frame.length + 100);
    padded.set(frame);
    padded.set(paddingFrame(100), frame.length);
    expect(isPadding(padded, frame.length)).toBe(true);
    expect(frameOfEntry(padded)).toEqual(frame);
    expect(frameOfEntry(frame)).toEqual(frame);
    // two skippable frames (the next frame's lead, after this one's own)
    const two = new Uint8Array(frame.length + 30);
    two.set(frame);
    two.set(paddingFrame(10), frame.length);
    two.set(paddingFrame(20), frame.length + 10);
    expect(frameOfEntry(two)).toEqual(frame);
    // junk after the frame: the entry is returned whole, so its check fails
    const junk = new Uint8Array(frame.length + 12);
    junk.set(frame);
    junk.set([1, 2, 3, 4, 5, 6, 7, 8], frame.length);
    expect(frameOfEntry(junk).length).toBe(junk.length);
    // a skippable header claiming more than is there
    const short = new Uint8Array(frame.length + 16);
    short.set(frame);
    short.set(paddingFrame(100).subarray(0, 16), frame.length);
    expect(frameOfEntry(short).length).toBe(short.length);
    // not a frame at all
    expect(frameOfEntry(new Uint8Array(50)).length).toBe(50);
  });
});

describe("ImageWriter with align", () => {
  const align = 4096;
  // a mixed image: large frames (random 64 KiB), tiny ones (zeros), one just under a block, one whose gap to the next block is 1..7 bytes
  function chunks(): Uint8Array[] {
    const zeros = new Uint8Array(65536);
    // frame 0 is 4090 bytes: the large frame after it has a 6-byte gap to cover
    return [rawOfFrameSize(4090), random(65536), zeros, random(65536), zeros, zeros, rawOfFrameSize(4000), random(50000), random(65536), zeros];
  }

  function write(name: string, raws: Uint8Array[], a: number, takeBack?: { after: number; to: number; then: Uint8Array[] }): string {
    const d = path.join(dir, name);
    fs.mkdirSync(d);
    const w = new ImageWriter(d, "image.zst", undefined, a);
    let off = 0;
    const add = (raw: Uint8Array) => {
      w.append(compress(raw), raw.length, off, Bun.hash.xxHash3(raw));
      off += raw.length;
    };
    raws.forEach((raw, i) => {
      add(raw);
      if (takeBack && i === takeBack.after) {
        w.truncateTo(takeBack.to);
        off = raws.slice(0, takeBack.to).reduce((s, r) => s + r.length, 0);
        takeBack.then.forEach(add);
      }
    });
    w.finish();
    return path.join(d, "image.zst");
  }

  test("large frames start on blocks and their entries end on blocks; each entry is its frame and skippable padding; zstd -dc gives the data", () => {
    const raws = chunks();
    const image = write("mixed", raws, align);
    const r = ImageReader.open(image);
    try {
      expect(r.entries.length).toBe(raws.length);
      let padding = 0;
      for (let i = 0; i < raws.length; i++) {
        const entry = r.readEntry(i);
        const frame = r.readFrame(i);
        const size = zstd().findFrameCompressedSize(entry);
        expect(frame.length).toBe(size);
        expect(isPadding(entry, size)).toBe(true);
        padding += entry.length - size;
        if (size >= align) {
          expect(r.offsets[i]! % align).toBe(0);
          expect((r.offsets[i]! + entry.length) % align).toBe(0);
        }
        expect(decompress(frame, raws[i]!.length)).toEqual(Buffer.from(raws[i]!));
        // zstd-napi skips the padding too, when given the whole entry
        expect(decompress(entry, raws[i]!.length)).toEqual(Buffer.from(raws[i]!));
        // the seek table's checksum is the frame's, not the padding's last bytes
        expect(r.entries[i]!.checksum).toBe(new DataView(frame.buffer, frame.byteOffset + frame.length - 4).getUint32(0, true));
      }
      expect(padding).toBeGreaterThan(0);
      // chunk 0 (4090 bytes) is followed by a large frame: 6 bytes short of a block take a block more
      expect(r.entries[0]!.compressedSize).toBe(4090 + 6 + align);
      // a zero chunk followed by zeros keeps its tiny entry
      expect(r.entries[4]!.compressedSize).toBe(zeroFrame(65536).length);
    } finally {
      r.close();
    }
    const raw = sh(`zstd -dcq ${image} | sha256sum`).split(" ")[0];
    expect(raw).toBe(new Bun.CryptoHasher("sha256").update(Buffer.concat(raws)).digest("hex"));
    expect(sh(`zstd -lv ${image} 2>&1`)).toMatch(/Zstandard Frames: 10\b/);
  });

  test("without align, frames lie back to back as before", () => {
    const raws = chunks();
    const image = write("plain", raws, 0);
    const r = ImageReader.open(image);
    for (let i = 0; i < raws.length; i++) expect(r.readEntry(i).length).toBe(zstd().findFrameCompressedSize(r.readEntry(i)));
    r.close();
    expect(sh(`zstd -lv ${image} 2>&1`)).toMatch(/Skippable Frames: 1\b/);
  });

  test("taking chunks back takes back the padding their frames added to the entry before", () => {
    const raws = chunks();
    // chunk 1 (large) padded chunk 0's entry; it is taken back and a tiny frame comes instead
    const zeros = new Uint8Array(65536);
    const image = write("taken", raws.slice(0, 2), align, { after: 1, to: 1, then: [zeros, raws[1]!] });
    const r = ImageReader.open(image);
    try {
      expect(r.entries.length).toBe(3);
      expect(r.entries[0]!.compressedSize).toBe(4090); // no padding: a tiny frame follows it
      expect(r.offsets[2]! % align).toBe(0);
      expect(decompress(r.readFrame(2), raws[1]!.length)).toEqual(Buffer.from(raws[1]!));
    } finally {
      r.close();
    }
    expect(sh(`zstd -dcq ${image} | wc -c`).trim()).toBe(String(raws[0]!.length + 65536 + raws[1]!.length));
  });

  test("a frame offered from another image is cloned only when that entry is laid out alike", () => {
    const d = path.join(dir, "offers");
    fs.mkdirSync(d);
    const w = new ImageWriter(d, "image.zst", undefined, align);
    const big = compress(random(65536));
    const trail = paddingTo(big.length, align);
    expect(w.record(big, 65536, 0, 0n, { fd: 99, offset: 8192, length: big.length + trail }).clone).toEqual({ fd: 99, offset: 8192, length: big.length + trail });
    expect(w.record(big, 65536, 65536, 0n, { fd: 99, offset: 8193, length: big.length + trail }).clone).toBeUndefined();
    expect(w.record(big, 65536, 131072, 0n, { fd: 99, offset: 8192, length: big.length }).clone).toBeUndefined();
    const small = compress(new Uint8Array(65536));
    expect(w.record(small, 65536, 196608, 0n, { fd: 99, offset: 8192, length: small.length }).clone).toBeUndefined();
    w.abort();
    fs.mkdirSync(path.join(d, "plain"));
    const plain = new ImageWriter(path.join(d, "plain"), "image.zst", undefined, 0);
    expect(plain.record(big, 65536, 0, 0n, { fd: 99, offset: 0, length: big.length }).clone).toBeUndefined();
    plain.abort();
  });
});

describe("reflinkAlignment", () => {
  test("0 on a file system that cannot clone (this test's ext4 or tmpfs); TBBACKUP_REFLINK forces a valid block size or turns it off", async () => {
    const { reflinkAlignment } = await import("../../src/store/reflink.ts");
    const saved = process.env.TBBACKUP_REFLINK;
    try {
      delete process.env.TBBACKUP_REFLINK;
      const fsType = sh(`stat -f -c %T ${dir}`).trim();
      if (!/btrfs|xfs/.test(fsType)) expect(await reflinkAlignment(dir, 1 << 20)).toBe(0);
      process.env.TBBACKUP_REFLINK = "8192";
      expect(await reflinkAlignment(dir, 1 << 20)).toBe(8192);
      process.env.TBBACKUP_REFLINK = "0";
      expect(await reflinkAlignment(dir, 1 << 20)).toBe(0);
      // anything else is refused, never taken as unset (a tester who wrote "off" must not get alignment)
      for (const bad of ["4097", "2048", "131072", "off", "00", "4k", " 4096"]) {
        process.env.TBBACKUP_REFLINK = bad;
        await expect(reflinkAlignment(dir, 1 << 20)).rejects.toThrow(/is neither 0 nor a block size/);
      }
      // forced: whatever the chunk size
      process.env.TBBACKUP_REFLINK = "4096";
      expect(await reflinkAlignment(dir, 4096)).toBe(4096);
      // the scratch file is gone
      expect(fs.readdirSync(dir).filter((n) => n.startsWith(".tbbackup-reflink"))).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.TBBACKUP_REFLINK;
      else process.env.TBBACKUP_REFLINK = saved;
    }
  });
});
