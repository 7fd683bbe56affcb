// Each failure a user can meet ends in one clear stderr line, a distinct exit
// status, and nothing that looks like a complete backup.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { BIN, cleanup, finish, makeExt4Image, run, sh, start, tempDir, waitFor, oneLine, listBackups, randomImage, sha256File, ptyPair, storeBackup } from "../helpers/cli.ts";
import { startProxy, type ProxyPlan } from "../helpers/proxy.ts";
import { FrameDecoder, encodeFrame } from "../../src/protocol/frame.ts";
import { MsgType, decodeJson, encodeJson, type Hello } from "../../src/protocol/messages.ts";
import { newHello, newHelloAck } from "../../src/core/handshake.ts";

let dir: string;
let img: string;
beforeAll(() => {
  dir = tempDir();
  img = makeExt4Image(dir, 24);
});
afterAll(() => cleanup(dir));

async function listStatuses(out: string): Promise<string[]> {
  return (await listBackups(out)).map((r) => r.status);
}

/** Pushes `img` to a `receive --once` through a proxy that carries out `plan`: both sides' outcomes and the store. */
async function throughProxy(tag: string, plan: ProxyPlan, pushArgs: string[] = []) {
  const out = path.join(dir, `${tag}-store`);
  const sock = path.join(dir, `${tag}.sock`);
  const front = path.join(dir, `${tag}-front.sock`);
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => fs.existsSync(sock), "socket");
  const proxy = await startProxy(front, sock, plan);
  try {
    const p = await run(["push", img, "--stream", `unix:${front}`, ...pushArgs]);
    return { p, r: await finish(recv), out };
  } finally {
    proxy.close();
  }
}

describe("errors", () => {
  test("source missing: exit 3", async () => {
    const r = await run(["push", path.join(dir, "nope.img"), "--stream", `unix:${dir}/none.sock`]);
    expect(r.code).toBe(3);
    expect(oneLine(r.stderr)).toMatch(/does not exist.*no backup was started/);
  });

  test("source is a directory: exit 3", async () => {
    const r = await run(["push", dir, "--stream", `unix:${dir}/none.sock`]);
    expect(r.code).toBe(3);
    expect(oneLine(r.stderr)).toMatch(/is a directory, not a disk or an image file; to back up the files in it, run 'tbbackup push --files/);
  });

  test("out not writable: exit 4", async () => {
    const r = await run(["receive", "--out", "/dev/null/store", "--stream", `unix:${dir}/x.sock`, "--once"]);
    expect(r.code).toBe(4);
    expect(oneLine(r.stderr)).toMatch(/cannot write to \/dev\/null\/store.*writable directory/);
  });

  test("bad --stream: usage exit 2", async () => {
    const r = await run(["push", img, "--stream", "carrier-pigeon"]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/unknown --stream/);
  });

  test("--stream naming a disk or a regular file is refused before anything is written: exit 2", async () => {
    const victim = path.join(dir, "victim.img");
    fs.copyFileSync(img, victim);
    const loop = sh(`losetup -f --show ${victim}`).trim();
    try {
      for (const target of [victim, loop]) {
        for (const args of [["push", img, "--stream", target, "--wait", "3"], ["receive", "--out", path.join(dir, "victim-store"), "--stream", target, "--once"]]) {
          const r = await run(args);
          expect(r.code).toBe(2);
          expect(oneLine(r.stderr)).toMatch(/is a (regular file|block device \(a disk\)), not a stream; nothing was written to it/);
        }
      }
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(sha256File(victim)).toBe(sha256File(img));
  });

  test("a TMPDIR mounted noexec (the zstd addon cannot load): one line that says so before any session, the receiver sees none", async () => {
    const noexec = path.join(dir, "noexec");
    fs.mkdirSync(noexec);
    sh(`mount -t tmpfs -o noexec,size=64m tmpfs ${noexec}`);
    const out = path.join(dir, "noexec-store");
    const sock = path.join(dir, "noexec.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    try {
      await waitFor(() => fs.existsSync(sock), "socket");
      const p = await run(["push", img, "--stream", `unix:${sock}`], { env: { TMPDIR: noexec } });
      expect(p.code).toBe(1);
      expect(oneLine(p.stderr)).toMatch(/cannot load the embedded zstd library.*not mounted noexec/);
      expect(p.stderr).not.toMatch(/report this bug|incomplete/);
      expect(fs.existsSync(out) ? fs.readdirSync(out) : []).toEqual([]);
    } finally {
      recv.kill();
      await recv.exited;
      sh(`umount ${noexec}`);
    }
  });

  test("nobody listening: exit 7 after --wait", async () => {
    const r = await run(["push", img, "--stream", `unix:${dir}/nobody.sock`, "--wait", "1"]);
    expect(r.code).toBe(7);
    expect(oneLine(r.stderr)).toMatch(/nobody is listening.*receive/);
  });

  test("peer speaks another protocol (garbage): exit 6", async () => {
    const sock = path.join(dir, "garbage.sock");
    const server = net.createServer((c) => {
      c.on("data", () => c.write("SSH-2.0-OpenSSH_9.2\r\n"));
      c.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(sock, () => r()));
    try {
      const r = await run(["push", img, "--stream", `unix:${sock}`, "--wait", "2"]);
      expect(r.code).toBe(6);
      expect(oneLine(r.stderr)).toMatch(/not tbbackup frames/);
    } finally {
      server.close();
    }
  });

  test("peer speaks another protocol version: exit 6, both sides say so", async () => {
    const sock = path.join(dir, "v99.sock");
    const server = net.createServer((c) => {
      c.once("data", () => {
        const ack = { protocol: "tbbackup", proto: 99, tool: "tbbackup/9.9.9", session: "x", host: {}, caps: [] };
        c.write(encodeFrame(MsgType.HELLO_ACK, new TextEncoder().encode(JSON.stringify(ack))));
      });
      c.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(sock, () => r()));
    try {
      const r = await run(["push", img, "--stream", `unix:${sock}`, "--wait", "3"]);
      expect(r.code).toBe(6);
      expect(oneLine(r.stderr)).toMatch(/protocol 99.*same tbbackup version/);
    } finally {
      server.close();
    }
  });

  test("a backup whose manifest is of a newer format: verify and restore say to upgrade tbbackup (exit 6), nothing is written", async () => {
    const out = path.join(dir, "newer-store");
    await storeBackup(img, out, path.join(dir, "newer.sock"));
    const [b] = await listBackups(out);
    const bdir = path.join(out, b!.id);
    const manifest = path.join(bdir, "manifest.json");
    const m = JSON.parse(fs.readFileSync(manifest, "utf8")) as { format: number };
    fs.writeFileSync(manifest, JSON.stringify({ ...m, format: 99 }));
    const v = await run(["verify", bdir]);
    expect(v.code).toBe(6);
    expect(oneLine(v.stderr)).toMatch(/manifest\.json: manifest format 99 is newer than this tbbackup understands; upgrade tbbackup to read this backup$/);
    const target = path.join(dir, "newer-target.img");
    const r = await run(["restore", target, "--from", bdir, "--yes"]);
    expect(r.code).toBe(6);
    expect(oneLine(r.stderr)).toMatch(/upgrade tbbackup/);
    expect(fs.existsSync(target)).toBe(false);
    // list says why it cannot read it, in the table and in JSON
    const l = await run(["list", "--out", out]);
    expect(l.code).toBe(0);
    expect(l.stdout).toContain("unreadable (written by a newer tbbackup: upgrade to read it)");
    const lj = await run(["list", "--out", out, "--json"]);
    expect(JSON.parse(lj.stdout)[0]).toMatchObject({ status: "unreadable", why: "written by a newer tbbackup: upgrade to read it" });
  });

  test("receiver's disk full: both sides exit 5, nothing listed as complete", async () => {
    const mnt = path.join(dir, "small");
    fs.mkdirSync(mnt);
    sh(`mount -t tmpfs -o size=1m tmpfs ${mnt}`);
    try {
      // random data does not compress: 24 MiB of image cannot fit in 1 MiB
      const rnd = path.join(dir, "random.img");
      sh(`head -c 8M /dev/urandom > ${rnd}`);
      const sock = path.join(dir, "full.sock");
      const recv = start(["receive", "--out", path.join(mnt, "store"), "--stream", `unix:${sock}`, "--once"]);
      await waitFor(() => fs.existsSync(sock), "socket");
      const p = await run(["push", rnd, "--stream", `unix:${sock}`]);
      const r = await finish(recv);
      expect(p.code).toBe(5);
      expect(oneLine(p.stderr)).toMatch(/disk is full.*incomplete/);
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/disk is full/);
      expect(await listStatuses(path.join(mnt, "store"))).toEqual(["partial"]);
    } finally {
      sh(`umount ${mnt}`);
    }
  });

  test("stream cut in the middle: push exit 7, receiver keeps a partial", async () => {
    const { p, r, out } = await throughProxy("cut", { cutAfterBytes: 2_500_000 });
    expect(p.code).toBe(7);
    // (when the cut comes after push handed all of it to the socket, push cannot know how much arrived)
    expect(oneLine(p.stderr)).toMatch(/(the other side closed|was cut).*incomplete|closed after all data was sent.*not confirmed/);
    expect(r.code).toBe(7);
    expect(await listStatuses(out)).toEqual(["partial"]);
    const partial = fs.readdirSync(out, { recursive: true }).map(String).find((p) => p.endsWith(".partial"));
    expect(partial).toBeDefined();
    expect(fs.existsSync(path.join(out, partial!, "image.zst"))).toBe(false);
  });

  test("a receiver that freezes mid-transfer: push gives up after --idle (exit 9), it does not hang", async () => {
    // incompressible, so the frozen receiver's socket fills and push's writes block
    const big = randomImage(dir, 32);
    const out = path.join(dir, "frozen-store");
    const sock = path.join(dir, "frozen.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const push = start(["push", big, "--stream", `unix:${sock}`, "--idle", "5"]);
    try {
      // data is being stored, so the handshake is over and push is sending
      const stored = () => fs.readdirSync(out, { recursive: true }).map(String).filter((p) => p.endsWith("image.zst.tmp")).reduce((n, p) => n + fs.statSync(path.join(out, p)).size, 0);
      await waitFor(() => fs.existsSync(out) && stored() > 1 << 20, "the transfer to start");
      process.kill(recv.pid, "SIGSTOP"); // a hung host: alive, silent, reading nothing
      const p = await finish(push);
      expect(p.code).toBe(9);
      expect(oneLine(p.stderr)).toMatch(/receiver has taken no data and said nothing for 5 s.*backup is incomplete/);
    } finally {
      process.kill(recv.pid, "SIGCONT");
      recv.kill();
      await recv.exited;
    }
  }, 60000);

  // The driver delivers a frame with a CRC error (we see it as corrupt), and
  // wakes no reader for a frame that came last: push asks again (STATUS), and
  // sends its own last frame, END, again before it asks.
  const lastWords: [string, ProxyPlan][] = [
    ["the receiver's DONE damaged", { damageBack: { type: MsgType.DONE } }],
    ["the receiver's DONE lost", { damageBack: { type: MsgType.DONE, drop: true } }],
    ["the sender's END damaged", { damage: { type: MsgType.END, nth: 0, at: 3, fixCrc: false } }],
    ["the sender's END lost", { damage: { type: MsgType.END, nth: 0, at: 0, fixCrc: false, drop: true } }],
  ];
  lastWords.forEach(([what, plan], i) => {
    test(`${what} on the way: push asks again and gets its confirmation, exit 0`, async () => {
      const { p, r, out } = await throughProxy(`last-${i}`, plan, ["--json", "--sha256"]);
      expect(p.code).toBe(0);
      expect(JSON.parse(p.stdout).sha256).toBe(sha256File(img));
      expect(r.code).toBe(0);
      expect(await listStatuses(out)).toEqual(["complete"]);
    });
  });

  test("every DONE damaged on the way: push exits 8 but says the backup may be stored, and where to look", async () => {
    const { p, r, out } = await throughProxy("done", { damageBack: { type: MsgType.DONE, every: true } });
    expect(p.code).toBe(8);
    expect(oneLine(p.stderr)).toMatch(/answer to the end of the backup arrived damaged; the backup is not confirmed: if 'tbbackup list' on the receiver shows it complete, it is/);
    expect(r.code).toBe(0);
    expect(await listStatuses(out)).toEqual(["complete"]);
  });

  test("a receiver that does not know the push any more (restarted) says so to its STATUS: push exits 7, not confirmed", async () => {
    const sock = path.join(dir, "forgetful.sock");
    // a receiver that takes everything, never sends DONE, and answers STATUS as a restarted one does
    const server = net.createServer((c) => {
      const decoder = new FrameDecoder();
      c.on("data", (d: Buffer) => {
        for (const ev of decoder.push(d)) {
          if (ev.kind !== "frame") continue;
          const m = decodeJson<{ session: string }>(ev.frame.payload);
          if (ev.frame.type === MsgType.HELLO) c.write(encodeFrame(MsgType.HELLO_ACK, encodeJson(newHelloAck(m as Hello, "h/d/t"))));
          if (ev.frame.type === MsgType.STATUS) c.write(encodeFrame(MsgType.ERROR, encodeJson({ session: m!.session, code: "NOT_FOUND", message: "no record" })));
        }
      });
      c.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(sock, () => r()));
    try {
      const r = await run(["push", img, "--stream", `unix:${sock}`]);
      expect(r.code).toBe(7);
      expect(oneLine(r.stderr)).toMatch(/receiver has no record of this push.*not confirmed: if 'tbbackup list' on the receiver shows it complete, it is/);
    } finally {
      server.close();
    }
  });

  test("a receiver on a device answers STATUS: the DONE of a stored push again, NOT_FOUND for a session it does not know", async () => {
    const d = tempDir();
    const pty = await ptyPair(d);
    const recv = { proc: null as ReturnType<typeof start> | null };
    try {
      const out = path.join(d, "store");
      recv.proc = start(["receive", "--out", out, "--stream", `${d}/A`]);
      const p = await run(["push", img, "--stream", `${d}/B`, "--json"]);
      expect(p.code).toBe(0);
      const pushed = JSON.parse(p.stdout) as { id: string; root: string };
      const manifest = JSON.parse(fs.readFileSync(path.join(out, pushed.id, "manifest.json"), "utf8")) as { session: string };
      const fd = fs.openSync(`${d}/B`, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
      const decoder = new FrameDecoder();
      const answer = async (session: string) => {
        fs.writeSync(fd, encodeFrame(MsgType.STATUS, encodeJson({ session })));
        const buf = new Uint8Array(65536);
        for (const until = Date.now() + 10_000; Date.now() < until; await Bun.sleep(20)) {
          let n = 0;
          try {
            n = fs.readSync(fd, buf);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
          }
          const frames = decoder.push(buf.subarray(0, n)).flatMap((ev) => (ev.kind === "frame" && ev.frame.type !== MsgType.PROGRESS ? [ev.frame] : []));
          if (frames.length) return { type: frames[0]!.type, body: decodeJson<Record<string, unknown>>(frames[0]!.payload)! };
        }
        throw new Error("no answer to STATUS");
      };
      const again = await answer(manifest.session);
      expect(again.type).toBe(MsgType.DONE);
      expect(again.body).toMatchObject({ session: manifest.session, id: pushed.id, root: pushed.root });
      const unknown = await answer("not-a-session-of-this-receiver");
      expect(unknown.type).toBe(MsgType.ERROR);
      expect(unknown.body).toMatchObject({ session: "not-a-session-of-this-receiver", code: "NOT_FOUND" });
      fs.closeSync(fd);
    } finally {
      recv.proc?.kill();
      pty.close();
      cleanup(d);
    }
  }, 90000);

  for (const fixCrc of [false, true]) {
    // (one damaged chunk is sent again: test/integration/resend.test.ts; here every one is damaged)
    test(`corrupt chunks in transit (${fixCrc ? "frame CRC recomputed: caught by the end-to-end checksum" : "caught by the frame CRC"}): exit 8`, async () => {
      const { p, r, out } = await throughProxy(`corrupt-${fixCrc}`, { damage: { type: MsgType.DATA, nth: 1, at: 5000, fixCrc, every: true } });
      if (p.code !== 8) console.log("PUSH", p.stderr, "RECV", r.stderr);
      expect(p.code).toBe(8);
      expect(oneLine(p.stderr)).toMatch(fixCrc ? /chunk \d+ arrived damaged 3 times \(last: it failed its check/ : /chunk \d+ arrived damaged 3 times \(last: its DATA frame failed its checksum/);
      expect(r.code).toBe(8);
      expect(await listStatuses(out)).toEqual(["partial"]);
    });
  }

  test("a receiver on a device survives a corrupt frame and a malformed HELLO, and serves the next push", async () => {
    const d = tempDir();
    const pty = await ptyPair(d);
    try {
      const out = path.join(d, "store");
      const recv = start(["receive", "--out", out, "--stream", `${d}/A`]);
      await Bun.sleep(300);
      // a frame whose payload CRC is wrong, then a HELLO with no session id
      const bad = encodeFrame(MsgType.HELLO, new TextEncoder().encode('{"protocol":"tbbackup"}'));
      bad[bad.length - 1]! ^= 0xff;
      const noSession = encodeFrame(MsgType.HELLO, new TextEncoder().encode(JSON.stringify({ protocol: "tbbackup", proto: 1, role: "push", host: { hostname: "x" } })));
      const fd = fs.openSync(`${d}/B`, "r+");
      fs.writeSync(fd, bad);
      fs.writeSync(fd, noSession);
      await Bun.sleep(300);
      // drain the receiver's ERROR answer so it does not confuse the next session
      fs.closeSync(fd);
      const p = await run(["push", img, "--stream", `${d}/B`, "--wait", "20"]);
      recv.kill();
      const r = await finish(recv);
      expect(p.code).toBe(0);
      expect(r.stderr).toMatch(/lacks a session id/);
      expect(await listStatuses(out)).toEqual(["complete"]);
    } finally {
      pty.close();
      cleanup(d);
    }
  });

  test("a sender that died inside a frame on a device (its CLOSE lost) does not swallow the next push", async () => {
    const d = tempDir();
    const pty = await ptyPair(d);
    const recv = { proc: null as ReturnType<typeof start> | null };
    try {
      const out = path.join(d, "store");
      recv.proc = start(["receive", "--out", out, "--stream", `${d}/A`]);
      // a push session whose sender dies 2000 bytes into a 512 KiB DATA frame; a pty, like a
      // device whose CLOSE was lost, tells the receiver nothing
      const hello = newHello("push", { disk: { path: "/dev/x", kind: "file", name: "x", size: 1 << 20, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null }, chunkSize: 1 << 20, level: 1 });
      const fd = fs.openSync(`${d}/B`, "r+");
      fs.writeSync(fd, encodeFrame(MsgType.HELLO, new TextEncoder().encode(JSON.stringify(hello))));
      await waitFor(() => fs.existsSync(out) && fs.readdirSync(out, { recursive: true }).map(String).some((p) => p.endsWith(".partial")), "the first session to start");
      fs.writeSync(fd, encodeFrame(MsgType.DATA, new Uint8Array(512 * 1024)).subarray(0, 2000));
      fs.closeSync(fd);
      // the next push's HELLOs (a few hundred bytes a second) would fill that payload only after minutes
      const p = await run(["push", img, "--stream", `${d}/B`, "--wait", "40"]);
      recv.proc.kill();
      const r = await finish(recv.proc);
      expect(p.code).toBe(0);
      expect(r.stderr).toMatch(/its DATA frame failed its checksum/); // asked for again (the sender is gone)
      expect((await listStatuses(out)).sort()).toEqual(["complete", "partial"]);
    } finally {
      recv.proc?.kill();
      pty.close();
      cleanup(d);
    }
  }, 90000);

  test("a unix socket a live receiver listens on is refused (exit 16), a dead one's is taken over", async () => {
    const d = tempDir();
    fs.mkdirSync(path.join(d, "with space"));
    fs.symlinkSync(path.join(d, "with space"), path.join(d, "link"));
    const sock = path.join(d, "with space", "s.sock");
    try {
      const first = start(["receive", "--out", path.join(d, "a"), "--stream", `unix:${sock}`, "--once"]);
      await waitFor(() => fs.existsSync(sock), "first receiver");
      const second = await run(["receive", "--out", path.join(d, "b"), "--stream", `unix:${sock}`, "--once"]);
      expect(second.code).toBe(16);
      expect(oneLine(second.stderr)).toMatch(/already in use/);
      // the same socket by another name (through a symlinked directory, relative)
      const third = await run(["receive", "--out", path.join(d, "b"), "--stream", "unix:link/s.sock", "--once"], { cwd: d });
      expect(third.code).toBe(16);
      // the first receiver was not disturbed: it still takes the push
      expect((await run(["push", img, "--stream", `unix:${sock}`])).code).toBe(0);
      expect((await finish(first)).code).toBe(0);
      expect(await listStatuses(path.join(d, "a"))).toEqual(["complete"]);
      // a receiver killed outright leaves its socket file behind; the next one starts anyway
      const killed = start(["receive", "--out", path.join(d, "a"), "--stream", `unix:${sock}`]);
      await waitFor(() => fs.existsSync(sock), "receiver to kill");
      killed.kill("SIGKILL");
      await killed.exited;
      expect(fs.existsSync(sock)).toBe(true);
      const next = start(["receive", "--out", path.join(d, "a"), "--stream", `unix:${sock}`, "--once"]);
      await Bun.sleep(300);
      expect((await run(["push", img, "--stream", `unix:${sock}`, "--wait", "5"])).code).toBe(0);
      expect((await finish(next)).code).toBe(0);
    } finally {
      cleanup(d);
    }
  });

  test("a sender that hangs up right after its HELLO does not stop the receiver", async () => {
    const d = tempDir();
    const sock = path.join(d, "s.sock");
    const out = path.join(d, "store");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`]);
    try {
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const hello = newHello("push", { disk: { path: "/dev/x", kind: "file", name: "x", size: 1 << 20, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null }, chunkSize: 1 << 20, level: 1 });
      for (let i = 0; i < 3; i++) {
        const c = net.connect(sock);
        await new Promise<void>((r) => c.once("connect", () => r()));
        c.end(encodeFrame(MsgType.HELLO, new TextEncoder().encode(JSON.stringify(hello))));
        c.destroy();
        await Bun.sleep(200);
      }
      expect(recv.exitCode).toBeNull(); // still serving
      const p = await run(["push", img, "--stream", `unix:${sock}`]);
      expect(p.code).toBe(0);
      expect(await listStatuses(out)).toContain("complete");
    } finally {
      recv.kill();
      await recv.exited;
      cleanup(d);
    }
  });

  test("a unix listener whose queue is full: push gives up after --wait (exit 7), it does not hang", async () => {
    const d = tempDir();
    const sock = path.join(d, "full.sock");
    // a listener that never accepts, its backlog filled by one connection
    const py = Bun.spawn(["python3", "-c", `
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(0)
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])
print("ready", flush=True); time.sleep(60)`, sock], { stdout: "pipe" });
    try {
      const reader = py.stdout.getReader();
      await reader.read(); // "ready"
      const r = await run(["push", img, "--stream", `unix:${sock}`, "--wait", "2"]);
      expect(r.code).toBe(7);
      expect(oneLine(r.stderr)).toMatch(/takes no more connections \(its queue is full\)/);
    } finally {
      py.kill();
      cleanup(d);
    }
  });
});

describe("--help", () => {
  test("each stream command lists its own options first, the Thunderbolt setup options after them under their own heading", async () => {
    for (const cmd of ["push", "receive", "restore", "list"]) {
      const h = await run([cmd, "--help"]);
      expect(h.code).toBe(0);
      const own = h.stdout.indexOf("--stream <spec>");
      const group = h.stdout.indexOf("Thunderbolt setup (without --stream):");
      expect(own).toBeGreaterThan(0);
      expect(group).toBeGreaterThan(own);
      expect(h.stdout.indexOf("--peer <id>")).toBeGreaterThan(group);
      expect(h.stdout.indexOf("--ring-size <n>")).toBeGreaterThan(group);
    }
  });

  // A serial console: a real terminal (script gives one) that often says 0 columns.
  const onTerminal = (cmd: string) =>
    Bun.spawn(["script", "-qfec", cmd, "/dev/null"], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, TERM: "vt220" } });

  test("on a terminal of 0 columns (a serial console) push shows plain lines and finishes", async () => {
    const out = path.join(dir, "cols0-store");
    const sock = path.join(dir, "cols0.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const p = onTerminal(`stty cols 0 rows 0; ${BIN} push ${img} --stream unix:${sock}`);
    const killer = setTimeout(() => p.kill("SIGKILL"), 60_000); // ora's endless redraw hung it for good
    try {
      expect(await p.exited).toBe(0);
      expect(await new Response(p.stdout).text()).toMatch(/backup complete/);
      expect((await finish(recv)).code).toBe(0);
    } finally {
      clearTimeout(killer);
    }
  }, 90000);

  test("Ctrl-C on a terminal stops a push while its progress spinner runs: exit 130", async () => {
    const big = randomImage(dir, 96, "ctrl-c.img");
    const out = path.join(dir, "ctrlc-store");
    const sock = path.join(dir, "ctrlc.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    // level 19 keeps it busy for several seconds
    const p = onTerminal(`stty cols 80 rows 24; ${BIN} push ${big} --stream unix:${sock} --level 19`);
    let seen = "";
    const reader = (async () => {
      for await (const c of p.stdout) seen += new TextDecoder().decode(c);
    })();
    await waitFor(() => /push .*MiB/.test(seen), "the spinner");
    p.stdin.write("\x03");
    p.stdin.flush();
    const killer = setTimeout(() => p.kill("SIGKILL"), 60_000);
    try {
      expect(await p.exited).toBe(130);
      await reader;
      expect(seen).toMatch(/interrupted \(SIGINT\); the backup is incomplete/);
    } finally {
      clearTimeout(killer);
      recv.kill();
      await recv.exited;
    }
  }, 90000);

  test("a usage mistake is one line that says what and points to --help (exit 2)", async () => {
    for (const args of [["push", "--bogus"], ["receive", "--idle", "1"], ["bogus"], ["push", "x", "--level", "99"]]) {
      const r = await run(args);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/run 'tbbackup --help' for usage$/);
      // with --json, a script gets it as the usual error object
      const j = await run([...args, "--json"]);
      expect(j.code).toBe(2);
      expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, error: { code: "USAGE", exit: 2 } });
    }
    // and a push that started no backup does not say one is incomplete
    const s = await run(["push", img, "--stream", "tcp:localhost:99999"]);
    expect(s.code).toBe(2);
    expect(oneLine(s.stderr)).not.toMatch(/incomplete/);
  });
});
