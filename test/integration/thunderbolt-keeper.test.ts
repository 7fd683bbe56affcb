// A keeper with several Thunderbolt peers (the emulator's --topology A-K,B-K:
// one cable, one XDomain and one stream per peer): one `receive` without
// --stream serves them side by side, sets up a peer that appears later, and
// an unplugged peer leaves the others alone. Overlap is shown by order, not
// time: a sender held mid-session (SIGSTOP) while the other one completes.
// Skipped (not passed) where FUSE is not available.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, finish, randomImage, run, sha256File, start, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";
import { fuseAvailable, startEmu, type Emu } from "../emulator/harness.ts";

const skip = !fuseAvailable();
let dir: string;
let emu: Emu | null = null;

const env = (h: string) => ({ TBBACKUP_SYSROOT: emu!.host(h), PATH: "/usr/sbin:/usr/bin:/sbin:/bin" });
/** Stored entries under `out` (relative paths) whose path contains `name`. */
const entries = (out: string, name: string) => (fs.existsSync(out) ? fs.readdirSync(out, { recursive: true }).map(String).filter((p) => p.includes(name)) : []);
const complete = (out: string, name: string) => entries(out, name).filter((p) => p.endsWith("image.zst") && !p.includes(".partial"));
function partialManifest(out: string, name: string): { reason?: string; durable?: { chunks: number } } | null {
  const p = entries(out, name).find((x) => x.endsWith(".partial"));
  try {
    return p ? JSON.parse(fs.readFileSync(path.join(out, p, "manifest.json"), "utf8")) : null;
  } catch {
    return null;
  }
}
function groupsLeft(): string[] {
  return Object.values(emu!.state().hosts).flatMap((h) => Object.values(h.groups).flat());
}
/** K's devices open by receive (one per peer it serves). */
const kOpen = () => Object.values(emu!.state().hosts.K!.devs).filter((d) => d.name === "tbbackup" && d.users === 1).length;

describe.skipIf(skip)("a keeper with several Thunderbolt peers (emulated driver; needs root, /dev/fuse and python3)", () => {
  beforeAll(() => {
    dir = tempDir();
  });
  afterAll(() => cleanup(dir));
  afterEach(async () => {
    await emu?.stop();
    emu = null;
  });

  test("two peers push at once: a peer plugged in after start is served while the other's session is held mid-way; both complete and verify; the log names both", async () => {
    emu = await startEmu(["--topology", "A-K,B-K", "--unplugged", "B-K"]);
    const imgA = randomImage(dir, 24, "a.img");
    const imgB = randomImage(dir, 8, "b.img");
    const out = path.join(dir, "out-both");
    const recv = start(["receive", "--out", out], { env: env("K") });
    try {
      await waitFor(() => kOpen() === 1, "receive to open its stream to A");
      const pushA = start(["push", imgA, "--name", "alpha"], { env: env("A") });
      // A's session is under way: hold it there
      await waitFor(() => (partialManifest(out, "a.img") ?? null) !== null, "A's session to start");
      pushA.kill("SIGSTOP");
      try {
        emu.ctl("plug B-K");
        await waitFor(() => kOpen() === 2, "receive to set up B, which appeared after it started");
        // B completes while A's session is still open: served side by side, not one after the other
        const pushB = await run(["push", imgB, "--name", "bravo", "--wait", "20"], { env: env("B") });
        expect(pushB.stderr).toContain("backup complete");
        expect(pushB.code).toBe(0);
        expect(complete(out, "a.img")).toEqual([]);
      } finally {
        pushA.kill("SIGCONT");
      }
      const a = await finish(pushA);
      expect(a.code).toBe(0);
      const [storedA] = complete(out, "a.img");
      const [storedB] = complete(out, "b.img");
      expect(zstdSha(path.join(out, storedA!))).toBe(sha256File(imgA));
      expect(zstdSha(path.join(out, storedB!))).toBe(sha256File(imgB));
      for (const s of [storedA!, storedB!]) expect((await run(["verify", path.join(out, path.dirname(s))])).code).toBe(0);
    } finally {
      recv.kill("SIGTERM");
    }
    const r = await finish(recv);
    expect(r.code).toBe(0);
    // each peer's stream and sessions are named after it (device name, XDomain as K sees it)
    expect(r.stderr).toMatch(/stream ready: \S+tbstream\d with host-a \(0-1,/);
    expect(r.stderr).toMatch(/stream ready: \S+tbstream\d with host-b \(0-3,/);
    expect(r.stderr).toMatch(/session \w+ from \S+ via host-a 0-1 .*a\.img/);
    expect(r.stderr).toMatch(/session \w+ from \S+ via host-b 0-3 .*b\.img/);
    expect(groupsLeft()).toEqual([]);
  }, 120000);

  test("a peer unplugged mid-session: the other's session is unharmed, its own is kept as a partial and resumed once it is back", async () => {
    emu = await startEmu(["--topology", "A-K,B-K"]);
    const imgA = randomImage(dir, 16, "a.img");
    const imgB = randomImage(dir, 16, "b.img");
    const out = path.join(dir, "out-unplug");
    const recv = start(["receive", "--out", out], { env: env("K") });
    try {
      await waitFor(() => kOpen() === 2, "receive to open a stream to each peer");
      const pushB = start(["push", imgB, "--name", "bravo"], { env: env("B") });
      await waitFor(() => partialManifest(out, "b.img") !== null, "B's session to start");
      pushB.kill("SIGSTOP"); // B's session stays open through what follows
      let b;
      try {
        // 4 KiB chunks: A's progress becomes durable every MiB, well before the cut
        const pushA = start(["push", imgA, "--name", "alpha", "--chunk-size", "4K"], { env: env("A") });
        await waitFor(() => (partialManifest(out, "a.img")?.durable?.chunks ?? 0) > 0, "A's progress to become durable");
        emu.ctl("unplug A-K");
        const a = await finish(pushA);
        expect(a.code).toBe(7);
        expect(a.stderr).toMatch(/cable unplugged or peer gone/);
        await waitFor(() => typeof partialManifest(out, "a.img")?.reason === "string", "the receiver to record A's partial");
      } finally {
        pushB.kill("SIGCONT");
        b = await finish(pushB);
      }
      expect(b.code).toBe(0);
      const [storedB] = complete(out, "b.img");
      expect(zstdSha(path.join(out, storedB!))).toBe(sha256File(imgB));
      expect(complete(out, "a.img")).toEqual([]);
      const durable = partialManifest(out, "a.img")!.durable!.chunks;
      // A's stream was torn down with it; plugged in again, it is set up afresh and the push resumes
      await waitFor(() => kOpen() === 1 && Object.values(emu!.state().hosts.K!.groups).flat().length === 1, "A's stream to be removed");
      emu.ctl("plug A-K");
      await waitFor(() => kOpen() === 2, "receive to set A up again");
      const again = await run(["push", imgA, "--name", "alpha", "--chunk-size", "4K", "--json", "--wait", "20"], { env: env("A") });
      expect(again.code).toBe(0);
      expect(JSON.parse(again.stdout).resumedFrom).toBe(durable);
      const [storedA] = complete(out, "a.img");
      expect(zstdSha(path.join(out, storedA!))).toBe(sha256File(imgA));
    } finally {
      recv.kill("SIGTERM");
    }
    const r = await finish(recv);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("peer host-a 0-1 is gone");
    expect(groupsLeft()).toEqual([]);
  }, 120000);

  test("--max-sessions 1: a second peer's session waits while the first holds the only one, then completes", async () => {
    emu = await startEmu(["--topology", "A-K,B-K"]);
    const imgA = randomImage(dir, 24, "a.img");
    const imgB = randomImage(dir, 8, "b.img");
    const out = path.join(dir, "out-max");
    const recv = start(["receive", "--out", out, "--max-sessions", "1"], { env: env("K") });
    const toB = () => Object.values(emu!.state().hosts.K!.devs).find((d) => d.xdomain === "0-3")!.rx_bytes;
    try {
      await waitFor(() => kOpen() === 2, "receive to open a stream to each peer");
      const pushA = start(["push", imgA], { env: env("A") });
      await waitFor(() => partialManifest(out, "a.img") !== null, "A's session to start");
      pushA.kill("SIGSTOP");
      let b;
      try {
        const before = toB();
        const pushB = start(["push", imgB, "--wait", "60"], { env: env("B") });
        await waitFor(() => toB() > before, "B's HELLO to reach the keeper");
        const first = toB();
        // B had no answer and says HELLO again: its session has not started
        await waitFor(() => toB() > first, "B to repeat its HELLO");
        expect(partialManifest(out, "b.img")).toBeNull();
        pushA.kill("SIGCONT");
        b = await finish(pushB);
      } finally {
        pushA.kill("SIGCONT");
      }
      expect((await finish(pushA)).code).toBe(0);
      expect(b.code).toBe(0);
      expect(zstdSha(path.join(out, complete(out, "b.img")[0]!))).toBe(sha256File(imgB));
    } finally {
      recv.kill("SIGTERM");
    }
    const r = await finish(recv);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/push from \S+ on \S+tbstream\d \(host-b 0-3\) waits: 1 sessions are in progress \(--max-sessions\)/);
  }, 120000);

  test("--once with two peers offering a stream: stops at once naming both (USAGE, as push does); with --peer it serves that one (review finding)", async () => {
    emu = await startEmu(["--topology", "A-K,B-K"]);
    const out = path.join(dir, "out-once");
    const r = await run(["receive", "--out", out, "--once"], { env: env("K") });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/2 Thunderbolt peers offer a stream: host-a \(0-1,.*; host-b \(0-3,/);
    expect(r.stderr).toContain("--peer");
    expect(groupsLeft()).toEqual([]);
    const img = randomImage(dir, 4, "once.img");
    const recv = start(["receive", "--out", out, "--once", "--peer", "host-b"], { env: env("K") });
    const p = await run(["push", img, "--wait", "30"], { env: env("B") });
    const done = await finish(recv);
    expect(p.code).toBe(0);
    expect(done.code).toBe(0);
    expect(zstdSha(path.join(out, complete(out, "once.img")[0]!))).toBe(sha256File(img));
    expect(groupsLeft()).toEqual([]);
  }, 120000);

  test("one peer's stream that cannot be set up (its device held by another process) is named and skipped; the other peer is served (review finding: the keeper stopped, exit 16)", async () => {
    emu = await startEmu(["--topology", "A-K,B-K"]);
    // a group under A's service on K, made by someone else, its device held open
    const group = path.join(emu.host("K"), "sys/kernel/config/thunderbolt/stream/0-1.1/tbbackup");
    fs.mkdirSync(path.dirname(group), { recursive: true });
    fs.mkdirSync(group);
    fs.writeFileSync(path.join(group, "in_hopid"), "12\n");
    fs.writeFileSync(path.join(group, "out_hopid"), "12\n");
    const dev = path.join(emu.host("K"), "dev", `tbstream${fs.readFileSync(path.join(group, "index"), "utf8").trim()}`);
    const holder = Bun.spawn(["sh", "-c", `exec 3<>${dev}; exec sleep 300`]);
    const img = randomImage(dir, 4, "held.img");
    const out = path.join(dir, "out-held");
    let recv;
    try {
      await waitFor(() => Object.values(emu!.state().hosts.K!.devs).some((d) => d.users === 1), "the other process to open A's device");
      recv = start(["receive", "--out", out], { env: env("K") });
      const p = await run(["push", img, "--wait", "30"], { env: env("B") });
      expect(p.code).toBe(0);
      expect(recv.exitCode).toBeNull(); // still serving
      expect(zstdSha(path.join(out, complete(out, "held.img")[0]!))).toBe(sha256File(img));
    } finally {
      recv?.kill("SIGTERM");
      holder.kill();
      await holder.exited;
    }
    const r = await finish(recv!);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/peer host-a 0-1 is not served: .*already open by process \d+/);
    expect(r.stderr).toMatch(/stream ready: \S+tbstream\d with host-b/);
    fs.rmdirSync(group);
    expect(groupsLeft()).toEqual([]);
  }, 120000);

  test("--max-sessions 1: a session whose sender gave up while it waited for the slot is not started; the sender's next push is (review finding: a stale HELLO made an empty partial)", async () => {
    emu = await startEmu(["--topology", "A-K,B-K"]);
    const imgA = randomImage(dir, 24, "a.img");
    const imgB = randomImage(dir, 4, "b.img");
    const out = path.join(dir, "out-stale");
    const recv = start(["receive", "--out", out, "--max-sessions", "1"], { env: env("K") });
    let stopped = "";
    try {
      await waitFor(() => kOpen() === 2, "receive to open a stream to each peer");
      const pushA = start(["push", imgA], { env: env("A") });
      await waitFor(() => partialManifest(out, "a.img") !== null, "A's session to start");
      pushA.kill("SIGSTOP");
      try {
        // B waits for the slot and gives up
        const b = await run(["push", imgB, "--wait", "5"], { env: env("B") });
        expect(b.code).toBe(9);
      } finally {
        pushA.kill("SIGCONT");
      }
      expect((await finish(pushA)).code).toBe(0);
      // its old HELLO starts nothing: the next push of B is served at once and is the only backup of b.img
      const again = await run(["push", imgB, "--wait", "20"], { env: env("B") });
      expect(again.code).toBe(0);
      expect(entries(out, "b.img").filter((p) => p.includes(".partial"))).toEqual([]);
      expect(complete(out, "b.img").length).toBe(1);
      expect(zstdSha(path.join(out, complete(out, "b.img")[0]!))).toBe(sha256File(imgB));
      // a session held mid-way and one waiting for the slot: only the first is in progress
      const pushA2 = start(["push", imgA, "--name", "again"], { env: env("A") });
      await waitFor(() => entries(out, "a.img").some((p) => p.endsWith(".partial")), "A's second session to start");
      pushA2.kill("SIGSTOP");
      const pushB2 = start(["push", imgB, "--wait", "60"], { env: env("B") });
      const toB = () => Object.values(emu!.state().hosts.K!.devs).find((d) => d.xdomain === "0-3")!.rx_bytes;
      const before = toB();
      await waitFor(() => toB() > before, "B's HELLO to reach the keeper");
      recv.kill("SIGTERM");
      stopped = (await finish(recv)).stderr;
      pushA2.kill("SIGCONT");
      await finish(pushA2);
      await finish(pushB2);
    } finally {
      recv.kill("SIGTERM");
    }
    expect(stopped).toContain("is not started: its sender gave up while it waited");
    expect(stopped).toContain("the push in progress is kept as .partial");
  }, 180000);

  test("four peers, three of them idle: a push completes (an idle peer's device is polled, it holds no thread of the fs pool)", async () => {
    emu = await startEmu(["--topology", "A-K,B-K,C-K,D-K"]);
    const img = randomImage(dir, 8, "a.img");
    const out = path.join(dir, "out-four");
    const recv = start(["receive", "--out", out], { env: env("K") });
    try {
      await waitFor(() => kOpen() === 4, "receive to open a stream to each of the four peers");
      const p = await run(["push", img, "--wait", "30"], { env: env("A") });
      expect(p.code).toBe(0);
      expect(zstdSha(path.join(out, complete(out, "a.img")[0]!))).toBe(sha256File(img));
    } finally {
      recv.kill("SIGTERM");
    }
    const r = await finish(recv);
    expect(r.code).toBe(0);
    for (const [name, xd] of [["host-a", "0-1"], ["host-b", "0-3"], ["host-c", "0-5"], ["host-d", "0-7"]]) expect(r.stderr).toContain(`with ${name} (${xd},`);
    expect(groupsLeft()).toEqual([]);
  }, 120000);
});
