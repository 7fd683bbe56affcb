// The benchmark's two stand-ins (scripts/bench-sink.ts, scripts/bench-replay.ts)
// against the real binary: a push to the sink ends confirmed, the sink's
// recording replayed into a real receive stores a backup that verifies, and
// the sink's DONE echoes whatever END carried (an integrity root too).
import { afterAll, describe, expect, test } from "bun:test";
import * as path from "node:path";
import { connect } from "node:net";
import { ROOT, cleanup, existsSync, finish, makeExt4Image, run, sh, sha256File, start, tempDir, waitFor, zstdSha, stockRoot } from "../helpers/cli.ts";
import { FrameDecoder, encodeFrame } from "../../src/protocol/frame.ts";
import { MsgType, decodeJson, encodeJson } from "../../src/protocol/messages.ts";
import { headerOnlyPayload } from "../../src/protocol/chunk-record.ts";

const dir = tempDir("tbb-bench-tools-");
afterAll(() => cleanup(dir));

function script(name: string, args: string[]) {
  return Bun.spawn([process.execPath, path.join(ROOT, "scripts", name), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
}

describe("bench sink and replay", () => {
  const img = makeExt4Image(dir, 16);
  const rec = path.join(dir, "push.rec");

  test("a push to the sink is confirmed with the source's integrity root and SHA-256, and the session is recorded", async () => {
    const sock = path.join(dir, "sink.sock");
    const sink = script("bench-sink.ts", [`unix:${sock}`, "--record", rec]);
    await waitFor(() => existsSync(sock), "sink socket");
    const p = await run(["push", img, "--stream", `unix:${sock}`, "--json", "--sha256"]);
    expect(p.code).toBe(0);
    expect(JSON.parse(p.stdout).sha256).toBe(sha256File(img));
    expect(JSON.parse(p.stdout).root).toBe(stockRoot(img));
    expect(await sink.exited).toBe(0);
    expect(Bun.file(rec).size).toBeGreaterThan(0);
  });

  test("the recording replayed into a real receive stores a backup that verifies", async () => {
    const out = path.join(dir, "store");
    const sock = path.join(dir, "recv.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => existsSync(sock), "receiver socket");
    const replay = script("bench-replay.ts", [rec, `unix:${sock}`]);
    expect(await replay.exited).toBe(0);
    expect((await finish(recv)).code).toBe(0);
    const v = await run(["verify", "--out", out]);
    expect(v.code).toBe(0);
    expect(v.stdout).toContain("ok:");
    const stored = sh(`find ${JSON.stringify(out)} -name image.zst`).trim();
    expect(zstdSha(stored)).toBe(sha256File(img));
  });

  test("a damaged recording makes the replay fail, not pass", async () => {
    const bytes = new Uint8Array(await Bun.file(rec).arrayBuffer());
    bytes[bytes.length >> 1]! ^= 0xff; // inside a DATA frame: its CRC fails at the receiver
    const bad = path.join(dir, "bad.rec");
    await Bun.write(bad, bytes);
    const out = path.join(dir, "store-bad");
    const sock = path.join(dir, "recv-bad.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => existsSync(sock), "receiver socket");
    const replay = script("bench-replay.ts", [bad, `unix:${sock}`]);
    expect(await replay.exited).toBe(1);
    expect((await finish(recv)).code).not.toBe(0);
  });

  test("DONE echoes what END carried, a root the sink has never heard of included", async () => {
    const sock = path.join(dir, "echo.sock");
    const sink = script("bench-sink.ts", [`unix:${sock}`]);
    await waitFor(() => existsSync(sock), "sink socket");
    const session = crypto.randomUUID();
    const c = connect(sock);
    const frames: { type: number; body: Record<string, unknown> | null }[] = [];
    const decoder = new FrameDecoder();
    const got = (type: number) => frames.find((f) => f.type === type);
    c.on("data", (d) => {
      for (const ev of decoder.push(new Uint8Array(d as Buffer))) if (ev.kind === "frame") frames.push({ type: ev.frame.type, body: decodeJson(ev.frame.payload) });
    });
    const send = (type: number, payload: Uint8Array) => c.write(encodeFrame(type, payload));
    send(MsgType.HELLO, encodeJson({ protocol: "tbbackup", proto: 1, tool: "test", role: "push", session, host: { hostname: "t", machineId: null, productUuid: null }, caps: ["zstd", "root-sha256"], disk: { path: "/x", kind: "file", name: "x", size: 4096 }, chunkSize: 4096, level: 1 }));
    await waitFor(() => got(MsgType.HELLO_ACK) !== undefined, "HELLO_ACK", 10000);
    expect(got(MsgType.HELLO_ACK)!.body!.session).toBe(session);
    expect(got(MsgType.HELLO_ACK)!.body!.caps).toEqual(["zstd", "root-sha256"]);
    send(MsgType.ZERO, headerOnlyPayload({ index: 0, rawLength: 4096, offset: 0, checksum: 0n }));
    send(MsgType.END, encodeJson({ chunks: 1, bytes: 4096, sha256: "ab".repeat(32), root: "cd".repeat(32) }));
    await waitFor(() => got(MsgType.DONE) !== undefined, "DONE", 10000);
    const done = got(MsgType.DONE)!.body!;
    expect(done).toMatchObject({ session, sha256: "ab".repeat(32), root: "cd".repeat(32), bytes: 4096 });
    c.end();
    expect(await sink.exited).toBe(0);
  });
});
