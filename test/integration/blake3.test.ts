// BLAKE3 chunk digests in the integrity root (docs/FORMAT.md §4a, manifest
// format 4; docs/PROTOCOL.md §5.4a, capability `blake3`), with the compiled
// binary: the root is what stock tools (split + b3sum + sha256sum) make of the
// disk; a sender or restorer that predates BLAKE3 still works (SHA-256
// digests, or a clear refusal); a chain of SHA-256 backups stays SHA-256
// until push --full.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, fileRoot, finish, makeExt4Image, run, sh, sha256File, start, stockRoot, storeBackup, tempDir, waitFor, zstdRoot } from "../helpers/cli.ts";
import { startProxy } from "../helpers/proxy.ts";
import { MsgType, decodeJson } from "../../src/protocol/messages.ts";
import { client, fileDisk, sendImage } from "../helpers/raw-client.ts";

let dir: string;
let img: string;
beforeAll(() => {
  dir = tempDir("tbb-b3-");
  img = makeExt4Image(dir, 12, "b3.img");
});
afterAll(() => cleanup(dir));

const manifestOf = (bdir: string) => JSON.parse(fs.readFileSync(path.join(bdir, "manifest.json"), "utf8"));
/** every complete backup directory under a store, oldest first */
const backupDirs = (out: string) =>
  fs
    .readdirSync(out, { recursive: true })
    .map(String)
    .filter((p) => p.endsWith("manifest.json") && !p.includes(".partial"))
    .map((p) => path.join(out, path.dirname(p)))
    .sort();
/** A store in `d` holding one backup of the image, made by the binary: its directory. */
async function oneBackup(d: string): Promise<string> {
  const out = path.join(d, "store");
  await storeBackup(img, out, path.join(d, "s.sock"));
  return backupDirs(out)[0]!;
}
/** What tbbackup before the `blake3` capability listed. */
const PRE_B3_CAPS = ["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root", "resend", "incremental", "delta-restore", "key-auth"];
const peer = { protocol: "tbbackup", proto: 1, tool: "tbbackup/0.1.0", host: { hostname: "oldhost", machineId: null, productUuid: null } };

/**
 * Turns a stored backup into what a tbbackup before BLAKE3 wrote of the same
 * disk: SHA-256 chunk digests (from the raw disk, by sha256sum), their root,
 * and the manifest format of such a backup.
 */
function asSha256Backup(bdir: string, raw: string): void {
  const m = manifestOf(bdir);
  const lines = sh(`split -b ${m.chunkSize} --filter='sha256sum | cut -c1-64' ${JSON.stringify(raw)}`);
  fs.writeFileSync(path.join(bdir, "digests.txt"), lines);
  m.root = sh(`sha256sum ${JSON.stringify(path.join(bdir, "digests.txt"))}`).split(" ")[0];
  m.format = m.align ? 3 : 2;
  m.digests.algorithm = "sha256-chunk-list";
  fs.writeFileSync(path.join(bdir, "manifest.json"), JSON.stringify(m, null, 2) + "\n");
}

describe("a root of BLAKE3 chunk digests", () => {
  test("push stores it (manifest format 4), stock tools recompute it from the disk and from image.zst, and verify and restore --from check it", async () => {
    const d = tempDir();
    try {
      const bdir = await oneBackup(d);
      const m = manifestOf(bdir);
      expect(m.format).toBe(4);
      expect(m.digests.algorithm).toBe("blake3-chunk-list");
      expect(m.root).toBe(stockRoot(img));
      expect(m.root).toBe(zstdRoot(path.join(bdir, "image.zst")));
      expect(sh(`sha256sum ${JSON.stringify(path.join(bdir, "digests.txt"))}`).split(" ")[0]).toBe(m.root);
      // not the SHA-256 root: the two kinds are told apart
      expect(m.root).not.toBe(stockRoot(img, "1M", "sha256"));
      const v = await run(["verify", bdir]);
      expect(v.code).toBe(0);
      expect(v.stdout).toContain(m.root);
      const t = path.join(d, "t.img");
      expect((await run(["restore", t, "--from", bdir, "--yes"])).code).toBe(0);
      expect(sha256File(t)).toBe(sha256File(img));
      // one damaged line of digests.txt: verify says so (exit 10)
      const list = path.join(bdir, "digests.txt");
      const text = fs.readFileSync(list, "latin1");
      fs.writeFileSync(list, (text[0] === "0" ? "1" : "0") + text.slice(1));
      const bad = await run(["verify", bdir]);
      expect(bad.code).toBe(10);
      expect(bad.stderr).toContain("digests.txt");
    } finally {
      cleanup(d);
    }
  });

  test("a manifest that names an unknown chunk digest is refused as damaged by verify and restore --from (exit 10)", async () => {
    const d = tempDir();
    try {
      const bdir = await oneBackup(d);
      const m = manifestOf(bdir);
      m.digests.algorithm = "md5-chunk-list";
      fs.writeFileSync(path.join(bdir, "manifest.json"), JSON.stringify(m, null, 2) + "\n");
      const v = await run(["verify", bdir]);
      expect(v.code).toBe(10);
      expect(v.stderr).toContain("unknown kind");
      const r = await run(["restore", path.join(d, "t.img"), "--from", bdir, "--yes"]);
      expect(r.code).toBe(10);
      expect(fs.existsSync(path.join(d, "t.img"))).toBe(false);
    } finally {
      cleanup(d);
    }
  });
});

describe("peers and backups from before BLAKE3", () => {
  test("a sender that lists root but not blake3 is asked for no digest, and its backup has SHA-256 chunk digests (format 2 or 3) that verify", async () => {
    const d = tempDir();
    const sock = path.join(d, "r.sock");
    const out = path.join(d, "store");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const c = await client(sock);
      const data = fs.readFileSync(img);
      const chunkSize = 1 << 20;
      await c.json(MsgType.HELLO, { ...peer, role: "push", session: crypto.randomUUID(), caps: PRE_B3_CAPS.filter((x) => x !== "incremental"), disk: fileDisk(img, "pre-b3.img", data.length), chunkSize, level: 1, content: "image" });
      const ack = await c.expect(MsgType.HELLO_ACK);
      expect(ack.digest).toBeUndefined();
      const i = await sendImage(c, data, chunkSize);
      const root = stockRoot(img, "1M", "sha256");
      await c.json(MsgType.END, { chunks: i, bytes: data.length, root });
      const done = await c.expect(MsgType.DONE);
      expect(done.root).toBe(root);
      c.close();
      expect((await finish(recv)).code).toBe(0);
      const bdir = path.join(out, String(done.id));
      const m = manifestOf(bdir);
      expect(m.format === 2 || m.format === 3).toBe(true);
      expect(m.digests.algorithm).toBe("sha256-chunk-list");
      expect(m.root).toBe(root);
      expect((await run(["verify", bdir])).code).toBe(0);
    } finally {
      recv.kill();
      cleanup(d);
    }
  });

  test("a restorer without blake3 is refused a BLAKE3 backup in one clear line, and is offered one that has a SHA-256 by that", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    try {
      await storeBackup(img, out, path.join(d, "s1.sock"));
      const [plain] = backupDirs(out);
      const target = fileDisk("/tmp/x", "x", 0);
      const offerOf = async (bdir: string) => {
        const sock = path.join(d, "r.sock");
        const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
        try {
          await waitFor(() => fs.existsSync(sock), "receiver socket");
          const c = await client(sock);
          await c.json(MsgType.HELLO, { ...peer, role: "restore", session: crypto.randomUUID(), caps: PRE_B3_CAPS, backup: path.relative(out, bdir), target, content: "image" });
          await c.expect(MsgType.HELLO_ACK);
          await waitFor(() => c.frames.some((f) => f.type === MsgType.ERROR || f.type === MsgType.RESTORE_INFO), "the receiver's offer or refusal");
          const f = c.frames.find((x) => x.type === MsgType.ERROR || x.type === MsgType.RESTORE_INFO)!;
          c.close();
          return { type: f.type, body: decodeJson<Record<string, unknown>>(f.payload)! };
        } finally {
          await finish(recv);
        }
      };
      const refused = await offerOf(plain!);
      expect(refused.type).toBe(MsgType.ERROR);
      expect(refused.body.code).toBe("PROTOCOL");
      expect(String(refused.body.message)).toMatch(/BLAKE3.*newer tbbackup/);
      // pushed with --sha256: the same kind of backup is offered by its whole-image SHA-256
      fs.rmSync(path.join(d, "s1.sock"), { force: true });
      await storeBackup(img, out, path.join(d, "s2.sock"), ["--sha256"]);
      const withSha = backupDirs(out).find((b) => manifestOf(b).sha256);
      expect(manifestOf(withSha!).digests.algorithm).toBe("blake3-chunk-list");
      const offered = await offerOf(withSha!);
      expect(offered.type).toBe(MsgType.RESTORE_INFO);
      expect(offered.body.sha256).toBe(sha256File(img));
      expect(offered.body.root).toBeUndefined();
      expect(offered.body.digest).toBeUndefined();
    } finally {
      cleanup(d);
    }
  });

  test("an incremental push against a SHA-256 base keeps SHA-256 digests; push --full starts a BLAKE3 chain, which the next push continues", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    let n = 0;
    const push = async (args: string[] = []) => {
      const sock = path.join(d, `s${n++}.sock`);
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const p = await run(["push", img, "--stream", `unix:${sock}`, "--json", ...args]);
      expect((await finish(recv)).code).toBe(0);
      expect(p.code).toBe(0);
      const r = JSON.parse(p.stdout);
      return { ...r, manifest: manifestOf(path.join(out, r.id)) };
    };
    try {
      const first = await push();
      // what a tbbackup before BLAKE3 stored of this disk
      asSha256Backup(path.join(out, first.id), img);
      expect((await run(["verify", path.join(out, first.id)])).code).toBe(0);

      const second = await push();
      expect(second.base).toBe(first.id);
      expect(second.changedChunks).toBe(0);
      expect(second.manifest.digests.algorithm).toBe("sha256-chunk-list");
      expect(second.manifest.format === 2 || second.manifest.format === 3).toBe(true);
      expect(second.root).toBe(stockRoot(img, "1M", "sha256"));
      expect(second.manifest.root).toBe(second.root);

      const full = await push(["--full"]);
      expect(full.base).toBeUndefined();
      expect(full.manifest.digests.algorithm).toBe("blake3-chunk-list");
      expect(full.root).toBe(stockRoot(img));

      const third = await push();
      expect(third.base).toBe(full.id);
      expect(third.changedChunks).toBe(0);
      expect(third.manifest.digests.algorithm).toBe("blake3-chunk-list");
      expect(third.manifest.root).toBe(stockRoot(img));
      for (const b of [second, full, third]) expect((await run(["verify", path.join(out, b.id)])).code).toBe(0);

      // the SHA-256 backup restores (a delta restore onto a copy that holds the disk already)
      const t = path.join(d, "t.img");
      fs.copyFileSync(img, t);
      const r = await run(["restore", t, "--from", path.join(out, second.id), "--yes"]);
      expect(r.code).toBe(0);
      expect(sha256File(t)).toBe(sha256File(img));
    } finally {
      cleanup(d);
    }
  });

  describe("an interrupted push that an older tbbackup received (a partial of SHA-256 digests)", () => {
    /** A push cut after about 3 MB on the wire (4 KiB chunks: durable every 1 MiB of disk), its partial turned into one of SHA-256 digests. */
    async function sha256Partial(name: string) {
      const d = tempDir();
      const out = path.join(d, "store");
      const sock = path.join(d, "r.sock");
      const front = path.join(d, "front.sock");
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`]);
      await waitFor(() => fs.existsSync(sock), "socket");
      const proxy = await startProxy(front, sock, { cutAfterBytes: 3_000_000 });
      const big = makeExt4Image(d, 24, `${name}.img`);
      const first = await run(["push", big, "--stream", `unix:${front}`, "--chunk-size", "4K"]);
      proxy.close();
      expect(first.code).toBe(7);
      const partialDir = () => {
        const p = fs.readdirSync(out, { recursive: true }).map(String).find((x) => x.endsWith(".partial"));
        return p ? path.join(out, p) : null;
      };
      await waitFor(() => {
        const p = partialDir();
        try {
          return p !== null && typeof manifestOf(p).reason === "string";
        } catch {
          return false;
        }
      }, "the receiver to record the partial");
      const pdir = partialDir()!;
      const m = manifestOf(pdir);
      expect(m.digests.algorithm).toBe("blake3-chunk-list");
      expect(m.durable.chunks).toBeGreaterThan(0);
      // (its digests.txt lines are computed again from the stored frames when it is resumed)
      m.digests.algorithm = "sha256-chunk-list";
      m.format = m.align ? 3 : 2;
      fs.writeFileSync(path.join(pdir, "manifest.json"), JSON.stringify(m, null, 2) + "\n");
      return { d, out, sock, recv, img: big, durable: m.durable.chunks as number };
    }

    test("resumed, it keeps SHA-256 digests, and the root is the SHA-256 one of the whole disk", async () => {
      const p = await sha256Partial("keep");
      try {
        const r = await run(["push", p.img, "--stream", `unix:${p.sock}`, "--chunk-size", "4K", "--json"]);
        expect(r.code).toBe(0);
        const j = JSON.parse(r.stdout);
        expect(j.resumedFrom).toBe(p.durable);
        expect(j.root).toBe(fileRoot(p.img, 4096, "sha256"));
        const m = manifestOf(path.join(p.out, j.id));
        expect(m.digests.algorithm).toBe("sha256-chunk-list");
        expect(m.format === 2 || m.format === 3).toBe(true);
        expect((await run(["verify", path.join(p.out, j.id)])).code).toBe(0);
      } finally {
        p.recv.kill();
        cleanup(p.d);
      }
    });

    test("declined (--no-resume), the new backup gets BLAKE3 digests all the same", async () => {
      const p = await sha256Partial("decline");
      try {
        const r = await run(["push", p.img, "--stream", `unix:${p.sock}`, "--chunk-size", "4K", "--json", "--no-resume"]);
        expect(r.code).toBe(0);
        const j = JSON.parse(r.stdout);
        expect(j.resumedFrom).toBe(0);
        expect(j.root).toBe(fileRoot(p.img, 4096, "blake3"));
        const m = manifestOf(path.join(p.out, j.id));
        expect(m.digests.algorithm).toBe("blake3-chunk-list");
        expect(m.format).toBe(4);
        expect((await run(["verify", path.join(p.out, j.id)])).code).toBe(0);
      } finally {
        p.recv.kill();
        cleanup(p.d);
      }
    });
  });
});
