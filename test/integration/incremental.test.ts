// Incremental push and delta restore (README, "Incremental backups and delta
// restore"; docs/PROTOCOL.md §8.7), with the compiled binary on a real ext4
// image changed by debugfs: the second push sends only the changed chunks
// (counted on the wire by a relay), its image alone is the whole new disk and
// outlives its base; a damaged base never makes a broken backup; --full and a
// sender without the capability get full sessions; a delta restore onto a loop
// device that holds the older version writes only what changed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { cleanup, finish, makeExt4Image, run, sh, start, stockRoot, storeBackup, tempDir, waitFor } from "../helpers/cli.ts";
import { ImageReader } from "../../src/store/image-reader.ts";
import { startProxy, type ProxyPlan } from "../helpers/proxy.ts";
import { MsgType } from "../../src/protocol/messages.ts";
import { client, dataPayload } from "../helpers/raw-client.ts";

const MiB = 1024 * 1024;
const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const canLoop = process.getuid?.() === 0 && has("losetup") && fs.existsSync("/dev/loop-control");

let dir: string;
/** the disk as first pushed, and after a few MiB of changes */
let oldImg: string;
let newImg: string;
/** indices of the 1 MiB chunks that differ between them */
let changed: number[];
/** what `zstd -1` makes of those chunks: the bound's measure */
let changedZstd: number;

beforeAll(() => {
  dir = tempDir("tbb-incr-");
  oldImg = makeExt4Image(dir, 64, "old.img");
  // a disk mostly full of data, so that writing all of it is far more than writing the changes
  const bulk = path.join(dir, "bulk.bin");
  sh(`head -c 36M /dev/urandom > ${bulk} && debugfs -w -R "write ${bulk} bulk.bin" ${oldImg} 2>/dev/null`);
  newImg = path.join(dir, "disk.img");
  // the disk the pushes read is always disk.img: the same path, size and host
  fs.copyFileSync(oldImg, newImg);
  const extra = path.join(dir, "new.bin");
  const rnd = Buffer.alloc(3 * MiB);
  for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, i + 65536));
  fs.writeFileSync(extra, rnd);
  const a = fs.readFileSync(oldImg);
  sh(`debugfs -w -R "write ${extra} added.bin" ${newImg} 2>/dev/null`);
  const b = fs.readFileSync(newImg);
  changed = [];
  for (let i = 0; i * MiB < b.length; i++) if (!a.subarray(i * MiB, (i + 1) * MiB).equals(b.subarray(i * MiB, (i + 1) * MiB))) changed.push(i);
  const parts = path.join(dir, "changed.raw");
  fs.writeFileSync(parts, Buffer.concat(changed.map((i) => b.subarray(i * MiB, (i + 1) * MiB))));
  changedZstd = Number(sh(`zstd -1 -c ${parts} | wc -c`).trim());
});
afterAll(() => cleanup(dir));

/** A relay between a pusher and the receiver's socket that counts every byte both ways. */
function countingRelay(listen: string, target: string, onSenderData?: (d: Buffer) => void): Promise<{ bytes: () => number; close: () => void }> {
  let bytes = 0;
  const server = net.createServer((c) => {
    const u = net.connect(target);
    c.on("data", (d: Buffer) => {
      onSenderData?.(d);
      bytes += d.length;
      u.write(d);
    });
    u.on("data", (d: Buffer) => {
      bytes += d.length;
      c.write(d);
    });
    c.on("error", () => u.destroy());
    u.on("error", () => c.destroy());
    c.on("close", () => u.destroy());
    u.on("end", () => c.end());
  });
  return new Promise((resolve) => server.listen(listen, () => resolve({ bytes: () => bytes, close: () => server.close() })));
}

/** Pushes `disk.img` (all blocks: the stored image is then the disk itself) into `out` through a counting relay. */
async function pushCounted(out: string, args: string[] = [], onSenderData?: (d: Buffer) => void) {
  const sock = path.join(dir, `r-${crypto.randomUUID().slice(0, 8)}.sock`);
  const rel = sock + ".relay";
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "receiver socket");
  const relay = await countingRelay(rel, sock, onSenderData);
  try {
    const p = await run(["push", newImg, "--all-blocks", "--stream", `unix:${rel}`, ...args]);
    const r = await finish(recv);
    return { push: p, recv: r, wire: relay.bytes() };
  } finally {
    relay.close();
    recv.kill();
  }
}

/** Pushes `disk.img` into `out` through the damaging proxy (test/helpers/proxy.ts). */
async function pushViaProxy(out: string, plan: ProxyPlan) {
  const sock = path.join(dir, `p-${crypto.randomUUID().slice(0, 8)}.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "receiver socket");
  const proxy = await startProxy(sock + ".proxy", sock, plan);
  try {
    const p = await run(["push", newImg, "--all-blocks", "--stream", `unix:${sock}.proxy`]);
    return { push: p, recv: await finish(recv) };
  } finally {
    proxy.close();
    recv.kill();
  }
}

/** The complete backups under a store, oldest first. */
function backups(out: string): string[] {
  const parent = path.join(out, fs.readdirSync(out)[0]!, "disk.img");
  return fs.readdirSync(parent).sort().map((n) => path.join(parent, n));
}

const manifest = (d: string) => JSON.parse(fs.readFileSync(path.join(d, "manifest.json"), "utf8"));
/** The XXH3-64 of each stored frame of a backup (without padding), as frame-xxh3.txt lines; with `sha`, their SHA-256 as the older frame-digests.txt had them. */
function frameDigests(d: string, sha = false): string[] {
  const r = ImageReader.open(path.join(d, "image.zst"));
  try {
    return r.entries.map((_, i) => (sha ? new Bun.CryptoHasher("sha256").update(r.readFrame(i)).digest("hex") : Bun.hash.xxHash3(r.readFrame(i)).toString(16).padStart(16, "0")) + "\n");
  } finally {
    r.close();
  }
}
const sameFile = (a: string, b: string) => sh(`cmp ${a} ${b} >/dev/null && echo same || echo differ`).trim();

/** Stores the old version of the disk as the first, full backup of a new store. */
async function storeBase(out: string): Promise<string> {
  fs.copyFileSync(oldImg, newImg);
  await storeBackup(newImg, out, path.join(dir, `s-${crypto.randomUUID().slice(0, 8)}.sock`), ["--all-blocks"]);
  // back to the changed disk (debugfs made it from the same old image)
  sh(`cp ${oldImg} ${newImg} && debugfs -w -R "write ${path.join(dir, "new.bin")} added.bin" ${newImg} 2>/dev/null`);
  return backups(out)[0]!;
}

describe("incremental push", () => {
  test("a damaged BASE_DIGESTS frame: the push goes on without a base and completes", async () => {
    const out = path.join(dir, "store-g");
    await storeBase(out);
    const r = await pushViaProxy(out, { damageBack: { type: MsgType.BASE_DIGESTS } });
    expect(r.push.code, r.push.stderr).toBe(0);
    expect(r.push.stderr).toContain("not incremental against");
    expect(r.push.stderr).not.toContain("chunks changed");
    const full = backups(out)[1]!;
    expect(manifest(full).base).toBeUndefined();
    expect(manifest(full).root).toBe(stockRoot(newImg));
  });

  test("a lost HELLO_ACK: the repeated HELLO gets the offer and the digests again; the push is incremental", async () => {
    const out = path.join(dir, "store-h");
    await storeBase(out);
    const r = await pushViaProxy(out, { damageBack: { type: MsgType.HELLO_ACK, drop: true } });
    expect(r.push.code, r.push.stderr).toBe(0);
    expect(r.push.stderr).toContain(`${changed.length} of 64 chunks changed`);
    const incr = backups(out)[1]!;
    expect(manifest(incr).base).toBeDefined();
    sh(`zstd -dcq ${incr}/image.zst > ${dir}/out-h.raw`);
    expect(sameFile(`${dir}/out-h.raw`, newImg)).toBe("same");
  });

  test("only the changed chunks travel; the new image alone is the whole new disk and outlives its base", async () => {
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.length).toBeLessThan(16);
    const out = path.join(dir, "store-a");
    const base = await storeBase(out);
    const r = await pushCounted(out);
    expect(r.push.code, r.push.stderr).toBe(0);
    expect(r.recv.code, r.recv.stderr).toBe(0);
    const id = path.relative(out, base);
    expect(r.push.stderr).toContain(`incremental against ${id}: ${changed.length} of 64 chunks changed`);
    expect(r.push.stderr).toMatch(/sent [\d.]+ [KM]i?B, stored [\d.]+ [KM]i?B new/);
    // the bound: what zstd -1 makes of the changed chunks, with room, plus 1 MB for the rest
    expect(r.wire).toBeLessThanOrEqual(1.3 * changedZstd + 1_000_000);
    const [, incr] = backups(out);
    const m = manifest(incr!);
    expect(m.base).toBe(id);
    // every unchanged chunk that is not zeros (those travel as ZERO records) was copied from the base
    const old = fs.readFileSync(oldImg);
    expect(m.chunks.same).toBe([...Array(64).keys()].filter((i) => !changed.includes(i) && !old.subarray(i * MiB, (i + 1) * MiB).every((x) => x === 0)).length);
    expect(m.sharedBytes).toBeGreaterThan(0);
    expect(m.root).toBe(stockRoot(newImg));
    // the base's frames were known by the SHA-256 each had when it was checked: none decompressed again
    expect(r.recv.stdout + r.recv.stderr).toContain(`${m.chunks.same} of 64 chunks (${m.chunks.same} known by their frame digests)`);
    // and the new backup lists its own frames' digests, line for line
    expect(fs.readFileSync(path.join(incr!, "frame-xxh3.txt"), "utf8")).toBe(frameDigests(incr!).join(""));
    sh(`zstd -dcq ${incr}/image.zst > ${dir}/out-a.raw`);
    expect(sameFile(`${dir}/out-a.raw`, newImg)).toBe("same");
    expect((await run(["verify", incr!])).code).toBe(0);
    // list: the new backup stored little that is new
    const rows = JSON.parse((await run(["list", "--out", out, "--json"])).stdout) as { id: string; base: string | null; sharedBytes: number | null; storedBytes: number }[];
    const row = rows.find((x) => x.base === id)!;
    expect(row.storedBytes - row.sharedBytes!).toBeLessThan(changedZstd + 100_000);
    // the base goes: the new backup is a copy, not a reference
    fs.rmSync(base, { recursive: true });
    const v = await run(["verify", incr!]);
    expect(v.code, v.stderr).toBe(0);
    const t = path.join(dir, "restored-a.img");
    const rs = await run(["restore", t, "--from", incr!, "--yes"]);
    expect(rs.code, rs.stderr).toBe(0);
    expect(sameFile(t, newImg)).toBe("same");
  });

  test("a frame-xxh3.txt line that is wrong, or malformed, only means that frame is checked the long way: the backup is right, its list too", async () => {
    const out = path.join(dir, "store-k");
    const base = await storeBase(out);
    const a = fs.readFileSync(oldImg);
    const data = [...Array(64).keys()].filter((i) => !changed.includes(i) && !a.subarray(i * MiB, (i + 1) * MiB).every((x) => x === 0));
    const [wrong, malformed] = [data[0]!, data[1]!];
    const list = path.join(base, "frame-xxh3.txt");
    const lines = fs.readFileSync(list, "utf8").split("\n");
    expect(lines[wrong]).toBe(frameDigests(base)[wrong]!.trim());
    lines[wrong] = lines[data[2]!]!; // another frame's digest: well formed, but not this frame's
    lines[malformed] = "not a digest".padEnd(16, "!");
    fs.writeFileSync(list, lines.join("\n"));
    const r = await pushCounted(out);
    expect(r.push.code, r.push.stderr).toBe(0);
    const incr = backups(out)[1]!;
    const m = manifest(incr);
    expect(m.chunks.same).toBe(data.length);
    expect(r.recv.stdout + r.recv.stderr).toContain(`(${data.length - 2} known by their frame digests)`);
    expect(m.root).toBe(stockRoot(newImg));
    expect(fs.readFileSync(path.join(incr, "frame-xxh3.txt"), "utf8")).toBe(frameDigests(incr).join(""));
    expect((await run(["verify", incr])).code).toBe(0);
  });

  test("a base stored with the older frame-digests.txt (SHA-256 lines) is still known by them; the new backup has frame-xxh3.txt", async () => {
    const out = path.join(dir, "store-s");
    const base = await storeBase(out);
    const a = fs.readFileSync(oldImg);
    const data = [...Array(64).keys()].filter((i) => !changed.includes(i) && !a.subarray(i * MiB, (i + 1) * MiB).every((x) => x === 0));
    // the base as the version before wrote it: SHA-256 lines in frame-digests.txt, no frame-xxh3.txt
    const shaLines = frameDigests(base, true);
    shaLines[data[0]!] = shaLines[data[1]!]!; // and one of them wrong: that frame is checked the long way
    fs.writeFileSync(path.join(base, "frame-digests.txt"), shaLines.join(""));
    fs.rmSync(path.join(base, "frame-xxh3.txt"));
    const r = await pushCounted(out);
    expect(r.push.code, r.push.stderr).toBe(0);
    const incr = backups(out)[1]!;
    expect(manifest(incr).chunks.same).toBe(data.length);
    expect(r.recv.stdout + r.recv.stderr).toContain(`(${data.length - 1} known by their frame digests)`);
    expect(manifest(incr).root).toBe(stockRoot(newImg));
    expect(fs.readFileSync(path.join(incr, "frame-xxh3.txt"), "utf8")).toBe(frameDigests(incr).join(""));
    expect(fs.existsSync(path.join(incr, "frame-digests.txt"))).toBe(false);
    expect((await run(["verify", incr])).code).toBe(0);
  });

  test("a base whose stored frame was damaged never makes a broken backup: the push fails clearly, --full then works", async () => {
    const out = path.join(dir, "store-b");
    const base = await storeBase(out);
    // damage a chunk the new push will find unchanged (not zeros: those travel as ZERO)
    const a = fs.readFileSync(oldImg);
    const victim = [...Array(64).keys()].find((i) => !changed.includes(i) && !a.subarray(i * MiB, (i + 1) * MiB).every((x) => x === 0))!;
    const reader = ImageReader.open(path.join(base, "image.zst"));
    const at = reader.offsets[victim]! + Math.floor(reader.entries[victim]!.compressedSize / 2);
    reader.close();
    const fd = fs.openSync(path.join(base, "image.zst"), "r+");
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x40;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
    const r = await pushCounted(out);
    expect(r.push.code).toBe(10); // VERIFY, as the receiver reported it
    expect(r.push.stderr).toContain(`chunk ${victim} of the base backup`);
    expect(r.push.stderr).toContain("--full");
    // nothing complete was made from it
    expect(backups(out).filter((d) => !d.endsWith(".partial") && manifest(d).status === "complete")).toEqual([base]);
    const f = await pushCounted(out, ["--full"]);
    expect(f.push.code, f.push.stderr).toBe(0);
    expect(f.push.stderr).not.toContain("incremental against");
    const full = backups(out).find((d) => d !== base && !d.endsWith(".partial"))!;
    expect(manifest(full).base).toBeUndefined();
    expect((await run(["verify", full])).code).toBe(0);
    // --full sent every chunk: about what zstd -1 makes of the whole disk
    expect(f.wire).toBeGreaterThan(0.9 * Number(sh(`zstd -1 -c ${newImg} | wc -c`).trim()));
  });

  test("a base deleted during the push: the receiver still copies it whole; the new backup is complete and right", async () => {
    const out = path.join(dir, "store-i");
    const base = await storeBase(out);
    // the first SAME record on its way: by then the receiver has the base open
    const sameFrame = Buffer.from([0x54, 0x42, 0x4b, 0x31, MsgType.SAME]);
    let deleted = false;
    const r = await pushCounted(out, [], (d) => {
      if (!deleted && d.includes(sameFrame)) {
        fs.rmSync(base, { recursive: true });
        deleted = true;
      }
    });
    expect(deleted).toBe(true);
    expect(r.push.code, r.push.stderr).toBe(0);
    expect(r.push.stderr).toContain("chunks changed");
    const [incr] = backups(out);
    expect(manifest(incr!).chunks.same).toBeGreaterThan(0);
    sh(`zstd -dcq ${incr}/image.zst > ${dir}/out-i.raw`);
    expect(sameFile(`${dir}/out-i.raw`, newImg)).toBe("same");
    expect((await run(["verify", incr!])).code).toBe(0);
  });

  test("a sender without the capability gets a full session, though the store holds a base for its disk", async () => {
    const out = path.join(dir, "store-c");
    const base = await storeBase(out);
    const m = manifest(base);
    const sock = path.join(dir, "old-sender.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const c = await client(sock);
      const session = crypto.randomUUID();
      const caps = ["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root"];
      await c.json(MsgType.HELLO, { protocol: "tbbackup", proto: 1, tool: "tbbackup/0.1.0", role: "push", session, host: m.host, caps, disk: m.disk, chunkSize: MiB, level: 1, content: "image" });
      const ack = await c.expect(MsgType.HELLO_ACK);
      expect(ack.base).toBeUndefined();
      const data = fs.readFileSync(newImg);
      let i = 0;
      for (let offset = 0; offset < data.length; offset += MiB, i++) await c.send(MsgType.DATA, dataPayload(i, offset, data.subarray(offset, offset + MiB)));
      const root = stockRoot(newImg, "1M", "sha256"); // (a sender that does not list blake3 computes SHA-256 chunk digests)
      await c.json(MsgType.END, { chunks: i, bytes: data.length, root });
      const done = await c.expect(MsgType.DONE);
      expect(done.root).toBe(root);
      expect(done.base).toBeUndefined();
      expect(c.frames.some((f) => f.type === MsgType.BASE_DIGESTS)).toBe(false);
      c.close();
      expect((await finish(recv)).code).toBe(0);
      expect(manifest(path.join(out, String(done.id))).base).toBeUndefined();
    } finally {
      recv.kill();
    }
  });
});

/** Sectors written to a block device so far (field 7 of /sys/block/NAME/stat), in bytes. */
function bytesWritten(loop: string): number {
  return Number(fs.readFileSync(`/sys/block/${path.basename(loop)}/stat`, "utf8").trim().split(/\s+/)[6]) * 512;
}

describe.skipIf(!canLoop)("delta restore (needs root and loop devices)", () => {
  test("onto a loop device holding the older version: only the changed chunks are written; --no-delta writes all", async () => {
    const out = path.join(dir, "store-d");
    await storeBase(out);
    const r = await pushCounted(out);
    expect(r.push.code, r.push.stderr).toBe(0);
    const incr = backups(out)[1]!;
    const backing = path.join(dir, "loop-backing.img");
    fs.copyFileSync(oldImg, backing);
    sh("sync");
    const loop = sh(`losetup -f --show ${backing}`).trim();
    try {
      const before = bytesWritten(loop);
      const d = await run(["restore", loop, "--from", incr, "--yes", "--force"]);
      expect(d.code, d.stderr).toBe(0);
      expect(d.stderr).toContain("read back and verified");
      expect(d.stderr).toMatch(/the target already held \d+% of this backup: wrote /);
      const written = bytesWritten(loop) - before;
      expect(written).toBeLessThanOrEqual(3 * changed.length * MiB);
      const before2 = bytesWritten(loop);
      const full = await run(["restore", loop, "--from", incr, "--yes", "--force", "--no-delta"]);
      expect(full.code, full.stderr).toBe(0);
      expect(full.stderr).not.toContain("already held");
      expect(bytesWritten(loop) - before2).toBeGreaterThanOrEqual(60 * MiB);
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(sameFile(backing, newImg)).toBe("same");
  });
});

describe("delta restore onto files", () => {
  test("an existing file holding other data everywhere (zero chunks included) becomes the backup; a new or blank file skips the comparison", async () => {
    const out = path.join(dir, "store-e");
    const base = await storeBase(out);
    // junk where the backup has zeros and data alike, and a tail beyond its end
    const t = path.join(dir, "junk-target.img");
    sh(`head -c 70M /dev/urandom > ${t}`);
    const r = await run(["restore", t, "--from", base, "--yes"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("the target already held 0% of this backup");
    expect(sameFile(t, oldImg)).toBe("same");
    // again onto the same file: nothing to write
    const again = await run(["restore", t, "--from", base, "--yes"]);
    expect(again.stderr).toContain("the target already held 100% of this backup: wrote 0 B");
    // a blank one (its first MiB zeros, like a new disk) is written whole, without reading it first
    const blankT = path.join(dir, "blank-target.img");
    sh(`head -c 64M /dev/zero > ${blankT}`);
    const bl = await run(["restore", blankT, "--from", base, "--yes"]);
    expect(bl.code, bl.stderr).toBe(0);
    expect(bl.stderr).not.toContain("already held");
    expect(sameFile(blankT, oldImg)).toBe("same");
    const fresh = path.join(dir, "fresh-target.img");
    const f = await run(["restore", fresh, "--from", base, "--yes"]);
    expect(f.code, f.stderr).toBe(0);
    expect(f.stderr).not.toContain("already held");
    expect(sameFile(fresh, oldImg)).toBe("same");
  });

  test("--from: the target is compared with the backup's digests.txt first and only the chunks that differ are read from it; a digests.txt that does not match the root: each chunk is compared as it is read", async () => {
    const out = path.join(dir, "store-j");
    await storeBase(out);
    const p = await pushCounted(out);
    expect(p.push.code, p.push.stderr).toBe(0);
    const incr = backups(out)[1]!;
    const t = path.join(dir, "from-target.img");
    fs.copyFileSync(oldImg, t);
    const r = await run(["restore", t, "--from", incr, "--yes", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`of this backup: reading ${changed.length} of ${fs.statSync(newImg).size / MiB} chunks`);
    const j = JSON.parse(r.stdout);
    expect(j.verified).toBe(true);
    expect(j.delta.writtenBytes).toBe(changed.length * MiB);
    // nothing crossed a stream: no "received" figures
    expect(j.delta.askedChunks).toBeUndefined();
    expect(sameFile(t, newImg)).toBe("same");
    // a copy of the backup whose digests.txt has one digit changed: not trusted, the chunks are compared one by one
    const copy = path.join(dir, "incr-copy");
    sh(`cp -r ${incr} ${copy}`);
    const list = path.join(copy, "digests.txt");
    const text = fs.readFileSync(list, "latin1");
    fs.writeFileSync(list, (text[0] === "0" ? "1" : "0") + text.slice(1), "latin1");
    fs.copyFileSync(oldImg, t);
    const d = await run(["restore", t, "--from", copy, "--yes", "--json"]);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stderr).not.toContain("of this backup: reading");
    expect(JSON.parse(d.stdout).delta.writtenBytes).toBe(changed.length * MiB);
    expect(sameFile(t, newImg)).toBe("same");
  });

  test("over a stream: the restorer writes only what differs", async () => {
    const out = path.join(dir, "store-f");
    await storeBase(out);
    const p = await pushCounted(out);
    expect(p.push.code, p.push.stderr).toBe(0);
    const incr = backups(out)[1]!;
    const t = path.join(dir, "stream-target.img");
    fs.copyFileSync(oldImg, t);
    const sock = path.join(dir, "restore.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const r = await run(["restore", t, "--stream", `unix:${sock}`, "--backup", path.relative(out, incr), "--yes"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/the target already held (8|9)\d% of this backup/);
      await finish(recv);
    } finally {
      recv.kill();
    }
    expect(sameFile(t, newImg)).toBe("same");
  });
});
