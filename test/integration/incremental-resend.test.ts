// A damaged chunk in an incremental push (review findings): the receiver asks
// for it again and the SAME records after it are copied from the base again
// (a damaged base was reported before), and a damaged SAME frame is asked for
// again like a DATA frame. Both end byte-exact.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, randomImage, run, sha256File, start, storeBackup, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";
import { startProxy, type ProxyPlan } from "../helpers/proxy.ts";
import { MsgType } from "../../src/protocol/messages.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir("tbb-incr-resend-");
});
afterAll(() => cleanup(dir));

/** Changes 4 KiB inside chunk `chunk` of `img`. */
function change(img: string, chunk: number): void {
  const fd = fs.openSync(img, "r+");
  const b = Buffer.alloc(4096);
  crypto.getRandomValues(b);
  fs.writeSync(fd, b, 0, 4096, chunk * 1048576 + 100);
  fs.closeSync(fd);
}

async function pushThrough(img: string, out: string, tag: string, plan: ProxyPlan) {
  const sock = path.join(dir, `${tag}.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "receiver socket");
  const proxy = await startProxy(`${sock}.p`, sock, plan);
  try {
    const p = await run(["push", img, "--stream", `unix:${sock}.p`, "--json"]);
    return { p, r: await finish(recv) };
  } finally {
    proxy.close();
    if (recv.exitCode === null) recv.kill();
  }
}

describe("resend in an incremental push", () => {
  const cases: [string, number, ProxyPlan][] = [
    ["a changed chunk damaged on the way (its check fails), with SAME records after it", 3, { damage: { type: MsgType.DATA, nth: 0, at: 5000, fixCrc: true } }],
    ["a SAME frame damaged on the way (its CRC fails)", 3, { damage: { type: MsgType.SAME, nth: 5, at: 3, fixCrc: false } }],
    ["the last chunk damaged, asked for after END", 11, { damage: { type: MsgType.DATA, nth: 0, at: 5000, fixCrc: true } }],
  ];
  cases.forEach(([what, chunk, plan], i) => {
    test(`${what}: sent again, exit 0, byte-exact`, async () => {
      const img = randomImage(dir, 12, `disk${i}.img`);
      const out = path.join(dir, `store${i}`);
      await storeBackup(img, out, path.join(dir, `s${i}.sock`));
      change(img, chunk);
      const { p, r } = await pushThrough(img, out, `t${i}`, plan);
      expect(p.code).toBe(0);
      expect(r.code).toBe(0);
      const j = JSON.parse(p.stdout) as { id: string; base?: string; resent: number };
      expect(j.base).toBeDefined();
      expect(j.resent).toBeGreaterThanOrEqual(1);
      expect(zstdSha(path.join(out, j.id, "image.zst"))).toBe(sha256File(img));
      const m = JSON.parse(fs.readFileSync(path.join(out, j.id, "manifest.json"), "utf8")) as { chunks: { same: number } };
      // 12 chunks, one changed: 11 copied from the base, each counted once
      expect(m.chunks.same).toBe(11);
    }, 120000);
  });
});
