// The pieces that let a damaged chunk be sent again (docs/PROTOCOL.md §8.2a):
// the receiver's damage budget, the sender's rewind points, the integrity
// root going back, and the image writer taking chunks back.
import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { DamageBudget, MAX_RESENDS_PER_MINUTE, RewindPoints } from "../../src/core/resend.ts";
import { RootBuilder, chunkDigest } from "../../src/store/root.ts";
import { ImageWriter } from "../../src/store/image-writer.ts";
import { zstd } from "../../src/util/zstd.ts";
import { cleanup, sh, tempDir } from "../helpers/cli.ts";

describe("DamageBudget", () => {
  test("a chunk is asked for again twice; its third damage ends the session, naming it", () => {
    const b = new DamageBudget();
    expect(b.note(7, "crc", 0)).toBeNull();
    expect(b.note(7, "crc", 1)).toBeNull();
    const e = b.note(7, "its DATA frame failed its checksum", 2);
    expect(e?.code).toBe("CORRUPT");
    expect(e?.oneLine()).toMatch(/^chunk 7 arrived damaged 3 times \(last: its DATA frame failed its checksum\); .*check the cable/);
  });

  test("more than the limit within a minute ends it; the same number spread over minutes does not", () => {
    const b = new DamageBudget();
    for (let i = 0; i < MAX_RESENDS_PER_MINUTE; i++) expect(b.note(i, "crc", i * 1000)).toBeNull();
    expect(b.note(100, "crc", 30_000)?.message).toMatch(/^11 chunks arrived damaged within a minute \(last: chunk 100, crc\)/);
    const slow = new DamageBudget();
    for (let i = 0; i < 3 * MAX_RESENDS_PER_MINUTE; i++) expect(slow.note(i, "crc", i * 10_000)).toBeNull();
  });
});

describe("RewindPoints", () => {
  test("goes back to a chunk it kept, forgets later ones, and can go back there again", () => {
    const p = new RewindPoints<string>(4);
    for (let i = 0; i < 10; i++) p.save(i, `before ${i}`);
    expect(p.size).toBe(4);
    expect(p.take(5)).toBeNull(); // older than the window
    expect(p.take(8)).toBe("before 8");
    expect(p.take(9)).toBeNull(); // forgotten: sent again after 8
    expect(p.take(8)).toBe("before 8"); // asked again before it was sent again
    p.save(8, "before 8, again");
    p.save(9, "before 9, again");
    expect(p.take(9)).toBe("before 9, again");
    expect(p.take(8)).toBe("before 8, again");
  });

  test("stays bounded over many chunks", () => {
    const p = new RewindPoints<number>(100);
    for (let i = 0; i < 100_000; i++) p.save(i, i);
    expect(p.size).toBe(100);
    expect(p.take(99_900)).toBe(99_900);
    expect(p.take(99_899)).toBeNull();
  });
});

test("RootBuilder.restore goes back to a saved state: the root counts each digest once", () => {
  const digests = ["a", "b", "c", "d"].map((x) => x.repeat(64));
  const straight = new RootBuilder();
  for (const d of digests) straight.add(d);
  const r = new RootBuilder(4);
  r.add(digests[0]!);
  const at1 = r.save();
  r.add(digests[1]!);
  r.add(digests[2]!);
  r.restore(at1);
  for (const d of digests.slice(1)) r.add(d);
  expect(r.count).toBe(4);
  expect(r.digest()).toBe(straight.digest());
  // the saved state itself is not changed by what followed
  r.restore(at1);
  expect(r.count).toBe(1);
});

test("RootBuilder hashes its digests in batches: the root is SHA-256 over the lines, and only the last `keep` can be taken back", () => {
  const digests = Array.from({ length: 1000 }, (_, i) => chunkDigest(new Uint8Array([i & 255, i >> 8]), "sha256"));
  const lines = (ds: string[]) => new Bun.CryptoHasher("sha256").update(ds.map((d) => d + "\n").join("")).digest("hex");
  const r = new RootBuilder(16);
  const saved: number[] = [];
  for (const d of digests) {
    saved.push(r.save());
    r.add(d);
  }
  expect(r.count).toBe(1000);
  expect(r.digest()).toBe(lines(digests));
  // back 16 chunks (the window), then the same digests again: the same root
  r.restore(saved[984]!);
  expect(r.count).toBe(984);
  expect(r.digest()).toBe(lines(digests.slice(0, 984)));
  for (const d of digests.slice(984)) r.add(d);
  expect(r.digest()).toBe(lines(digests));
  // further back than the window: refused, not a wrong root
  expect(() => r.restore(saved[500]!)).toThrow(RangeError);
  expect(r.digest()).toBe(lines(digests));
  // a builder with no window folds as it goes and gives the same root
  const plain = new RootBuilder();
  for (const d of digests) plain.add(d);
  expect(plain.digest()).toBe(lines(digests));
});

test("ImageWriter.truncateTo takes chunks back: the image, chunks.txt and seek table are as if only the rest had been written", () => {
  const dir = tempDir("tbb-trunc-");
  try {
    const z = zstd();
    const cctx = new z.CCtx();
    cctx.setParameter(z.CParameter.checksumFlag, 1);
    cctx.setParameter(z.CParameter.contentSizeFlag, 1);
    // the first copies of chunks 2.. do not compress; their second copies do (the file must shrink back)
    const chunk = (i: number) => (i >= 2 && i < 10 ? crypto.getRandomValues(new Uint8Array(4096)) : new Uint8Array(4096).fill(i + 1));
    const frame = (raw: Uint8Array) => {
      const out = new Uint8Array(z.compressBound(raw.length));
      return out.slice(0, cctx.compress2(out, raw));
    };
    const w = new ImageWriter(dir, "image.zst");
    for (let i = 0; i < 5; i++) {
      const raw = chunk(i);
      w.append(frame(raw), 4096, i * 4096, Bun.hash.xxHash3(raw));
    }
    w.recordDigest("0".repeat(64), "2".repeat(64));
    w.recordDigest("1".repeat(64), "3".repeat(64));
    expect(() => w.truncateTo(1)).toThrow(/cannot take back/); // chunk 1's digest is recorded: it was accepted
    w.truncateTo(2);
    expect(w.chunks).toBe(2);
    // chunks 2.. again, with other contents (what the sender sends the second time)
    for (let i = 2; i < 4; i++) w.append(frame(chunk(i + 10)), 4096, i * 4096, Bun.hash.xxHash3(chunk(i + 10)));
    w.finish();
    const lines = fs.readFileSync(path.join(dir, "chunks.txt"), "utf8").trim().split("\n");
    expect(lines.map((l) => l.split(" ").slice(0, 3).join(" "))).toEqual(["0 0 4096", "1 4096 4096", "2 8192 4096", "3 12288 4096"]);
    expect(lines[2]!.split(" ")[3]).toBe(Bun.hash.xxHash3(chunk(12)).toString(16).padStart(16, "0"));
    sh(`zstd -tq ${JSON.stringify(path.join(dir, "image.zst"))}`); // nothing left of the first copies after the seek table
    const want = Buffer.concat([chunk(0), chunk(1), chunk(12), chunk(13)]);
    const got = Buffer.from(sh(`zstd -dcq ${JSON.stringify(path.join(dir, "image.zst"))} | base64 -w0`), "base64");
    expect(got.equals(want)).toBe(true);
  } finally {
    cleanup(dir);
  }
});
