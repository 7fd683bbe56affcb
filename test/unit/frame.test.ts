import { describe, expect, test } from "bun:test";
import { FrameDecoder, encodeFrame, MAX_PAYLOAD, type DecodeEvent } from "../../src/protocol/frame.ts";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

// A HELLO-typed frame with payload "hi", computed with Python zlib.crc32 from the layout in
// docs/PROTOCOL.md: magic, type 01, flags 00, reserved 0000, length 02000000,
// CRC-32 of the first 12 bytes, payload, CRC-32 of the payload.
const VECTOR_HI = hex("54424b31 01 00 0000 02000000 e1e73ff3 6869 ac2a93d8");
// An empty END frame (type 0x12).
const VECTOR_EMPTY = hex("54424b31 12 00 0000 00000000 a21902ab 00000000");

function frames(events: DecodeEvent[]) {
  return events.filter((e) => e.kind === "frame").map((e) => (e.kind === "frame" ? e.frame : null)!);
}

describe("frame codec", () => {
  test("encodes the literal vectors", () => {
    expect(toHex(encodeFrame(0x01, new TextEncoder().encode("hi")))).toBe(toHex(VECTOR_HI));
    expect(toHex(encodeFrame(0x12, new Uint8Array(0)))).toBe(toHex(VECTOR_EMPTY));
  });

  test("decodes the literal vectors", () => {
    const d = new FrameDecoder();
    const ev = d.push(new Uint8Array([...VECTOR_HI, ...VECTOR_EMPTY]));
    expect(ev.map((e) => e.kind)).toEqual(["frame", "frame"]);
    const f = frames(ev);
    expect(f[0]!.type).toBe(1);
    expect(new TextDecoder().decode(f[0]!.payload)).toBe("hi");
    expect(f[1]!.type).toBe(0x12);
    expect(f[1]!.payload.length).toBe(0);
    expect(d.pending).toBe(0);
  });

  test("input split at every byte boundary gives the same frames", () => {
    const payload = new Uint8Array(300).map((_, i) => (i * 31) & 0xff);
    const stream = new Uint8Array([...VECTOR_HI, ...encodeFrame(0x10, payload), ...VECTOR_EMPTY]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new FrameDecoder();
      const ev = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      const f = frames(ev);
      expect(f.length).toBe(3);
      expect(toHex(f[1]!.payload)).toBe(toHex(payload));
      expect(ev.some((e) => e.kind !== "frame")).toBe(false);
    }
  });

  test("garbage is counted as it is skipped, before any frame arrives", () => {
    const d = new FrameDecoder();
    const ev = d.push(new TextEncoder().encode("SSH-2.0-OpenSSH_9.2\r\n".repeat(3)));
    const skipped = ev.reduce((n, e) => n + (e.kind === "garbage" ? e.bytes : 0), 0);
    expect(skipped).toBeGreaterThan(40);
    expect(skipped + d.pending).toBe(63);
  });

  test("one byte at a time", () => {
    const d = new FrameDecoder();
    const ev: DecodeEvent[] = [];
    for (const b of [...VECTOR_HI, ...VECTOR_EMPTY]) ev.push(...d.push(new Uint8Array([b])));
    expect(frames(ev).length).toBe(2);
  });

  test("resyncs after leading garbage, and counts it", () => {
    const garbage = new TextEncoder().encode("login: TBK1 noise \x00\x01TBK");
    const d = new FrameDecoder();
    const ev = d.push(new Uint8Array([...garbage, ...VECTOR_HI]));
    expect(frames(ev).length).toBe(1);
    const skipped = ev.reduce((n, e) => n + (e.kind === "garbage" ? e.bytes : 0), 0);
    expect(skipped).toBe(garbage.length);
  });

  test("a flipped payload bit is reported as corrupt, and the next frame still decodes", () => {
    const bad = VECTOR_HI.slice();
    bad[16] ^= 0x01;
    const d = new FrameDecoder();
    const ev = d.push(new Uint8Array([...bad, ...VECTOR_EMPTY]));
    expect(ev[0]).toEqual({ kind: "corrupt", type: 1, length: 2 });
    expect(frames(ev).length).toBe(1);
    expect(frames(ev)[0]!.type).toBe(0x12);
  });

  test("a frame cut short inside its payload is recovered from when bytes went missing", () => {
    // the payload of a long frame loses bytes; a short frame that follows must still come through
    const long = encodeFrame(0x10, new Uint8Array(64).fill(7));
    const damaged = new Uint8Array([...long.subarray(0, 30), ...VECTOR_HI, ...new Uint8Array(80)]);
    const d = new FrameDecoder();
    const ev = d.push(damaged);
    expect(ev[0]!.kind).toBe("corrupt");
    expect(frames(ev).map((f) => f.type)).toEqual([1]);
  });

  test("abandoning a frame whose payload stopped coming reports it and finds the frames it swallowed", () => {
    const d = new FrameDecoder();
    const big = encodeFrame(0x10, new Uint8Array(1000).fill(7));
    // the first 100 bytes of a 1000-byte frame, then two whole frames that are swallowed as its payload
    let ev = d.push(big.subarray(0, 100));
    ev = ev.concat(d.push(VECTOR_HI), d.push(VECTOR_EMPTY));
    expect(ev).toEqual([]);
    expect(d.midFrame).toBe(true);
    expect(d.holdsHeader).toBe(true);
    const out = d.abandon();
    expect(out[0]).toEqual({ kind: "corrupt", type: 0x10, length: 1000 });
    expect(frames(out).map((f) => [f.type, toHex(f.payload)])).toEqual([[0x01, "6869"], [0x12, ""]]);
    expect(d.midFrame).toBe(false);
    expect(d.abandon()).toEqual([]);
  });

  test("a frame that is merely slow holds no other header, so a stall alone never abandons it", () => {
    const d = new FrameDecoder();
    const big = encodeFrame(0x10, crypto.getRandomValues(new Uint8Array(4000)));
    d.push(big.subarray(0, 1000));
    d.push(big.subarray(1000, 3000)); // the rest of a paused sender's payload, not a new frame
    expect(d.midFrame).toBe(true);
    expect(d.holdsHeader).toBe(false);
    expect(frames(d.push(big.subarray(3000)))).toHaveLength(1);
  });

  test("a flipped header bit is skipped as garbage, never trusted", () => {
    const bad = VECTOR_HI.slice();
    bad[8] ^= 0x80; // length byte
    const d = new FrameDecoder();
    const ev = d.push(new Uint8Array([...bad, ...VECTOR_EMPTY]));
    expect(frames(ev).map((f) => f.type)).toEqual([0x12]);
    expect(ev.some((e) => e.kind === "garbage")).toBe(true);
  });

  test("a length over the limit is rejected before any allocation", () => {
    const d = new FrameDecoder(1024);
    const big = encodeFrame(0x10, new Uint8Array(2000));
    const ev = d.push(big.subarray(0, 16));
    expect(frames(ev).length).toBe(0);
    expect(d.pending).toBeLessThan(16); // header not accepted: it is not waiting for 2000 bytes
    expect(() => encodeFrame(0x10, new Uint8Array(MAX_PAYLOAD + 1))).toThrow();
  });

  test("truncated input yields nothing until the rest arrives", () => {
    const d = new FrameDecoder();
    expect(d.push(VECTOR_HI.subarray(0, VECTOR_HI.length - 1))).toEqual([]);
    expect(frames(d.push(VECTOR_HI.subarray(VECTOR_HI.length - 1))).length).toBe(1);
  });
});
