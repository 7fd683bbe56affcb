// Delta restore over a stream (README "Incremental backups and delta restore",
// docs/PROTOCOL.md §8.6a): a restorer whose target already holds an older
// version of the disk asks the receiver only for the chunks that differ. The
// bytes that cross the socket are counted by a relay; the target must equal
// the backup byte for byte. --no-delta, and a peer without the capability
// (the real binaries with it stripped from their HELLO or HELLO_ACK, and a
// hand-made older restorer), get today's full restore.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { cleanup, finish, run, sh, start, storeBackup, tempDir, waitFor } from "../helpers/cli.ts";
import { client } from "../helpers/raw-client.ts";
import { startProxy } from "../helpers/proxy.ts";
import { REOFFER_MS } from "../../src/core/serve-restore-session.ts";
import { encodeFrame } from "../../src/protocol/frame.ts";
import { MsgType, decodeJson, encodeJson } from "../../src/protocol/messages.ts";
import { decodeBaseDigests, encodeWant } from "../../src/protocol/chunk-record.ts";

const MiB = 1024 * 1024;
const CHUNKS = 64;
const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const canLoop = process.getuid?.() === 0 && has("losetup") && fs.existsSync("/dev/loop-control");

let dir: string;
let oldImg: string;
let newImg: string;
let store: string;
let backupId: string;
/** chunks of the new image that the old one does not hold */
const changed = [3, 11, 20, 40, 50];

beforeAll(async () => {
  dir = tempDir("tbb-dstream-");
  // the old version: random data (it does not compress, so bytes sent = bytes asked) with zero chunks 10..13
  const a = Buffer.alloc(CHUNKS * MiB);
  for (let off = 0; off < a.length; off += 65536) a.set(crypto.getRandomValues(new Uint8Array(65536)), off);
  a.fill(0, 10 * MiB, 14 * MiB);
  // the new one: chunks 3, 20, 40 rewritten, 11 now data, 50 now zeros (10, 12, 13 stay zero: they need not travel)
  const b = Buffer.from(a);
  for (const i of [3, 11, 20, 40]) b.set(crypto.getRandomValues(new Uint8Array(65536)), i * MiB + 4096);
  b.fill(0, 50 * MiB, 51 * MiB);
  oldImg = path.join(dir, "old.img");
  newImg = path.join(dir, "new.img");
  fs.writeFileSync(oldImg, a);
  fs.writeFileSync(newImg, b);
  store = path.join(dir, "store");
  await storeBackup(newImg, store, path.join(dir, "p.sock"));
  backupId = JSON.parse((await run(["list", "--out", store, "--json"])).stdout)[0].id;
});
afterAll(() => cleanup(dir));

function same(a: string, b: string): boolean {
  return fs.readFileSync(a).equals(fs.readFileSync(b));
}

type Rewrite = (type: number, payload: Uint8Array) => Uint8Array | null;

/**
 * A relay between the restorer and the receiver that counts the bytes coming
 * from the receiver, and can rewrite JSON frames either way (`toReceiver`,
 * `toRestorer`: a new payload for the frame, or null to pass it on as it is).
 */
function relay(listen: string, target: string, rewrite: { toReceiver?: Rewrite; toRestorer?: Rewrite } = {}): Promise<{ bytes: () => number; close: () => void }> {
  let bytes = 0;
  const framed = (rw: Rewrite | undefined, out: (b: Uint8Array) => void) => {
    if (!rw) return (d: Buffer) => out(d);
    let buf = Buffer.alloc(0);
    return (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 16) {
        const total = 16 + buf.readUInt32LE(8) + 4;
        if (buf.length < total) break;
        const frame = buf.subarray(0, total);
        buf = buf.subarray(total);
        const p = rw(frame[4]!, frame.subarray(16, total - 4));
        out(p ? encodeFrame(frame[4]!, p) : Buffer.from(frame));
      }
    };
  };
  const server = net.createServer((c) => {
    const u = net.connect(target);
    c.on("data", framed(rewrite.toReceiver, (b) => u.write(b)));
    u.on(
      "data",
      framed(rewrite.toRestorer, (b) => {
        bytes += b.length;
        c.write(b);
      }),
    );
    c.on("error", () => u.destroy());
    u.on("error", () => c.destroy());
    c.on("close", () => u.destroy());
    u.on("end", () => c.end());
  });
  return new Promise((resolve) => server.listen(listen, () => resolve({ bytes: () => bytes, close: () => server.close() })));
}

/** A HELLO or HELLO_ACK without the `delta-restore` capability: what an older peer sends. */
function stripCap(type: number, payload: Uint8Array): Uint8Array | null {
  if (type !== MsgType.HELLO && type !== MsgType.HELLO_ACK) return null;
  const v = decodeJson<{ caps: string[] }>(payload)!;
  return encodeJson({ ...v, caps: v.caps.filter((c) => c !== "delta-restore") });
}

/** Restores the backup onto `targetFile` over unix: through a counting relay; returns the restore's result and the bytes the receiver sent. */
async function restoreCounted(target: string, args: string[] = [], rewrite: { toReceiver?: Rewrite; toRestorer?: Rewrite } = {}) {
  const d = tempDir("tbb-dstream-s-");
  const sock = path.join(d, "recv.sock");
  const front = path.join(d, "relay.sock");
  const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
  try {
    await waitFor(() => fs.existsSync(sock), "receiver socket");
    const r = await relay(front, sock, rewrite);
    try {
      const res = await run(["restore", target, "--stream", `unix:${front}`, "--backup", backupId, "--yes", "--force", "--json", ...args]);
      const rv = await finish(recv);
      return { res, recv: rv, bytes: r.bytes() };
    } finally {
      r.close();
    }
  } finally {
    recv.kill();
    cleanup(d);
  }
}

describe("delta restore over a stream", () => {
  let fullBytes = 0;

  test("--no-delta: every chunk crosses the stream", async () => {
    const t = path.join(dir, "t-full.img");
    fs.copyFileSync(oldImg, t);
    const { res, bytes } = await restoreCounted(t, ["--no-delta"]);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout).delta).toBeUndefined();
    expect(bytes).toBeGreaterThan(59 * MiB);
    fullBytes = bytes;
    expect(same(t, newImg)).toBe(true);
  });

  test("onto a file holding the old version: only the chunks that differ cross the stream, and the target becomes the backup", async () => {
    const t = path.join(dir, "t-delta.img");
    fs.copyFileSync(oldImg, t);
    const { res, recv, bytes } = await restoreCounted(t);
    expect(res.code, res.stderr).toBe(0);
    const j = JSON.parse(res.stdout);
    expect(j.verified).toBe(true);
    expect(j.delta.askedChunks).toBe(changed.length);
    expect(j.delta.askedBytes).toBe(changed.length * MiB);
    expect(j.delta.keptBytes).toBe((CHUNKS - changed.length) * MiB);
    expect(res.stderr).toContain(`the target already holds 92% of this backup: asking the receiver for ${changed.length} of ${CHUNKS} chunks`);
    expect(recv.stderr).toContain(`sent ${changed.length}`);
    // 4 changed chunks of random data (the fifth is a ZERO record) and the digests: a small fraction of a full restore
    expect(bytes).toBeLessThan(5 * MiB);
    expect(bytes).toBeLessThan(fullBytes / 10);
    expect(same(t, newImg)).toBe(true);
  });

  test("a target that is already the backup: nothing but the digests crosses", async () => {
    const t = path.join(dir, "t-same.img");
    fs.copyFileSync(newImg, t);
    const { res, bytes } = await restoreCounted(t);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout).delta.askedChunks).toBe(0);
    expect(bytes).toBeLessThan(64 * 1024);
    expect(same(t, newImg)).toBe(true);
  });

  test("an older receiver (no delta-restore in its HELLO_ACK), or an older restorer (none in its HELLO): today's full restore", async () => {
    for (const rewrite of [{ toRestorer: stripCap }, { toReceiver: stripCap }]) {
      const t = path.join(dir, "t-old.img");
      fs.copyFileSync(oldImg, t);
      const { res, bytes } = await restoreCounted(t, [], rewrite);
      expect(res.code, res.stderr).toBe(0);
      const j = JSON.parse(res.stdout);
      // still a delta restore on the restorer's side (only differing chunks written), but everything travels
      expect(j.delta.askedChunks).toBeUndefined();
      expect(j.delta.keptBytes).toBe((CHUNKS - changed.length) * MiB);
      expect(bytes).toBeGreaterThan(59 * MiB);
      expect(same(t, newImg)).toBe(true);
    }
  });

  test("digests that do not arrive whole (one out of order): every chunk is sent, and the target still becomes the backup", async () => {
    const t = path.join(dir, "t-bad-digests.img");
    fs.copyFileSync(oldImg, t);
    const outOfOrder: Rewrite = (type, payload) => {
      if (type !== MsgType.BASE_DIGESTS) return null;
      const p = new Uint8Array(payload);
      p[0] = 1; // first = 1, not 0
      return p;
    };
    const { res, bytes } = await restoreCounted(t, [], { toRestorer: outOfOrder });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toContain("every chunk will be sent: the backup's digests did not arrive whole");
    expect(JSON.parse(res.stdout).delta.askedChunks).toBeUndefined();
    expect(bytes).toBeGreaterThan(59 * MiB);
    expect(same(t, newImg)).toBe(true);
  });

  test("a receiver whose digests lie (chunk 3 claimed to be what the target holds): the restore fails, it never reports success", async () => {
    const t = path.join(dir, "t-lie.img");
    fs.copyFileSync(oldImg, t);
    // (the backup's chunk digests are BLAKE3: docs/FORMAT.md §4a)
    const old3 = (require("@napi-rs/blake-hash") as { blake3(d: Uint8Array): Buffer }).blake3(fs.readFileSync(oldImg).subarray(3 * MiB, 4 * MiB));
    const lie: Rewrite = (type, payload) => {
      if (type !== MsgType.BASE_DIGESTS) return null;
      const p = new Uint8Array(payload);
      p.set(old3, 4 + 3 * 32);
      return p;
    };
    const { res } = await restoreCounted(t, [], { toRestorer: lie });
    expect(res.code).not.toBe(0);
    expect(res.stderr).toMatch(/integrity root .*restore again with --no-delta/);
    expect(same(t, newImg)).toBe(false);
  });

  test("the receiver's HELLO_ACK lost on the way: the repeated HELLO gets the offer and the digests again, and only the chunks that differ are asked for", async () => {
    const t = path.join(dir, "t-ack-lost.img");
    fs.copyFileSync(oldImg, t);
    const d = tempDir("tbb-dstream-a-");
    const sock = path.join(d, "recv.sock");
    const front = path.join(d, "proxy.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--once", "--allow-restore", "--idle", "20"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const proxy = await startProxy(front, sock, { damageBack: { type: MsgType.HELLO_ACK, drop: true } });
      try {
        const res = await run(["restore", t, "--stream", `unix:${front}`, "--backup", backupId, "--yes", "--force", "--json", "--wait", "10"]);
        expect(res.code, res.stderr).toBe(0);
        expect(res.stderr).not.toContain("every chunk will be sent");
        expect(JSON.parse(res.stdout).delta.askedChunks).toBe(changed.length);
        const rv = await finish(recv);
        expect(rv.stderr).toContain(`sent ${changed.length}`);
        expect(rv.code).toBe(0);
      } finally {
        proxy.close();
      }
    } finally {
      recv.kill();
      cleanup(d);
    }
    expect(same(t, newImg)).toBe(true);
  });

  test.skipIf(!canLoop)("onto a loop device holding the old version (needs root and loop devices)", async () => {
    const backing = path.join(dir, "loop-backing.img");
    fs.copyFileSync(oldImg, backing);
    const loop = sh(`losetup -f --show ${backing}`).trim();
    try {
      const { res, bytes } = await restoreCounted(loop);
      expect(res.code, res.stderr).toBe(0);
      const j = JSON.parse(res.stdout);
      expect(j.verified).toBe(true);
      expect(j.delta.askedChunks).toBe(changed.length);
      expect(bytes).toBeLessThan(5 * MiB);
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(same(backing, newImg)).toBe(true);
  });
});

describe("the receiver's side, by hand", () => {
  const hello = (caps: string[], delta: boolean) => ({
    protocol: "tbbackup",
    proto: 1,
    tool: "tbbackup/0.0.9",
    role: "restore",
    session: crypto.randomUUID(),
    host: { hostname: "oldhost", machineId: null, productUuid: null },
    caps,
    backup: backupId,
    target: { path: "/tmp/x", kind: "file", name: "x", size: 0, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null },
    content: "image",
    ...(delta ? { delta: true } : {}),
  });

  async function session(fn: (c: Awaited<ReturnType<typeof client>>) => Promise<void>, after?: (r: { code: number; stderr: string }) => void) {
    const d = tempDir("tbb-dstream-r-");
    const sock = path.join(d, "recv.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--once", "--allow-restore", "--idle", "10"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const c = await client(sock);
      try {
        await fn(c);
      } finally {
        c.close();
      }
      const r = await finish(recv);
      after?.(r);
    } finally {
      recv.kill();
      cleanup(d);
    }
  }

  test("an older restorer (no delta-restore in its HELLO, even asking delta): no digests, every chunk", async () => {
    await session(async (c) => {
      const h = hello(["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "blake3"], true);
      await c.json(MsgType.HELLO, h);
      await c.expect(MsgType.HELLO_ACK);
      const info = await c.expect(MsgType.RESTORE_INFO);
      expect(info.digests).toBeUndefined();
      await c.json(MsgType.RESTORE, { session: h.session, go: true });
      await c.expect(MsgType.RESTORE_END, 30_000);
      expect(c.frames.filter((f) => f.type === MsgType.DATA || f.type === MsgType.ZERO).length).toBe(CHUNKS);
      expect(c.frames.some((f) => f.type === MsgType.BASE_DIGESTS)).toBe(false);
      await c.json(MsgType.RESTORE_DONE, { session: h.session, ok: true });
    });
  });

  test("a new restorer: the digests follow RESTORE_INFO; a `want` is obeyed to the chunk, and a malformed one is refused", async () => {
    await session(async (c) => {
      const h = hello(["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "delta-restore", "blake3"], true);
      await c.json(MsgType.HELLO, h);
      await c.expect(MsgType.HELLO_ACK);
      const info = await c.expect(MsgType.RESTORE_INFO);
      expect(info.digests).toBe(true);
      await waitFor(() => c.frames.some((f) => f.type === MsgType.BASE_DIGESTS), "the digests");
      const d = decodeBaseDigests(c.frames.find((f) => f.type === MsgType.BASE_DIGESTS)!.payload)!;
      expect(d.first).toBe(0);
      expect(d.digests.length).toBe(CHUNKS * 32);
      const want = new Uint8Array(CHUNKS / 8);
      for (const i of [0, 9, 63]) want[i >> 3]! |= 1 << (i & 7);
      await c.json(MsgType.RESTORE, { session: h.session, go: true, want: encodeWant(want) });
      const end = await c.expect(MsgType.RESTORE_END, 30_000);
      expect(end.sent).toBe(3);
      const indices = c.frames.filter((f) => f.type === MsgType.DATA || f.type === MsgType.ZERO).map((f) => new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(0, true));
      expect(indices).toEqual([0, 9, 63]);
      await c.json(MsgType.RESTORE_DONE, { session: h.session, ok: true });
    });
    await session(async (c) => {
      const h = hello(["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "delta-restore", "blake3"], true);
      await c.json(MsgType.HELLO, h);
      await c.expect(MsgType.HELLO_ACK);
      await c.expect(MsgType.RESTORE_INFO);
      // a bitmap for far more chunks than the backup has
      await c.json(MsgType.RESTORE, { session: h.session, go: true, want: encodeWant(new Uint8Array(4096)) });
      await waitFor(() => c.frames.some((f) => f.type === MsgType.ERROR), "the receiver's refusal");
      const err = decodeJson<{ code: string; message: string }>(c.frames.find((f) => f.type === MsgType.ERROR)!.payload)!;
      expect(err.code).toBe("PROTOCOL");
      expect(err.message).toMatch(/wanted chunks is malformed/);
      expect(c.frames.some((f) => f.type === MsgType.DATA)).toBe(false);
    });
  });

  test("a chunk-list line garbled in a chunk the restorer does not want: the receiver says the backup is damaged (VERIFY), not an internal error", async () => {
    const listFile = path.join(store, backupId, "chunks.txt");
    const saved = fs.readFileSync(listFile, "latin1");
    const lines = saved.split("\n");
    lines[2] = "garbage";
    fs.writeFileSync(listFile, lines.join("\n"), "latin1");
    try {
      await session(async (c) => {
        const h = hello(["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "delta-restore", "blake3"], true);
        await c.json(MsgType.HELLO, h);
        await c.expect(MsgType.HELLO_ACK);
        await c.expect(MsgType.RESTORE_INFO);
        const want = new Uint8Array(CHUNKS / 8);
        want[0]! |= 1 << 5; // chunk 5 only: lines 0-4 are passed over
        await c.json(MsgType.RESTORE, { session: h.session, go: true, want: encodeWant(want) });
        await waitFor(() => c.frames.some((f) => f.type === MsgType.ERROR), "the receiver's error");
        const err = decodeJson<{ code: string; message: string }>(c.frames.find((f) => f.type === MsgType.ERROR)!.payload)!;
        expect(err.code).toBe("VERIFY");
        expect(err.message).toMatch(/chunk 2 is damaged/);
      });
    } finally {
      fs.writeFileSync(listFile, saved, "latin1");
    }
  });

  test("a HELLO repeated before the go-ahead (its first answer lost on a lossy link): HELLO_ACK, RESTORE_INFO and the digests again, then the restore goes on and is confirmed", async () => {
    let out = "";
    await session(async (c) => {
      const h = hello(["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "delta-restore", "blake3"], true);
      await c.json(MsgType.HELLO, h);
      const acks = [await c.expect(MsgType.HELLO_ACK)];
      const offers = [await c.expect(MsgType.RESTORE_INFO)];
      await waitFor(() => c.frames.some((f) => f.type === MsgType.BASE_DIGESTS), "the digests");
      // as the restorer repeats it (every second), not sooner: a HELLO read right after the offer was queued with the first
      await Bun.sleep(REOFFER_MS + 200);
      await c.json(MsgType.HELLO, h);
      acks.push(await c.expect(MsgType.HELLO_ACK));
      offers.push(await c.expect(MsgType.RESTORE_INFO));
      expect(acks.map((a) => a.session)).toEqual([h.session, h.session]);
      expect(offers[1]).toEqual(offers[0]!);
      expect(offers[0]!.digests).toBe(true);
      await waitFor(() => c.frames.filter((f) => f.type === MsgType.BASE_DIGESTS).length === 2, "the digests twice");
      for (const f of c.frames.filter((f) => f.type === MsgType.BASE_DIGESTS)) expect(decodeBaseDigests(f.payload)!.first).toBe(0);
      // another session's HELLO is not answered
      await c.json(MsgType.HELLO, { ...h, session: crypto.randomUUID() });
      const want = new Uint8Array(CHUNKS / 8);
      want[0] = 1;
      await c.json(MsgType.RESTORE, { session: h.session, go: true, want: encodeWant(want) });
      const end = await c.expect(MsgType.RESTORE_END, 30_000);
      expect(end.sent).toBe(1);
      expect(c.frames.filter((f) => f.type === MsgType.HELLO_ACK).length).toBe(0);
      await c.json(MsgType.RESTORE_DONE, { session: h.session, ok: true });
    }, (r) => (out = r.stderr));
    expect(out).toMatch(/restore of .* done/);
  });
});
