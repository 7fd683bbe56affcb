// The integrity root (docs/FORMAT.md §4a, PROTOCOL.md §5.4a) against peers and
// stores that predate it: a sender without the `root` capability, a restorer
// without it, and a backup stored in manifest format 1 (a SHA-256, no root).
// The root itself is always checked against stock tools (split + sha256sum or b3sum).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, makeExt4Image, run, sha256File, start, stockRoot, storeBackup, tempDir, waitFor, zstdRoot } from "../helpers/cli.ts";
import { MsgType, decodeJson } from "../../src/protocol/messages.ts";
import { client, fileDisk, sendImage } from "../helpers/raw-client.ts";

let dir: string;
let img: string;
beforeAll(() => {
  dir = tempDir("tbb-root-");
  img = makeExt4Image(dir, 12, "root.img");
});
afterAll(() => cleanup(dir));

const base = { protocol: "tbbackup", proto: 1, tool: "tbbackup/0.0.9", host: { hostname: "oldhost", machineId: null, productUuid: null } };
/** What tbbackup sent before the root capability. */
const OLD_CAPS = ["zstd", "zero-chunks", "seekable", "progress-ack", "status"];

describe("integrity root with older peers and stores", () => {
  test("a sender without the root capability: END and DONE carry the SHA-256, and the backup still gets its root", async () => {
    const d = tempDir();
    const sock = path.join(d, "r.sock");
    const out = path.join(d, "store");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const c = await client(sock);
      const data = fs.readFileSync(img);
      const chunkSize = 1 << 20;
      const session = crypto.randomUUID();
      await c.json(MsgType.HELLO, { ...base, role: "push", session, caps: OLD_CAPS, disk: fileDisk(img, "old.img", data.length), chunkSize, level: 1, content: "image" });
      await c.expect(MsgType.HELLO_ACK);
      const i = await sendImage(c, data, chunkSize);
      const sha256 = sha256File(img);
      await c.json(MsgType.END, { chunks: i, bytes: data.length, sha256 });
      const done = await c.expect(MsgType.DONE);
      expect(done.sha256).toBe(sha256);
      expect(done.root).toBeUndefined(); // an old sender would not know what to do with it
      c.close();
      expect((await finish(recv)).code).toBe(0);
      const m = JSON.parse(fs.readFileSync(path.join(out, String(done.id), "manifest.json"), "utf8"));
      expect(m.sha256).toBe(sha256);
      expect(m.root).toBe(stockRoot(img, "1M", "sha256")); // (it cannot compute BLAKE3 either)
      expect(m.digests.algorithm).toBe("sha256-chunk-list");
      expect((await run(["verify", path.join(out, String(done.id))])).code).toBe(0);
    } finally {
      recv.kill();
      cleanup(d);
    }
  });

  describe("a backup stored before the root (manifest format 1)", () => {
    let d: string;
    let out: string;
    let bdir: string;
    beforeAll(async () => {
      d = tempDir();
      out = path.join(d, "store");
      await storeBackup(img, out, path.join(d, "s.sock"), ["--sha256"]);
      const id = fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith("manifest.json"))!;
      bdir = path.join(out, path.dirname(id));
      // what tbbackup wrote then: format 1, a sha256, no root and no digests.txt
      const m = JSON.parse(fs.readFileSync(path.join(bdir, "manifest.json"), "utf8"));
      delete m.root;
      delete m.digests;
      m.format = 1;
      fs.writeFileSync(path.join(bdir, "manifest.json"), JSON.stringify(m, null, 2) + "\n");
      fs.rmSync(path.join(bdir, "digests.txt"));
    });
    afterAll(() => cleanup(d));

    test("verify checks its SHA-256", async () => {
      const v = await run(["verify", bdir]);
      expect(v.code).toBe(0);
      expect(v.stdout).toContain(sha256File(img));
    });

    test("restore --from and restore over a stream put it back byte for byte", async () => {
      const t1 = path.join(d, "t1.img");
      expect((await run(["restore", t1, "--from", bdir, "--yes"])).code).toBe(0);
      expect(sha256File(t1)).toBe(sha256File(img));
      const sock = path.join(d, "r.sock");
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const t2 = path.join(d, "t2.img");
      const id = path.relative(out, bdir);
      const r = await run(["restore", t2, "--stream", `unix:${sock}`, "--backup", id, "--yes"]);
      expect(r.code).toBe(0);
      expect(r.stderr).toContain(`sha256 ${sha256File(img)}`);
      await finish(recv);
      expect(sha256File(t2)).toBe(sha256File(img));
    });
  });

  test("a restorer without the root capability is refused a backup that has only a root, in one clear line", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    try {
      await storeBackup(img, out, path.join(d, "s.sock"));
      const sock = path.join(d, "r.sock");
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const c = await client(sock);
      const target = fileDisk("/tmp/x", "x", 0);
      const id = path.dirname(fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith("manifest.json"))!);
      await c.json(MsgType.HELLO, { ...base, role: "restore", session: crypto.randomUUID(), caps: OLD_CAPS, backup: id, target, content: "image" });
      await c.expect(MsgType.HELLO_ACK);
      await waitFor(() => c.frames.some((f) => f.type === MsgType.ERROR), "the receiver's refusal");
      const err = decodeJson<{ code: string; message: string }>(c.frames.find((f) => f.type === MsgType.ERROR)!.payload)!;
      expect(err.code).toBe("PROTOCOL");
      expect(err.message).toMatch(/integrity root/);
      c.close();
      await finish(recv);
    } finally {
      cleanup(d);
    }
  });

  test("a damaged digests.txt fails verify (exit 10) though every chunk checks out", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    try {
      await storeBackup(img, out, path.join(d, "s.sock"));
      const bdir = path.join(out, path.dirname(fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith("manifest.json"))!));
      expect(JSON.parse(fs.readFileSync(path.join(bdir, "manifest.json"), "utf8")).root).toBe(zstdRoot(path.join(bdir, "image.zst")));
      const list = path.join(bdir, "digests.txt");
      const text = fs.readFileSync(list, "latin1");
      fs.writeFileSync(list, (text[0] === "0" ? "1" : "0") + text.slice(1), "latin1");
      const v = await run(["verify", bdir]);
      expect(v.code).toBe(10);
      expect(v.stderr).toMatch(/digests\.txt does not match the data/);
    } finally {
      cleanup(d);
    }
  });

  test("a manifest whose root is not the data's fails verify (exit 10) in one line, though every chunk checks out", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    try {
      await storeBackup(img, out, path.join(d, "s.sock"));
      const bdir = path.join(out, path.dirname(fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith("manifest.json"))!));
      const mpath = path.join(bdir, "manifest.json");
      const m = JSON.parse(fs.readFileSync(mpath, "utf8"));
      const other = (m.root[0] === "0" ? "1" : "0") + m.root.slice(1);
      fs.writeFileSync(mpath, JSON.stringify({ ...m, root: other }, null, 2));
      const v = await run(["verify", bdir]);
      expect(v.code).toBe(10);
      expect(v.stderr.trim().split("\n")).toHaveLength(1);
      expect(v.stderr).toContain(`the integrity root is ${m.root}, the manifest says ${other}`);
    } finally {
      cleanup(d);
    }
  });
});
