// An interrupted push continues where the receiver's data became durable,
// and only when the sender's disk still matches that prefix.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, makeExt4Image, run, sha256File, start, tempDir, waitFor, zstdSha, listBackups, fileRoot } from "../helpers/cli.ts";
import { startProxy } from "../helpers/proxy.ts";
import { ImageReader } from "../../src/store/image-reader.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => cleanup(dir));

// 4 KiB chunks: durable progress (every 256 chunks) comes every 1 MiB of disk, well before the cut
const CHUNK = ["--chunk-size", "4K"];

async function interruptedPush(name: string, img: string, receiveArgs: string[] = []) {
  const out = path.join(dir, `${name}-store`);
  const sock = path.join(dir, `${name}.sock`);
  const front = path.join(dir, `${name}-front.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, ...receiveArgs]);
  await waitFor(() => fs.existsSync(sock), "socket");
  const proxy = await startProxy(front, sock, { cutAfterBytes: 3_000_000 });
  const first = await run(["push", img, "--stream", `unix:${front}`, ...CHUNK]);
  proxy.close();
  expect(first.code).toBe(7);
  // the receiver notices the cut on its own time: wait until it has recorded the partial (a reason)
  const manifest = () => {
    const partial = fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith(".partial"));
    try {
      return partial ? JSON.parse(fs.readFileSync(path.join(out, partial, "manifest.json"), "utf8")) : null;
    } catch {
      return null;
    }
  };
  await waitFor(() => typeof manifest()?.reason === "string", "the receiver to record the partial");
  const m = manifest();
  expect(m.durable.chunks).toBeGreaterThan(0);
  return { out, sock, recv, durable: m.durable.chunks as number };
}

describe("resume", () => {
  test("a cut push continues after the durable prefix; the result is byte-exact", async () => {
    const img = makeExt4Image(dir, 24, "resume.img");
    const { out, sock, recv, durable } = await interruptedPush("a", img);
    try {
      const second = await run(["push", img, "--stream", `unix:${sock}`, ...CHUNK, "--json", "--sha256"]);
      expect(second.code).toBe(0);
      const r = JSON.parse(second.stdout);
      expect(r.resumedFrom).toBe(durable);
      expect(r.sha256).toBe(sha256File(img));
      expect(r.root).toBe(fileRoot(img, 4096));
      const rows = await listBackups(out);
      expect(rows.map((x) => x.status)).toEqual(["complete"]);
      const image = path.join(out, rows[0]!.id, "image.zst");
      expect(zstdSha(image)).toBe(sha256File(img));
      expect((await run(["verify", path.join(out, rows[0]!.id)])).code).toBe(0);
      const m = JSON.parse(fs.readFileSync(path.join(out, rows[0]!.id, "manifest.json"), "utf8"));
      expect(m.resumed[0].fromChunk).toBe(durable);
      // frame-xxh3.txt: the re-checked prefix's frames and the rest, line for line (docs/FORMAT.md §4b)
      const reader = ImageReader.open(image);
      const want = reader.entries.map((_, i) => Bun.hash.xxHash3(reader.readFrame(i)).toString(16).padStart(16, "0") + "\n").join("");
      reader.close();
      expect(fs.readFileSync(path.join(out, rows[0]!.id, "frame-xxh3.txt"), "utf8")).toBe(want);
    } finally {
      recv.kill();
      await finish(recv);
    }
  });

  test("a disk that changed in the durable prefix is not resumed: a new, correct backup", async () => {
    const img = makeExt4Image(dir, 24, "changed.img");
    const { out, sock, recv } = await interruptedPush("b", img);
    try {
      const fd = fs.openSync(img, "r+");
      fs.writeSync(fd, Buffer.from("changed after the first push"), 0, 28, 4096);
      fs.closeSync(fd);
      const second = await run(["push", img, "--stream", `unix:${sock}`, ...CHUNK, "--json"]);
      expect(second.code).toBe(0);
      expect(JSON.parse(second.stdout).resumedFrom).toBe(0);
      const rows = await listBackups(out);
      const complete = rows.filter((x) => x.status === "complete");
      expect(complete.length).toBe(1);
      expect(zstdSha(path.join(out, complete[0]!.id, "image.zst"))).toBe(sha256File(img));
    } finally {
      recv.kill();
      await finish(recv);
    }
  });

  test("a prefix that takes longer to re-read than the receiver's --idle is still resumed: the sender keeps the offer alive", async () => {
    const img = makeExt4Image(dir, 24, "slow.img");
    const { out, sock, recv, durable } = await interruptedPush("d", img, ["--idle", "5"]);
    try {
      // The sender runs in this process so that its disk can be slow: where the
      // durable prefix lies, reads take long enough that re-reading it lasts
      // about 8 s, past the receiver's 5 s wait for an answer to its offer.
      const { push, imageSource } = await import("../../src/core/push.ts");
      const { transportFor } = await import("../../src/transport/index.ts");
      const { silentReporter } = await import("../../src/core/report.ts");
      const disk = imageSource(img);
      const prefixEnd = durable * 4096;
      const perRead = Math.ceil(8000 / durable);
      const slow = { ...disk, read: async (buf: Uint8Array, offset: number) => ((offset < prefixEnd ? await Bun.sleep(perRead) : undefined), disk.read(buf, offset)) };
      const r = await push({ source: img, input: slow, transport: transportFor(`unix:${sock}`, false), label: null, level: 1, chunkSize: 4096, waitMs: 10_000, idleMs: 60_000, reporter: silentReporter, sha256: true });
      expect(r.resumedFrom).toBe(durable);
      expect(r.sha256).toBe(sha256File(img));
      const rows = await listBackups(out);
      expect(rows.map((x) => x.status)).toEqual(["complete"]);
      expect(zstdSha(path.join(out, rows[0]!.id, "image.zst"))).toBe(sha256File(img));
    } finally {
      recv.kill();
      await finish(recv);
    }
  });

  test("--no-resume starts a new backup", async () => {
    const img = makeExt4Image(dir, 24, "noresume.img");
    const { out, sock, recv } = await interruptedPush("c", img);
    try {
      const second = await run(["push", img, "--stream", `unix:${sock}`, ...CHUNK, "--json", "--no-resume"]);
      expect(second.code).toBe(0);
      expect(JSON.parse(second.stdout).resumedFrom).toBe(0);
      expect((await listBackups(out)).filter((x) => x.status === "complete").length).toBe(1);
    } finally {
      recv.kill();
      await finish(recv);
    }
  });
});
