// A message a session's state does not allow (docs/PROTOCOL.md §8.2b, §8.6b)
// ends it with PROTOCOL (exit 6) and one clear line, run as a user runs it
// against a receiver that breaks the protocol (a hand-made one on a unix socket).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { cleanup, oneLine, randomImage, run, tempDir } from "../helpers/cli.ts";
import { FrameDecoder, encodeFrame, type Frame } from "../../src/protocol/frame.ts";
import { MsgType, decodeJson, encodeJson, type Hello, type RestoreInfo } from "../../src/protocol/messages.ts";
import { DATA_PAYLOAD_AT, dataFrameSize, sealDataFrame, zeroRecordFrame } from "../../src/protocol/chunk-record.ts";
import { zstd } from "../../src/util/zstd.ts";
import { newHelloAck } from "../../src/core/handshake.ts";
import { zeroChecksum } from "../../src/core/zero.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir("tbb-sessions-");
});
afterAll(() => cleanup(dir));

/** A receiver on `sock` that answers each frame with what `answer` gives. */
async function fakeReceiver(sock: string, answer: (f: Frame, hello: Hello | null) => Uint8Array[]): Promise<{ close: () => void }> {
  const server = net.createServer((c) => {
    const decoder = new FrameDecoder();
    let hello: Hello | null = null;
    c.on("data", (d: Buffer) => {
      for (const ev of decoder.push(new Uint8Array(d))) {
        if (ev.kind !== "frame") continue;
        if (ev.frame.type === MsgType.HELLO) {
          if (hello) continue; // a repeated HELLO
          hello = decodeJson<Hello>(ev.frame.payload)!;
        }
        for (const out of answer(ev.frame, hello)) c.write(out);
      }
    });
    c.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  return { close: () => server.close() };
}

const json = (type: number, v: unknown) => encodeFrame(type, encodeJson(v));

describe("a message the session's state does not allow", () => {
  test("push: a DONE before the sender's END is refused (PROTOCOL, exit 6), not taken as the confirmation", async () => {
    const img = randomImage(dir, 4);
    const sock = path.join(dir, "early-done.sock");
    const server = await fakeReceiver(sock, (f, hello) =>
      f.type === MsgType.HELLO
        ? [json(MsgType.HELLO_ACK, newHelloAck(hello!, "h/d/t")), json(MsgType.DONE, { session: hello!.session, id: "h/d/t", path: "/x", bytes: 0, storedBytes: 0 })]
        : [],
    );
    try {
      const r = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "64K"]);
      expect(oneLine(r.stderr)).toMatch(/the receiver sent DONE before the sender's END/);
      expect(r.code).toBe(6);
    } finally {
      server.close();
    }
  });

  test("push: a HELLO_ACK with a field of the wrong shape (a base offer that is a string) is refused (PROTOCOL, exit 6) before anything is sent", async () => {
    const img = randomImage(dir, 4);
    const sock = path.join(dir, "bad-ack.sock");
    let frames = 0;
    const server = await fakeReceiver(sock, (f, hello) => {
      if (f.type !== MsgType.HELLO && f.type !== MsgType.ERROR) frames++; // (an ERROR telling it why is fine)
      return f.type === MsgType.HELLO ? [json(MsgType.HELLO_ACK, { ...newHelloAck(hello!, "h/d/t"), base: "h/d/older" })] : [];
    });
    try {
      const r = await run(["push", img, "--stream", `unix:${sock}`, "--chunk-size", "64K"]);
      expect(oneLine(r.stderr)).toMatch(/the receiver's HELLO_ACK is malformed/);
      expect(r.code).toBe(6);
      expect(frames).toBe(0);
    } finally {
      server.close();
    }
  });

  test("list: a LIST_RESULT whose entry lacks its fields (no date) is refused (PROTOCOL, exit 6) in one line, not a crash", async () => {
    const sock = path.join(dir, "bad-list.sock");
    const entry = { id: "h/d/t", host: "h", disk: "d", kind: "image", status: "complete", size: 1, storedBytes: 1, ratio: 1, label: null };
    const server = await fakeReceiver(sock, (f, hello) => (f.type === MsgType.HELLO ? [json(MsgType.HELLO_ACK, newHelloAck(hello!)), json(MsgType.LIST_RESULT, { session: hello!.session, backups: [entry] })] : []));
    try {
      const r = await run(["list", "--stream", `unix:${sock}`, "--wait", "10"]);
      expect(r.code).toBe(6);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(/the receiver's list is malformed/);
      // the same entry with its date is listed
      server.close();
      const ok = await fakeReceiver(sock + "2", (f, hello) => (f.type === MsgType.HELLO ? [json(MsgType.HELLO_ACK, newHelloAck(hello!)), json(MsgType.LIST_RESULT, { session: hello!.session, backups: [{ ...entry, date: "2026-01-01T00:00:00Z" }] })] : []));
      try {
        const good = await run(["list", "--stream", `unix:${sock}2`, "--wait", "10"]);
        expect(good.code, good.stderr).toBe(0);
        expect(good.stdout).toContain("h/d/t");
      } finally {
        ok.close();
      }
    } finally {
      server.close();
    }
  });

  test("restore: an offer of chunks of 1 TiB is refused (PROTOCOL, exit 6) before anything is sized by it; no target is made", async () => {
    const sock = path.join(dir, "huge-chunks.sock");
    const target = path.join(dir, "huge.img");
    // one chunk of 128 KiB of random data, sent as it would be: a payload large enough for a pooled buffer
    const raw = new Uint8Array(128 * 1024);
    for (let i = 0; i < raw.length; i += 65536) crypto.getRandomValues(raw.subarray(i, i + 65536));
    const z = zstd();
    const out = new Uint8Array(dataFrameSize(z.compressBound(raw.length)));
    const n = new z.CCtx().compress2(out.subarray(DATA_PAYLOAD_AT), raw);
    const data = out.subarray(0, sealDataFrame(out, { index: 0, offset: 0, rawLength: raw.length, checksum: Bun.hash.xxHash3(raw) }, n));
    const sha256 = new Bun.CryptoHasher("sha256").update(raw).digest("hex");
    const offer = (session: string): RestoreInfo => ({ session, id: "h/d/t", kind: "image", host: { hostname: "h", machineId: null, productUuid: null }, disk: { path: "/dev/sda", kind: "block", name: "sda", size: raw.length, model: null, serial: null, wwn: null, logicalBlockSize: 512, partitionTable: null }, label: null, date: "2026-01-01T00:00:00Z", size: raw.length, chunkSize: 2 ** 40, chunks: 1, sha256 });
    const server = await fakeReceiver(sock, (f, hello) => {
      if (f.type === MsgType.HELLO) return [json(MsgType.HELLO_ACK, newHelloAck(hello!)), json(MsgType.RESTORE_INFO, offer(hello!.session))];
      if (f.type === MsgType.RESTORE) return [data, json(MsgType.RESTORE_END, { chunks: 1, bytes: raw.length, sha256 })];
      return [];
    });
    try {
      const r = await run(["restore", target, "--stream", `unix:${sock}`, "--yes", "--wait", "10"]);
      expect(oneLine(r.stderr)).toMatch(/the receiver's restore offer has chunks of 1099511627776 bytes/);
      expect(r.code).toBe(6);
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      server.close();
    }
  });

  test("restore: a second RESTORE_INFO, for another backup, while the data comes is refused (PROTOCOL, exit 6); the new target file is removed", async () => {
    const sock = path.join(dir, "twice-offered.sock");
    const target = path.join(dir, "restored.img");
    const offer = (session: string): RestoreInfo => ({ session, id: "h/d/t", kind: "image", host: { hostname: "h", machineId: null, productUuid: null }, disk: { path: "/dev/sda", kind: "block", name: "sda", size: 4096, model: null, serial: null, wwn: null, logicalBlockSize: 512, partitionTable: null }, label: null, date: "2026-01-01T00:00:00Z", size: 4096, chunkSize: 4096, chunks: 1, sha256: "0".repeat(64) });
    const server = await fakeReceiver(sock, (f, hello) => {
      if (f.type === MsgType.HELLO) return [json(MsgType.HELLO_ACK, newHelloAck(hello!)), json(MsgType.RESTORE_INFO, offer(hello!.session))];
      // the go-ahead: the offer again, then the data (which the restorer must not take after that)
      if (f.type === MsgType.RESTORE) return [json(MsgType.RESTORE_INFO, { ...offer(hello!.session), id: "h/d/u" }), zeroRecordFrame({ index: 0, offset: 0, rawLength: 4096, checksum: zeroChecksum(4096) }), json(MsgType.RESTORE_END, { chunks: 1, bytes: 4096, sha256: "0".repeat(64) })];
      return [];
    });
    try {
      const r = await run(["restore", target, "--stream", `unix:${sock}`, "--yes", "--wait", "10"]);
      expect(oneLine(r.stderr)).toMatch(/the receiver sent RESTORE_INFO again, for another backup, while sending the backup/);
      expect(r.code).toBe(6);
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      server.close();
    }
  });
});
