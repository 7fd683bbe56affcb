// The store interface (src/store/repository.ts) over the local directory
// store: a backup written through a BackupWriter, committed, listed and read
// back by index; a writer closed mid-way leaves a partial that can be
// continued; a disk is locked for one session at a time; a delete takes a
// backup out of every listing.
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { openRepository, type BackupWriter, type NewManifest, type Repository } from "../../src/store/repository.ts";
import { writeFrame } from "../../src/store/reflink.ts";
import { chunkDigest, frameDigest, RootBuilder } from "../../src/store/root.ts";
import { zstd } from "../../src/util/zstd.ts";
import { tempDir, cleanup, sh } from "../helpers/cli.ts";

const dirs: string[] = [];
afterAll(() => dirs.forEach(cleanup));
function store(): Repository {
  const d = tempDir("tbb-repo-");
  dirs.push(d);
  return openRepository(d);
}

const CHUNK = 4096;
const z = zstd();
const cctx = new z.CCtx();
cctx.setParameter(z.CParameter.checksumFlag, 1);
cctx.setParameter(z.CParameter.contentSizeFlag, 1);
const dctx = new z.DCtx();
function frame(raw: Uint8Array): Uint8Array {
  const out = new Uint8Array(z.compressBound(raw.length));
  return out.slice(0, cctx.compress2(out, raw));
}
function unzstd(f: Uint8Array, rawLength: number): Uint8Array {
  const out = new Uint8Array(rawLength);
  const n = dctx.decompress(out, f);
  return out.subarray(0, n);
}
/** chunk i of the test disk: distinct, and compressible */
function chunk(i: number): Uint8Array {
  return new Uint8Array(CHUNK).fill((i * 7 + 1) & 0xff);
}

function newManifest(chunks: number): NewManifest {
  return {
    format: 2,
    kind: "image",
    status: "partial",
    label: null,
    host: { hostname: "h1", machineId: null, productUuid: null },
    disk: { path: "/dev/x", kind: "file", name: "d1", size: chunks * CHUNK, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null },
    tool: { name: "tbbackup", version: "test", protocol: 1 },
    receiver: { hostname: "r", tool: "tbbackup/test" },
    session: "s",
    chunkSize: CHUNK,
    compression: { algorithm: "zstd", level: 1, format: "zstd-seekable" },
    chunks: { count: 0, zero: 0, checksum: "xxh3-64" },
    size: chunks * CHUNK,
    storedBytes: 0,
    sha256: null,
    root: null,
    digests: { algorithm: "sha256-chunk-list" },
    timings: { started: new Date(0).toISOString(), finished: null, seconds: null },
  };
}

/** Writes chunks [from, to) through the writer, as the receiver does: record, write at the position given, then its digest. */
function writeChunks(w: BackupWriter, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const raw = chunk(i);
    const f = frame(raw);
    const write = w.record(f, CHUNK, i * CHUNK, Bun.hash.xxHash3(raw));
    writeFrame(write, f);
    w.recordDigest(chunkDigest(raw, "sha256"), frameDigest(f));
  }
}

function seal(w: BackupWriter, chunks: number): string {
  const root = new RootBuilder();
  for (let i = 0; i < chunks; i++) root.add(chunkDigest(chunk(i), "sha256"));
  const stored = w.finish();
  Object.assign(w.manifest, { status: "complete", storedBytes: stored, root: root.digest(), chunks: { ...w.manifest.chunks, count: chunks } });
  return w.commit();
}

test("a backup written through a BackupWriter is committed, listed, and read back by index through a BackupReader", async () => {
  const repo = store();
  const slot = repo.create("h1", "d1", new Date(Date.UTC(2026, 11, 6, 12, 0, 0)));
  expect(slot.id).toBe("h1/d1/20261206T120000Z");
  const w = await slot.start(newManifest(6));
  // while it is written, it lists as a partial
  expect(repo.list().map((b) => [b.id, b.partial])).toEqual([["h1/d1/20261206T120000Z.partial", true]]);
  writeChunks(w, 0, 6);
  const final = seal(w, 6);
  expect(w.committed).toBe(final);

  const listed = repo.list();
  expect(listed.map((b) => [b.id, b.partial, b.hasData, b.manifest?.status])).toEqual([["h1/d1/20261206T120000Z", false, true, "complete"]]);
  const b = repo.find("h1/d1/20261206T120000Z")!;
  expect(b).not.toBeNull();
  expect(repo.find("h1/d1/../../etc")).toBeNull();
  const r = repo.open(b);
  try {
    expect(r.chunks).toBe(6);
    expect(r.rawSize).toBe(6 * CHUNK);
    // by index, in any order
    for (const i of [4, 0, 5, 2]) expect(unzstd(r.frame(i), CHUNK)).toEqual(chunk(i));
    // the chunk list in order, and every checksum at once
    const list = r.chunkList()!;
    for (let i = 0; i < 6; i++) expect(list.next()).toEqual({ index: i, offset: i * CHUNK, length: CHUNK, checksum: Bun.hash.xxHash3(chunk(i)) });
    expect(list.next()).toBeNull();
    list.close();
    expect(Array.from(r.checksums()!)).toEqual([0, 1, 2, 3, 4, 5].map((i) => Bun.hash.xxHash3(chunk(i))));
    // the digest list hashes to the root the manifest records
    expect(new Bun.CryptoHasher("sha256").update(r.digestList()).digest("hex")).toBe(r.manifest!.root!);
    // and each stored frame's XXH3-64 is on its line of frame-xxh3.txt (16 hex digits, as xxhsum -H3 prints it)
    const fd = r.frameDigests()!;
    for (let i = 0; i < 6; i++) expect(fd.at(i)).toBe(Bun.hash.xxHash3(r.frame(i)).toString(16).padStart(16, "0"));
    expect([fd.at(-1), fd.at(6), fd.at(1.5)]).toEqual([null, null, null]);
    fd.close();
    expect(fs.readFileSync(path.join(final, "frame-xxh3.txt"), "utf8")).toBe([0, 1, 2, 3, 4, 5].map((i) => frameDigest(r.frame(i)) + "\n").join(""));
  } finally {
    r.close();
  }
  // a frame-xxh3.txt cut short, or longer than its backup, is none at all
  const list = path.join(final, "frame-xxh3.txt");
  const text = fs.readFileSync(list);
  for (const damaged of [text.subarray(0, text.length - 1), Buffer.concat([text, Buffer.from("x")])]) {
    fs.writeFileSync(list, damaged);
    const r2 = repo.open(b);
    expect(r2.frameDigests()).toBeNull();
    r2.close();
  }
  // a line that is no digest is none; the others stand
  const bad = Buffer.from(text);
  bad.write("not hex", 17);
  fs.writeFileSync(list, bad);
  const r4 = repo.open(b);
  const fd4 = r4.frameDigests()!;
  expect([fd4.at(0), fd4.at(1), fd4.at(2)]).toEqual([text.toString("latin1", 0, 16), null, text.toString("latin1", 34, 50)]);
  fd4.close();
  r4.close();
  fs.rmSync(list);
  const r3 = repo.open(b);
  expect(r3.frameDigests()).toBeNull();
  r3.close();
  // without frame-xxh3.txt, the frame-digests.txt of the version before (SHA-256 lines) is read; with both, frame-xxh3.txt
  const shaList = path.join(final, "frame-digests.txt");
  const r5 = repo.open(b);
  const shaLines = [0, 1, 2, 3, 4, 5].map((i) => chunkDigest(r5.frame(i), "sha256") + "\n").join("");
  fs.writeFileSync(shaList, shaLines);
  const fd5 = r5.frameDigests()!;
  expect([0, 1, 2, 3, 4, 5].map((i) => fd5.at(i))).toEqual(shaLines.trim().split("\n"));
  fd5.close();
  fs.writeFileSync(shaList, shaLines.slice(1)); // cut short: none
  expect(r5.frameDigests()).toBeNull();
  fs.writeFileSync(list, text);
  const fd6 = r5.frameDigests()!;
  expect(fd6.at(3)).toBe(text.toString("latin1", 51, 67));
  fd6.close();
  // a frame-xxh3.txt cut short (the version before resumed a partial of this one) beside a whole frame-digests.txt: the SHA-256 lines
  fs.writeFileSync(shaList, shaLines);
  fs.writeFileSync(list, text.subarray(0, 17 * 3));
  const fd7 = r5.frameDigests()!;
  expect(fd7.at(5)).toBe(shaLines.trim().split("\n")[5]!);
  fd7.close();
  r5.close();
  // what a stock zstd reads from it is the disk
  const whole = Buffer.from(sh(`zstd -dcq ${JSON.stringify(path.join(final, "image.zst"))} | base64 -w0`), "base64");
  expect(Buffer.compare(whole, Buffer.concat([0, 1, 2, 3, 4, 5].map(chunk)))).toBe(0);
});

test("a writer closed after a checkpoint leaves a partial that is found, read back and continued to a whole backup", async () => {
  const repo = store();
  const w = await repo.create("h1", "d1", new Date(Date.UTC(2026, 11, 6, 13, 0, 0))).start(newManifest(8));
  writeChunks(w, 0, 3);
  const storedAt3 = w.storedBytes;
  // chunk 3 arrives while the checkpoint syncs: it does not cover it, and a resume starts after chunk 2
  const checkpoint = w.checkpoint();
  writeChunks(w, 3, 4);
  await checkpoint;
  expect(w.manifest.durable).toEqual({ chunks: 3, rawBytes: 3 * CHUNK, storedBytes: storedAt3, chunkListBytes: expect.any(Number) });
  w.manifest.reason = "the sender left";
  w.saveManifest();
  w.close();

  expect(repo.backupsOf("h1", "d1", "complete")).toEqual([]);
  const [p, ...more] = repo.backupsOf("h1", "d1", "partial");
  expect(more).toEqual([]);
  expect(p!.partial).toBe(true);
  expect(p!.hasData).toBe(true); // its image, under its temporary name
  const m = p!.manifest!;
  expect(m.durable!.chunks).toBe(3);
  const partial = repo.openPartial(p!);
  const lines = partial.chunkListPrefix(m.durable!.chunkListBytes).split("\n").filter(Boolean);
  expect(lines).toHaveLength(3);
  const frames = [...partial.frames(m.durable!, z.compressBound(CHUNK) + 64, (bytes) => z.findFrameCompressedSize(bytes))].map((f) => f.frame);
  expect(frames.map((f) => unzstd(f, CHUNK))).toEqual([0, 1, 2].map(chunk));

  const entries = frames.map((f) => ({ compressedSize: f.length, rawSize: CHUNK, checksum: new DataView(f.buffer, f.byteOffset + f.length - 4).getUint32(0, true) }));
  // (as if the version that wrote SHA-256 frame digests had begun it: the resumed writer's list replaces that one)
  fs.writeFileSync(path.join(p!.location, "frame-digests.txt"), "0".repeat(64) + "\n");
  const w2 = repo.resume(p!, m, entries);
  expect(w2.id).toBe("h1/d1/20261206T130000Z");
  expect(w2.chunks).toBe(3);
  for (let i = 0; i < 3; i++) w2.recordDigest(chunkDigest(chunk(i), "sha256"), frameDigest(frames[i]!));
  writeChunks(w2, 3, 8);
  delete w2.manifest.reason;
  seal(w2, 8);
  const b = repo.find("h1/d1/20261206T130000Z")!;
  const r = repo.open(b);
  try {
    expect(r.chunks).toBe(8);
    for (let i = 0; i < 8; i++) expect(unzstd(r.frame(i), CHUNK)).toEqual(chunk(i));
    expect(new Bun.CryptoHasher("sha256").update(r.digestList()).digest("hex")).toBe(r.manifest!.root!);
    // the resumed prefix's frame digests were written anew, line for line with the rest
    expect(fs.readFileSync(path.join(r.location, "frame-xxh3.txt"), "utf8")).toBe([0, 1, 2, 3, 4, 5, 6, 7].map((i) => frameDigest(r.frame(i)) + "\n").join(""));
    expect(fs.existsSync(path.join(r.location, "frame-digests.txt"))).toBe(false);
  } finally {
    r.close();
  }
  expect(repo.backupsOf("h1", "d1", "partial")).toEqual([]);
});

test("a disk is locked for one session at a time; other disks and other stores are not", () => {
  const repo = store();
  const a = repo.lock("h1", "d1");
  expect(a).not.toBeNull();
  expect(repo.lock("h1", "d1")).toBeNull();
  // the same disk named by a peer with characters IDs do not keep: the same lock
  expect(repo.lock("h1", "d1/")).toBeNull();
  expect(openRepository(repo.location).lock("h1", "d1")).toBeNull();
  const other = repo.lock("h1", "d2");
  expect(other).not.toBeNull();
  const elsewhere = store().lock("h1", "d1");
  expect(elsewhere).not.toBeNull();
  a!.release();
  a!.release(); // twice: the second does not free someone else's
  const again = repo.lock("h1", "d1");
  expect(again).not.toBeNull();
  expect(repo.lock("h1", "d1")).toBeNull();
  for (const l of [again, other, elsewhere]) l!.release();
});

test("a deleted backup is out of every listing; an unfinished deletion is finished later", async () => {
  const repo = store();
  for (const hour of [1, 2]) {
    const w = await repo.create("h1", "d1", new Date(Date.UTC(2026, 0, 1, hour))).start(newManifest(1));
    writeChunks(w, 0, 1);
    seal(w, 1);
  }
  const first = repo.findStrict("h1/d1/20260101T010000Z")!;
  expect(repo.storedBytes(first)).toBeGreaterThan(0);
  repo.delete(first);
  expect(repo.list().map((b) => b.id)).toEqual(["h1/d1/20260101T020000Z"]);
  expect(repo.find("h1/d1/20260101T010000Z")).toBeNull();
  // a deletion cut short after its rename: not listed, and finished by finishDeletions
  const second = repo.findStrict("h1/d1/20260101T020000Z")!;
  fs.renameSync(second.location, second.location + ".deleting");
  expect(repo.list()).toEqual([]);
  expect(repo.finishDeletions(true)).toEqual(["h1/d1/20260101T020000Z.deleting"]);
  expect(fs.existsSync(second.location + ".deleting")).toBe(true);
  expect(repo.finishDeletions(false)).toEqual(["h1/d1/20260101T020000Z.deleting"]);
  expect(fs.existsSync(second.location + ".deleting")).toBe(false);
});
