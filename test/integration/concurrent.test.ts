// A receiver on a socket serves several sessions at once (two machines on two
// cables need not wait for each other), and never two pushes of the same disk.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { BIN, cleanup, finish, listBackups, makeExt4Image, run, sha256File, start, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";
import { client } from "../helpers/raw-client.ts";
import { MsgType } from "../../src/protocol/messages.ts";
import { hostIdentity } from "../../src/core/identity.ts";

let dir: string;
let imgA: string;
let imgB: string;
beforeAll(() => {
  dir = tempDir("tbb-conc-");
  imgA = makeExt4Image(dir, 16, "a.img");
  imgB = makeExt4Image(dir, 20, "b.img");
});
afterAll(() => cleanup(dir));

/** A push session opened by hand and left waiting after HELLO_ACK (a slow sender on another cable): from this machine, or one with another machine-id. */
async function holdSession(sock: string, diskName: string, machineId?: string) {
  const c = await client(sock);
  const disk = { path: `/dev/${diskName}`, kind: "file", name: diskName, size: 1 << 20, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null };
  const hello = { protocol: "tbbackup", proto: 1, tool: "tbbackup/test", role: "push", session: crypto.randomUUID(), host: machineId ? { hostname: os.hostname(), machineId, productUuid: null } : hostIdentity(), caps: ["status", "root"], disk, chunkSize: 1 << 20, level: 1, content: "image" };
  await c.json(MsgType.HELLO, hello);
  await c.expect(MsgType.HELLO_ACK);
  return c;
}

/** Runs `body` against a receiver (not --once, --idle 60) on a unix socket of a fresh directory, and stops it after. */
async function withReceiver(body: (r: { out: string; sock: string }) => Promise<void>): Promise<void> {
  const d = tempDir();
  const out = path.join(d, "store");
  const sock = path.join(d, "r.sock");
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--idle", "60"]);
  try {
    await waitFor(() => fs.existsSync(sock), "receiver socket");
    await body({ out, sock });
  } finally {
    recv.kill();
    await finish(recv);
    cleanup(d);
  }
}

describe("several sessions at once", () => {
  test("a push completes while another session on the same receiver is still open; both are listed once", async () => {
    await withReceiver(async ({ out, sock }) => {
      const held = await holdSession(sock, "held.img");
      // served one at a time, these would wait for the held session's --idle (60 s), then fail their --wait
      const [a, b] = await Promise.all([run(["push", imgA, "--stream", `unix:${sock}`, "--wait", "20"]), run(["push", imgB, "--stream", `unix:${sock}`, "--wait", "20"])]);
      expect(a.code).toBe(0);
      expect(b.code).toBe(0);
      held.close();
      const rows = await listBackups(out);
      const complete = rows.filter((r) => r.status === "complete").map((r) => r.id.split("/")[1]).sort();
      expect(complete).toEqual(["a.img", "b.img"]);
      for (const [img, name] of [[imgA, "a.img"], [imgB, "b.img"]] as const) {
        const row = rows.find((r) => r.id.split("/")[1] === name && r.status === "complete")!;
        expect(zstdSha(path.join(out, row.id, "image.zst"))).toBe(sha256File(img));
      }
    });
  });

  test("a second push of a disk whose push is in progress is refused (busy, exit 16), and the first is not disturbed", async () => {
    await withReceiver(async ({ sock }) => {
      const held = await holdSession(sock, path.basename(imgA));
      const p = await run(["push", imgA, "--stream", `unix:${sock}`, "--wait", "20"]);
      expect(p.code).toBe(16);
      expect(p.stderr).toMatch(/another push of .*a\.img is in progress/);
      held.close();
      // once the first has gone, the disk can be pushed again
      await Bun.sleep(500);
      expect((await run(["push", imgA, "--stream", `unix:${sock}`, "--wait", "20"])).code).toBe(0);
    });
  });
  test("two machines with the same hostname and disk name but other machine-ids push at once (review finding: the second was refused as busy)", async () => {
    await withReceiver(async ({ out, sock }) => {
      // another machine booted from the same stick: same hostname, its push of a disk also named a.img held open
      const held = await holdSession(sock, path.basename(imgA), "11111111111111111111111111111111");
      const root = tempDir("tbb-machine-");
      try {
        fs.mkdirSync(path.join(root, "etc"));
        fs.writeFileSync(path.join(root, "etc/machine-id"), "22222222222222222222222222222222\n");
        const p = await run(["push", imgA, "--stream", `unix:${sock}`, "--wait", "20"], { env: { TBBACKUP_SYSROOT: root } });
        expect(p.stderr).not.toContain("in progress");
        expect(p.code).toBe(0);
      } finally {
        held.close();
        cleanup(root);
      }
      const rows = await listBackups(out);
      const row = rows.find((r) => r.id.split("/")[1] === "a.img" && r.status === "complete")!;
      expect(zstdSha(path.join(out, row.id, "image.zst"))).toBe(sha256File(imgA));
    });
  });

  test("connections that say nothing do not hold up a push (review finding: each held a thread of the fs pool)", async () => {
    await withReceiver(async ({ sock }) => {
      const silent: net.Socket[] = [];
      try {
        for (let i = 0; i < 3; i++) silent.push(net.createConnection(sock));
        await Bun.sleep(500);
        const p = await run(["push", imgA, "--stream", `unix:${sock}`, "--wait", "15"]);
        expect(p.code).toBe(0);
      } finally {
        for (const c of silent) c.destroy();
      }
    });
  });
});

describe("memory stays bounded", () => {
  test.skipIf(!fs.existsSync("/usr/bin/time"))("a 16 GiB image of holes (16,384 ZERO records in bursts): the receiver's peak RSS stays under 256 MiB (needs GNU time)", async () => {
    const d = tempDir();
    try {
      const img = path.join(d, "holes.img");
      fs.writeFileSync(img, "");
      fs.truncateSync(img, 16 * 1024 ** 3);
      const sock = path.join(d, "r.sock");
      const rss = path.join(d, "rss");
      const recv = Bun.spawn(["/usr/bin/time", "-f", "%M", "-o", rss, BIN, "receive", "--out", path.join(d, "store"), "--stream", `unix:${sock}`, "--once"], { stdout: "ignore", stderr: "ignore" });
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const p = await run(["push", img, "--stream", `unix:${sock}`, "--all-blocks"]);
      expect(p.code).toBe(0);
      expect(await recv.exited).toBe(0);
      const kib = Number(fs.readFileSync(rss, "utf8").trim().split("\n").pop());
      console.log(`receiver peak RSS for 16 GiB of holes: ${Math.round(kib / 1024)} MiB`);
      expect(kib).toBeGreaterThan(0);
      expect(kib).toBeLessThan(256 * 1024);
    } finally {
      cleanup(d);
    }
  });
});
