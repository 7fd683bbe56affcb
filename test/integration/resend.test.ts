// A damaged chunk on the way is asked for again (the `resend` capability,
// docs/PROTOCOL.md §8.2a): one flipped bit does not end a push, a link that
// damages everything still does, and a peer without the capability gets the
// old behaviour (the session ends at the first damaged chunk).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, listBackups, oneLine, randomImage, run, sha256File, start, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";
import { startProxy, type ProxyPlan } from "../helpers/proxy.ts";
import { client, dataPayload } from "../helpers/raw-client.ts";
import { encodeFrame } from "../../src/protocol/frame.ts";
import { MsgType, encodeJson } from "../../src/protocol/messages.ts";

let dir: string;
let img: string;
beforeAll(() => {
  dir = tempDir("tbb-resend-");
  // random bytes: every chunk is a DATA frame, and the stored image must equal it byte for byte
  img = randomImage(dir, 12, "resend.img");
});
afterAll(() => cleanup(dir));

/** Pushes `source` to a `receive --once --json` through a proxy that carries out `plan`. */
async function throughProxy(tag: string, plan: ProxyPlan, pushArgs: string[] = [], source = img) {
  const out = path.join(dir, `${tag}-store`);
  const sock = path.join(dir, `${tag}.sock`);
  const front = path.join(dir, `${tag}-front.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once", "--json"]);
  await waitFor(() => fs.existsSync(sock), "socket");
  const proxy = await startProxy(front, sock, plan);
  try {
    const p = await run(["push", source, "--stream", `unix:${front}`, "--json", ...pushArgs]);
    const r = await finish(recv);
    // the session's result (on failure, the command's own error object follows it)
    const first = r.stdout.slice(0, r.stdout.indexOf("\n}\n") + 2);
    return { p, r, out, stored: first ? (JSON.parse(first) as { ok: boolean; id?: string; resent?: number }) : null };
  } finally {
    proxy.close();
    if (recv.exitCode === null) recv.kill();
  }
}

describe("a damaged chunk is sent again", () => {
  for (const fixCrc of [false, true]) {
    test(`one flipped bit in a DATA frame (${fixCrc ? "frame CRC recomputed: the chunk's check fails" : "frame CRC fails"}): the push completes, byte-exact, and both sides say one chunk was sent again`, async () => {
      const { p, r, out, stored } = await throughProxy(`one-${fixCrc}`, { damage: { type: MsgType.DATA, nth: 3, at: 5000, fixCrc } });
      if (p.code !== 0) console.log("PUSH", p.stderr, "RECV", r.stderr);
      expect(p.code).toBe(0);
      expect(r.code).toBe(0);
      const pushed = JSON.parse(p.stdout) as { id: string; resent: number; bytes: number };
      expect(pushed.resent).toBe(1);
      expect(p.stderr).toMatch(/receiver asked for chunk 3 again/);
      expect(stored).toMatchObject({ ok: true, id: pushed.id, resent: 1 });
      expect(r.stderr).toMatch(fixCrc ? /chunk 3 arrived damaged \(it failed its check: .*\); asked the sender for it again/ : /chunk 3 arrived damaged \(its DATA frame failed its checksum\); asked the sender for it again/);
      expect(r.stderr).toMatch(/1 damaged chunk was sent again/);
      expect(await listBackups(out)).toMatchObject([{ id: pushed.id, status: "complete" }]);
      const stem = path.join(out, pushed.id);
      expect(zstdSha(path.join(stem, "image.zst"))).toBe(sha256File(img));
      // the chunk list and digests hold each chunk once, in order
      const lines = fs.readFileSync(path.join(stem, "chunks.txt"), "utf8").trim().split("\n");
      expect(lines.map((l) => Number(l.split(" ")[0]))).toEqual([...Array(12).keys()]);
      expect(fs.readFileSync(path.join(stem, "digests.txt"), "utf8").trim().split("\n").length).toBe(12);
      const v = await run(["verify", stem]);
      expect(v.code).toBe(0);
    }, 60000);
  }

  test.skipIf(process.getuid?.() !== 0 || Bun.spawnSync(["sh", "-c", "command -v losetup"]).exitCode !== 0)("from a disk (a loop device, read several chunks a request): the chunk asked for again is read again, and the push completes byte-exact (needs root and losetup)", async () => {
    // large enough that the sender is still reading (chunks read ahead, waiting their turn) when chunk 3 is asked for again
    const disk = randomImage(dir, 64, "resend-loop.img");
    const loop = Bun.spawnSync(["losetup", "-f", "--show", "-r", disk]).stdout.toString().trim();
    expect(loop).toMatch(/^\/dev\/loop\d+$/);
    try {
      for (const args of [["--all-blocks"], []]) {
        const { p, r, out } = await throughProxy(`loop${args.length}`, { damage: { type: MsgType.DATA, nth: 3, at: 5000, fixCrc: true } }, args, loop);
        if (p.code !== 0) console.log("PUSH", p.stderr, "RECV", r.stderr);
        expect(p.code).toBe(0);
        const pushed = JSON.parse(p.stdout) as { id: string; resent: number };
        expect(pushed.resent).toBe(1);
        expect(zstdSha(path.join(out, pushed.id, "image.zst"))).toBe(sha256File(disk));
      }
    } finally {
      Bun.spawnSync(["losetup", "-d", loop]);
    }
  });

  test("without --json, the summary line says how many chunks were sent again", async () => {
    const out = path.join(dir, "plain-store");
    const sock = path.join(dir, "plain.sock");
    const front = path.join(dir, "plain-front.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const proxy = await startProxy(front, sock, { damage: { type: MsgType.DATA, nth: 5, at: 100, fixCrc: false } });
    try {
      const p = await run(["push", img, "--stream", `unix:${front}`]);
      expect(p.code).toBe(0);
      expect(p.stderr).toMatch(/^backup complete: .*, 1 damaged chunk sent again\)$/m);
      expect((await finish(recv)).code).toBe(0);
    } finally {
      proxy.close();
      if (recv.exitCode === null) recv.kill();
    }
  }, 60000);

  test("the last chunk damaged with its CRC recomputed (found only at the end): asked for after END, then END again", async () => {
    const { p, r, out } = await throughProxy("last", { damage: { type: MsgType.DATA, nth: 11, at: 5000, fixCrc: true } });
    if (p.code !== 0) console.log("PUSH", p.stderr, "RECV", r.stderr);
    expect(p.code).toBe(0);
    expect(JSON.parse(p.stdout).resent).toBe(1);
    const [b] = await listBackups(out);
    expect(b!.status).toBe("complete");
    expect(zstdSha(path.join(out, b!.id, "image.zst"))).toBe(sha256File(img));
  }, 60000);

  for (const fixCrc of [false, true]) {
    test(`a damaged ZERO record (${fixCrc ? "CRC recomputed: its checksum is wrong" : "frame CRC fails"}) is asked for again too`, async () => {
      // random data, then zeros: chunks 4.. travel as ZERO records
      const mixed = path.join(dir, `mixed-${fixCrc}.img`);
      fs.writeFileSync(mixed, Buffer.concat([fs.readFileSync(img).subarray(0, 4 << 20), Buffer.alloc(8 << 20)]));
      const { p, r, out, stored } = await throughProxy(`zero-${fixCrc}`, { damage: { type: MsgType.ZERO, nth: 2, at: 20, fixCrc } }, [], mixed);
      if (p.code !== 0) console.log("PUSH", p.stderr, "RECV", r.stderr);
      expect(p.code).toBe(0);
      expect(JSON.parse(p.stdout)).toMatchObject({ resent: 1, zeroChunks: 8 });
      expect(stored).toMatchObject({ ok: true, resent: 1 });
      expect(r.stderr).toMatch(fixCrc ? /chunk 6 arrived damaged \(zero record for chunk 6 is malformed\)/ : /chunk 6 arrived damaged \(its ZERO frame failed its checksum\)/);
      const [b] = await listBackups(out);
      expect(b!.status).toBe("complete");
      expect(zstdSha(path.join(out, b!.id, "image.zst"))).toBe(sha256File(mixed));
    }, 60000);
  }

  for (const drop of [false, true]) {
    test(`the receiver's request ${drop ? "lost" : "damaged"} on the way back: it asks again, and the push completes`, async () => {
      const { p, r, out, stored } = await throughProxy(`back-${drop}`, { damage: { type: MsgType.DATA, nth: 3, at: 5000, fixCrc: false }, damageBack: { type: MsgType.RESEND, drop } });
      if (p.code !== 0) console.log("PUSH", p.stderr, "RECV", r.stderr);
      expect(p.code).toBe(0);
      expect(JSON.parse(p.stdout).resent).toBe(1);
      expect(stored).toMatchObject({ ok: true, resent: 1 });
      const [b] = await listBackups(out);
      expect(b!.status).toBe("complete");
      expect(zstdSha(path.join(out, b!.id, "image.zst"))).toBe(sha256File(img));
    }, 60000);
  }

  for (const fixCrc of [false, true]) {
    test(`every DATA frame damaged (${fixCrc ? "CRC recomputed" : "CRC fails"}): the push fails with exit 8 naming the reason, the receiver keeps a partial`, async () => {
      const { p, r, out, stored } = await throughProxy(`every-${fixCrc}`, { damage: { type: MsgType.DATA, nth: 2, at: 5000, fixCrc, every: true } });
      expect(p.code).toBe(8);
      expect(oneLine(p.stderr)).toMatch(/chunk 2 arrived damaged 3 times .*check the cable/);
      expect(r.code).toBe(8);
      expect(stored).toMatchObject({ ok: false, resent: 2 });
      expect((await listBackups(out)).map((b) => b.status)).toEqual(["partial"]);
    }, 60000);
  }

  test("push --sha256 does not offer resend (its whole-image hash cannot go back): a damaged chunk ends it as before", async () => {
    const { p, r, out } = await throughProxy("sha", { damage: { type: MsgType.DATA, nth: 3, at: 5000, fixCrc: false } }, ["--sha256"]);
    expect(p.code).toBe(8);
    expect(oneLine(p.stderr)).toMatch(/corrupt DATA frame/);
    expect(r.code).toBe(8);
    expect((await listBackups(out)).map((b) => b.status)).toEqual(["partial"]);
  }, 60000);
});

describe("peers without the resend capability", () => {
  const base = { protocol: "tbbackup", proto: 1, tool: "tbbackup/0.0.9", host: { hostname: "oldhost", machineId: null, productUuid: null } };
  // what a sender before the resend capability lists, and the same with it
  const OLD_CAPS = ["zstd", "zero-chunks", "seekable", "progress-ack", "status", "root"];
  for (const caps of [OLD_CAPS, [...OLD_CAPS, "resend"]]) {
    const old = !caps.includes("resend");
    test(`a damaged DATA frame from a sender ${old ? "without" : "with"} the capability: ${old ? "ERROR CORRUPT, the session ends (as before)" : "RESEND of that chunk"}`, async () => {
      const d = tempDir();
      const sock = path.join(d, "r.sock");
      const out = path.join(d, "store");
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
      try {
        await waitFor(() => fs.existsSync(sock), "receiver socket");
        const c = await client(sock);
        const data = fs.readFileSync(img).subarray(0, 3 << 20);
        const chunkSize = 1 << 20;
        const session = crypto.randomUUID();
        const disk = { path: "/x/old.img", kind: "file", name: "old.img", size: data.length, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null };
        await c.write(encodeFrame(MsgType.HELLO, encodeJson({ ...base, role: "push", session, caps, disk, chunkSize, level: 1, content: "image" })));
        expect((await c.next([MsgType.HELLO_ACK])).body.caps).toContain("resend");
        for (let i = 0; i < 2; i++) {
          const payload = dataPayload(i, i * chunkSize, data.subarray(i * chunkSize, (i + 1) * chunkSize));
          const frame = encodeFrame(MsgType.DATA, payload);
          if (i === 1) frame[16 + 5000]! ^= 0x40; // chunk 1 damaged on the way: its CRC fails
          await c.write(frame);
        }
        const answer = await c.next([MsgType.ERROR, MsgType.RESEND]);
        if (old) {
          expect(answer).toMatchObject({ type: MsgType.ERROR, body: { session, code: "CORRUPT" } });
          expect(String(answer.body.message)).toMatch(/corrupt DATA frame/);
          c.close();
          const r = await finish(recv);
          expect(r.code).toBe(8);
          expect((await listBackups(out)).map((b) => b.status)).toEqual(["partial"]);
        } else {
          expect(answer).toMatchObject({ type: MsgType.RESEND, body: { session, from: 1, seq: 1 } });
          c.close();
          await finish(recv);
        }
      } finally {
        recv.kill();
        cleanup(d);
      }
    }, 60000);
  }
});
