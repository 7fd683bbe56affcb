// tcp: key authentication with the compiled binary: keygen, key files, the
// receiver that refuses to run open, right and wrong keys on both sides, and
// that the key itself never crosses the wire (a recording proxy in between).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { cleanup, makeExt4Image, oneLine, run, stockRoot, start, tempDir, waitFor } from "../helpers/cli.ts";

let dir: string;
let img: string;
let key: string;
beforeAll(async () => {
  dir = tempDir("tbb-auth-");
  img = makeExt4Image(dir, 8, "small.img");
  key = path.join(dir, "a.key");
  expect((await run(["keygen", key])).code).toBe(0);
});
afterAll(() => cleanup(dir));

const port = () => 20000 + Math.floor(Math.random() * 20000);

/** A receiver on tcp with the given extra arguments, once it listens. */
async function receiver(p: number, args: string[], name: string) {
  const out = path.join(dir, `${name}-store`);
  const recv = start(["receive", "--out", out, "--stream", `tcp:${p}`, ...args]);
  let err = "";
  const reader = recv.stderr.getReader();
  const pump = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      err += new TextDecoder().decode(value);
    }
  })();
  await waitFor(() => err.includes("receiving on"), "the receiver to listen");
  return {
    out,
    log: () => err,
    stop: async () => {
      recv.kill("SIGINT");
      await recv.exited;
      await pump;
      return err;
    },
  };
}

describe("keygen and key files", () => {
  test("keygen writes 32 random bytes as one hex line, mode 0600, never over a file; without FILE to stdout", async () => {
    expect(fs.statSync(key).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(key, "utf8")).toMatch(/^[0-9a-f]{64}\n$/);
    const again = await run(["keygen", key]);
    expect(again.code).toBe(4);
    expect(oneLine(again.stderr)).toMatch(/exists already/);
    const a = await run(["keygen"]);
    const b = await run(["keygen"]);
    expect(a.stdout).toMatch(/^[0-9a-f]{64}\n$/);
    expect(a.stdout).not.toBe(b.stdout);
  });

  test("a key file others may read is refused; so is one that holds no key", async () => {
    const open = path.join(dir, "open.key");
    fs.copyFileSync(key, open);
    fs.chmodSync(open, 0o644);
    const r = await run(["push", img, "--stream", `tcp:127.0.0.1:${port()}`, "--key-file", open]);
    expect(r.code).toBe(12);
    expect(oneLine(r.stderr)).toMatch(/can be read by others \(mode 0644\); make it private: chmod 600/);
    const junk = path.join(dir, "junk.key");
    fs.writeFileSync(junk, "not a key\n", { mode: 0o600 });
    const j = await run(["list", "--stream", `tcp:127.0.0.1:${port()}`, "--key-file", junk]);
    expect(j.code).toBe(2);
    expect(oneLine(j.stderr)).toMatch(/does not hold a key/);
  });

  test("--key-file is for tcp: only; a tcp: receiver without a key refuses to start unless --insecure", async () => {
    const u = await run(["receive", "--out", path.join(dir, "u"), "--stream", `unix:${dir}/u.sock`, "--key-file", key]);
    expect(u.code).toBe(2);
    expect(oneLine(u.stderr)).toMatch(/--key-file applies to tcp: streams only/);
    const open = await run(["receive", "--out", path.join(dir, "o"), "--stream", `tcp:${port()}`, "--once"]);
    expect(open.code).toBe(12);
    expect(oneLine(open.stderr)).toMatch(/give --key-file FILE .* or --insecure/);
  });
});

describe("sessions with a key", () => {
  test("the same key on both sides: push and list work; a wrong key or none is one line on each side, and the receiver goes on", async () => {
    const p = port();
    const r = await receiver(p, ["--key-file", key, "--allow-restore"], "keyed");
    try {
      const other = path.join(dir, "other.key");
      await run(["keygen", other]);
      const wrong = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`, "--key-file", other]);
      expect(wrong.code).toBe(12);
      expect(oneLine(wrong.stderr)).toMatch(/does not hold this key/);
      await waitFor(() => /refused a connection .*: wrong key/.test(r.log()), "the receiver's log line");
      const none = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`]);
      expect(none.code).toBe(12);
      expect(oneLine(none.stderr)).toMatch(/this receiver needs a key: give --key-file/);
      await waitFor(() => /refused a connection .*: this receiver needs a key/.test(r.log()), "the receiver's log line");

      const ok = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`, "--key-file", key, "--json"]);
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout).root).toBe(stockRoot(img));
      const l = await run(["list", "--stream", `tcp:127.0.0.1:${p}`, "--key-file", key, "--json"]);
      expect(l.code).toBe(0);
      expect((JSON.parse(l.stdout) as { id: string }[]).map((x) => x.id)).toContain(JSON.parse(ok.stdout).id);
    } finally {
      await r.stop();
    }
  });

  test("connections that say nothing do not hold up a sender with the key (each would hold it 10 s; the sender waits 10 s for its answer)", async () => {
    const p = port();
    const r = await receiver(p, ["--key-file", key, "--once"], "silent");
    const silent = [0, 1].map(() => net.connect(p, "127.0.0.1"));
    try {
      await Promise.all(silent.map((s) => new Promise((res) => s.once("connect", res))));
      const ok = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`, "--key-file", key]);
      expect(ok.code).toBe(0);
    } finally {
      for (const s of silent) s.destroy();
      await r.stop();
    }
  }, 60_000);

  test("a base64 key file works the same", async () => {
    const b64 = path.join(dir, "b64.key");
    fs.writeFileSync(b64, Buffer.from(fs.readFileSync(key, "utf8").trim(), "hex").toString("base64") + "\n", { mode: 0o600 });
    const p = port();
    const r = await receiver(p, ["--key-file", key, "--once"], "b64");
    const ok = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`, "--key-file", b64]);
    expect(ok.code).toBe(0);
    await r.stop();
  });

  test("a sender with a key and a receiver without one (--insecure): the sender says the receiver did not answer the key exchange", async () => {
    const p = port();
    const r = await receiver(p, ["--insecure"], "insecure");
    try {
      const k = await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`, "--key-file", key]);
      expect(k.code).toBe(12);
      expect(oneLine(k.stderr)).toMatch(/did not answer the key exchange; .*--key-file/);
      // and without a key it works, as before
      expect((await run(["push", img, "--stream", `tcp:127.0.0.1:${p}`])).code).toBe(0);
    } finally {
      await r.stop();
    }
  }, 60_000);

  /** A tcp proxy from `front` to `back` that records both directions and can flip one byte going up. */
  async function recordingProxy(front: number, back: number, flipUpAt = -1) {
    const up: Buffer[] = [];
    const down: Buffer[] = [];
    let upBytes = 0;
    const proxy = net.createServer((c) => {
      const u = net.connect(back, "127.0.0.1");
      c.on("data", (d: Buffer) => {
        const copy = Buffer.from(d);
        if (flipUpAt >= upBytes && flipUpAt < upBytes + copy.length) copy[flipUpAt - upBytes] ^= 0x01;
        upBytes += copy.length;
        up.push(copy);
        u.write(copy);
      });
      u.on("data", (d: Buffer) => (down.push(Buffer.from(d)), c.write(d)));
      c.on("end", () => u.end());
      u.on("end", () => c.end());
      c.on("close", () => u.destroy());
      u.on("close", () => c.destroy());
      for (const s of [c, u]) s.on("error", () => {});
    });
    await new Promise<void>((res) => proxy.listen(front, "127.0.0.1", () => res()));
    return { up: () => Buffer.concat(up), down: () => Buffer.concat(down), close: () => proxy.close() };
  }

  const count = (hay: Buffer, needle: string) => {
    let n = 0;
    for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + 1)) n++;
    return n;
  };

  test("on the wire: the key never, and after the key exchange nothing readable (sealed records, not frames)", async () => {
    const p = port();
    const front = port();
    const proxy = await recordingProxy(front, p);
    const r = await receiver(p, ["--key-file", key, "--once"], "wire");
    try {
      const ok = await run(["push", img, "--stream", `tcp:127.0.0.1:${front}`, "--key-file", key, "--name", "a-label-to-look-for"]);
      expect(ok.code).toBe(0);
    } finally {
      await r.stop();
      proxy.close();
    }
    const all = Buffer.concat([proxy.up(), proxy.down()]);
    expect(proxy.up().length).toBeGreaterThan(1000);
    const hex = fs.readFileSync(key, "utf8").trim();
    expect(all.includes(Buffer.from(hex, "hex"))).toBe(false);
    expect(all.includes(Buffer.from(hex))).toBe(false);
    // AUTH (0x30) first; then only AUTH_PROOF is a plain frame going up, AUTH_CHALLENGE and AUTH_OK coming down
    expect(proxy.up().subarray(0, 5)).toEqual(Buffer.from([0x54, 0x42, 0x4b, 0x31, 0x30]));
    expect(count(proxy.up(), "TBK1")).toBe(2);
    expect(count(proxy.down(), "TBK1")).toBe(2);
    expect(all.includes("a-label-to-look-for")).toBe(false);
    expect(all.includes('"role"')).toBe(false);
  });

  test("a byte changed on the way after the key exchange stops the push: nothing is stored as complete", async () => {
    const big = path.join(dir, "random.img");
    const buf = Buffer.alloc(4 << 20);
    for (let i = 0; i < buf.length; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));
    fs.writeFileSync(big, buf);
    const p = port();
    const front = port();
    const proxy = await recordingProxy(front, p, 1_000_000);
    const r = await receiver(p, ["--key-file", key], "tamper");
    let log = "";
    try {
      const push = await run(["push", big, "--stream", `tcp:127.0.0.1:${front}`, "--key-file", key]);
      expect(push.code).not.toBe(0);
      expect(oneLine(push.stderr)).toMatch(/failed its authentication|closed|cut/);
    } finally {
      log = await r.stop();
      proxy.close();
    }
    expect(log).toMatch(/failed its authentication \(tag mismatch\): the connection was changed on the way/);
    const l = await run(["list", "--out", r.out, "--json"]);
    expect((JSON.parse(l.stdout) as { status: string }[]).map((x) => x.status)).not.toContain("complete");
  });
});
