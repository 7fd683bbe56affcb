// The incremental push's wire pieces (docs/PROTOCOL.md §6.4, §8.7): SAME
// records and BASE_DIGESTS payloads, as literal bytes, and what a decoder
// refuses (a peer's lengths and counts are claims).
import { describe, expect, test } from "bun:test";
import { BASE_DIGESTS_PER_FRAME, decodeBaseDigests, decodeSameRecord, decodeWant, encodeBaseDigests, encodeWant, sameRecordFrame, wants } from "../../src/protocol/chunk-record.ts";
import { FrameDecoder } from "../../src/protocol/frame.ts";
import { MsgType } from "../../src/protocol/messages.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("SAME record", () => {
  test("literal bytes: type 0x19, the 24-byte chunk header, nothing after it", () => {
    const f = sameRecordFrame({ index: 2, rawLength: 1048576, offset: 2097152, checksum: 0x0123456789abcdefn });
    expect(f.length).toBe(44);
    // as docs/PROTOCOL.md §6.4 shows it
    expect(hex(f.subarray(0, 16))).toBe("54424b311900000018000000847ac563");
    expect(hex(f.subarray(40))).toBe("c11f24b8");
    expect(hex(f.subarray(16, 40))).toBe("02000000" + "00001000" + "0000200000000000" + "efcdab8967452301");
    const frames = [...new FrameDecoder().push(f)].flatMap((e) => (e.kind === "frame" ? [e.frame] : []));
    expect(frames.length).toBe(1);
    const r = decodeSameRecord(frames[0]!, 1048576);
    expect(r).toEqual({ kind: "same", header: { index: 2, rawLength: 1048576, offset: 2097152, checksum: 0x0123456789abcdefn } });
  });

  test("refused: a payload after the header, a short header, a length of 0 or above the chunk size", () => {
    const ok = sameRecordFrame({ index: 0, rawLength: 4096, offset: 0, checksum: 1n });
    const payload = ok.subarray(16, 40);
    const longer = new Uint8Array(25);
    longer.set(payload);
    expect("error" in decodeSameRecord({ type: MsgType.SAME, payload: longer }, 4096)).toBe(true);
    expect("error" in decodeSameRecord({ type: MsgType.SAME, payload: payload.subarray(0, 23) }, 4096)).toBe(true);
    expect("error" in decodeSameRecord({ type: MsgType.SAME, payload }, 2048)).toBe(true);
    const zero = payload.slice();
    zero.fill(0, 4, 8);
    expect("error" in decodeSameRecord({ type: MsgType.SAME, payload: zero }, 4096)).toBe(true);
  });
});

describe("BASE_DIGESTS payload", () => {
  test("literal bytes: u32 LE first index, then 32 bytes per digest; round trip", () => {
    const d = new Uint8Array(64).map((_, i) => i);
    const p = encodeBaseDigests(65536, d);
    expect(hex(p.subarray(0, 4))).toBe("00000100");
    expect(p.length).toBe(68);
    const back = decodeBaseDigests(p)!;
    expect(back.first).toBe(65536);
    expect(hex(back.digests)).toBe(hex(d));
  });

  test("refused: no digest, a partial digest, more than a frame may carry", () => {
    expect(decodeBaseDigests(new Uint8Array(4))).toBeNull();
    expect(decodeBaseDigests(new Uint8Array(4 + 33))).toBeNull();
    expect(decodeBaseDigests(new Uint8Array(3))).toBeNull();
    expect(decodeBaseDigests(new Uint8Array(4 + 32 * (BASE_DIGESTS_PER_FRAME + 1)))).toBeNull();
    expect(decodeBaseDigests(new Uint8Array(4 + 32 * BASE_DIGESTS_PER_FRAME))).not.toBeNull();
  });
});

describe("a delta restore's want bitmap (§8.6a)", () => {
  test("literal: chunks 0, 9 and 10 of 11 are two bytes, LSB first", () => {
    const bits = new Uint8Array([0x01, 0x06]);
    expect(encodeWant(bits)).toBe("AQY=");
    const back = decodeWant("AQY=", 11)!;
    expect([...Array(11).keys()].filter((i) => wants(back, i))).toEqual([0, 9, 10]);
  });
  test("exactly ceil(chunks / 8) bytes, else refused before decoding", () => {
    expect(decodeWant("AQY=", 16)).not.toBeNull();
    expect(decodeWant("AQY=", 17)).toBeNull();
    expect(decodeWant("AQY=", 8)).toBeNull();
    expect(decodeWant("AQ==", 11)).toBeNull();
    expect(decodeWant("AQ!=", 11)).toBeNull();
    expect(decodeWant("A".repeat(1 << 20), 11)).toBeNull();
    expect(decodeWant("", 0)).toEqual(new Uint8Array(0));
  });
});
