// The restoring side's session state machine (src/core/restore-session.ts,
// docs/PROTOCOL.md §8.6b): each transition, the records it hands on, the
// messages it has sent, and the frames a state refuses. No I/O.
import { describe, expect, test } from "bun:test";
import { MsgType, type RestoreInfo } from "../../src/protocol/messages.ts";
import { zeroRecordFrame } from "../../src/protocol/chunk-record.ts";
import { RestoreSession } from "../../src/core/restore-session.ts";
import { zeroChecksum } from "../../src/core/zero.ts";

const S = "11111111-2222-4333-8444-555555555555";
const json = (type: number, v: object) => ({ type: "frame" as const, frame: { type, payload: new TextEncoder().encode(JSON.stringify(v)) } });
const CHUNK = 4096;
const info: RestoreInfo = { session: S, id: "pc/sda/1", kind: "image", host: { hostname: "pc", machineId: "m", productUuid: null }, disk: { path: "/dev/sda", kind: "block", name: "sda", size: 4 * CHUNK, model: null, serial: null, wwn: null, logicalBlockSize: 512, partitionTable: null }, label: null, date: "2026-01-01T00:00:00Z", size: 4 * CHUNK, chunkSize: CHUNK, chunks: 4, root: "r" };
/** A ZERO record for chunk i, as a frame event (decoded from its bytes, as on the wire). */
function zero(i: number) {
  const bytes = zeroRecordFrame({ index: i, offset: i * CHUNK, rawLength: CHUNK, checksum: zeroChecksum(CHUNK) });
  return { type: "frame" as const, frame: { type: MsgType.ZERO, payload: bytes.subarray(16, bytes.length - 4) } };
}
const end = (v: object = {}) => json(MsgType.RESTORE_END, { chunks: 4, bytes: 4 * CHUNK, root: "r", ...v });

function offered(): RestoreSession {
  const r = new RestoreSession(S);
  r.step(json(MsgType.RESTORE_INFO, info));
  expect(r.state.name).toBe("offered");
  return r;
}

describe("restore session: the offer", () => {
  test("another session's offer and other frames are passed over; this session's is taken", () => {
    const r = new RestoreSession(S);
    r.step(json(MsgType.RESTORE_INFO, { ...info, session: "another" }));
    r.step(json(MsgType.HELLO_ACK, { session: S }));
    r.step(zero(0));
    expect(r.state.name).toBe("awaiting-offer");
    r.step(json(MsgType.RESTORE_INFO, info));
    expect(r.info?.id).toBe("pc/sda/1");
  });

  test("a malformed offer of this session is refused with PROTOCOL", () => {
    const r = new RestoreSession(S);
    r.step(json(MsgType.RESTORE_INFO, { session: S, id: 5 }));
    expect(r.failure?.code).toBe("PROTOCOL");
    expect(r.failure?.message).toMatch(/restore offer is malformed/);
  });

  test("an offer no receiver of ours sends (chunks of 1 TiB, none, or a count that does not fit the size) is refused with PROTOCOL", () => {
    for (const [bad, why] of [
      [{ chunkSize: 2 ** 40, chunks: 1 }, /chunks of 1099511627776 bytes/],
      [{ chunkSize: 0 }, /chunks of 0 bytes/],
      [{ chunks: 2 ** 50 }, /counts 1125899906842624 chunks of 4096 bytes for 16384 bytes/],
      [{ chunks: 3 }, /counts 3 chunks/],
    ] as const) {
      const r = new RestoreSession(S);
      r.step(json(MsgType.RESTORE_INFO, { ...info, ...bad }));
      expect(r.failure?.code).toBe("PROTOCOL");
      expect(r.failure?.message).toMatch(why);
      expect(r.info).toBeNull();
    }
    // the largest chunks a backup has, and a short last chunk, are taken
    for (const ok of [{ chunkSize: 4 * 1024 * 1024, chunks: 1 }, { size: 4 * CHUNK + 1, chunks: 5 }]) {
      const r = new RestoreSession(S);
      r.step(json(MsgType.RESTORE_INFO, { ...info, ...ok }));
      expect(r.failure).toBeNull();
      expect(r.state.name).toBe("offered");
    }
  });

  test("an ERROR with candidates fails with them, and the advice to pick one", () => {
    const r = new RestoreSession(S);
    r.step(json(MsgType.ERROR, { session: S, code: "NOT_FOUND", message: "no match", candidates: ["pc/sda/1  ..."] }));
    expect(r.failure?.code).toBe("NOT_FOUND");
    expect(r.failure?.details).toEqual(["pc/sda/1  ..."]);
    expect(r.failure?.advice).toMatch(/--backup ID/);
  });

  test("stopping before the go-ahead says nothing was written", () => {
    const r = offered();
    const out = r.step({ type: "finished", ok: false, message: "restore cancelled" });
    expect(out).toEqual({ type: "send", msg: { type: MsgType.ERROR, body: { session: S, code: "CLOSED", message: "restore stopped: restore cancelled (nothing written)" } } });
    expect(r.began).toBe(false);
  });
});

describe("restore session: receiving", () => {
  test("the go-ahead sends RESTORE; every record is handed on; after the last it stops reading; then RESTORE_DONE", () => {
    const r = offered();
    expect(r.step({ type: "go", want: null })).toEqual({ type: "send", msg: { type: MsgType.RESTORE, body: { session: S, go: true } } });
    for (let i = 0; i < 4; i++) {
      expect(r.state.name).toBe("receiving");
      const out = r.step(zero(i));
      expect(out.type === "record" && out.record.header.index).toBe(i);
    }
    expect(r.state.name).toBe("received");
    expect(r.step({ type: "finished", ok: true })).toEqual({ type: "send", msg: { type: MsgType.RESTORE_DONE, body: { session: S, ok: true } } });
    expect(r.state.name).toBe("done");
  });

  test("a delta restore's `want`: only those come, in order; another index is CORRUPT", () => {
    const r = offered();
    const want = new Uint8Array([0b1010]); // chunks 1 and 3
    const go = r.step({ type: "go", want });
    expect(go.type === "send" && go.msg.type === MsgType.RESTORE && go.msg.body.want).toBe("Cg==");
    expect(r.step(zero(1)).type).toBe("record");
    r.step(zero(2));
    expect(r.failure?.code).toBe("CORRUPT");
    expect(r.failure?.message).toBe("the receiver sent chunk 2, not chunk 3 as asked");
    expect(r.began).toBe(true);
    const out = r.step({ type: "finished", ok: false, message: "x" });
    expect(out.type === "send" && out.msg.type === MsgType.ERROR && out.msg.body.message).toBe("restore stopped: x");
  });

  test("a want that asks for nothing: received at once", () => {
    const r = offered();
    r.step({ type: "go", want: new Uint8Array(1) });
    expect(r.state.name).toBe("received");
  });

  test("RESTORE_END early: with the offer's totals it ends the records; with others it is PROTOCOL", () => {
    const r = offered();
    r.step({ type: "go", want: null });
    r.step(zero(0));
    r.step(end());
    expect(r.state).toMatchObject({ name: "received", received: 1 });
    const q = offered();
    q.step({ type: "go", want: null });
    q.step(end({ root: "other" }));
    expect(q.failure?.code).toBe("PROTOCOL");
  });

  test("a different offer of this session while the data comes is refused with PROTOCOL; the same one again, or another session's, is passed over", () => {
    const r = offered();
    r.step({ type: "go", want: null });
    r.step(json(MsgType.RESTORE_INFO, { ...info, session: "another" }));
    expect(r.state.name).toBe("receiving");
    r.step(json(MsgType.RESTORE_INFO, info));
    expect(r.state.name).toBe("receiving");
    r.step(json(MsgType.RESTORE_INFO, { ...info, id: "h/d/other" }));
    expect(r.failure?.code).toBe("PROTOCOL");
    expect(r.failure?.message).toMatch(/RESTORE_INFO again, for another backup/);
  });

  test("a malformed record: PROTOCOL; a bad ZERO checksum: CORRUPT; the receiver's ERROR: its code", () => {
    const r = offered();
    r.step({ type: "go", want: null });
    r.step({ type: "frame", frame: { type: MsgType.DATA, payload: new Uint8Array(10) } });
    expect(r.failure?.code).toBe("PROTOCOL");
    const q = offered();
    q.step({ type: "go", want: null });
    const bad = zero(0);
    bad.frame.payload[16] ^= 1;
    q.step(bad);
    expect(q.failure?.code).toBe("CORRUPT");
    const e = offered();
    e.step({ type: "go", want: null });
    e.step(json(MsgType.ERROR, { code: "VERIFY", message: "damaged" }));
    expect(e.failure?.code).toBe("VERIFY");
  });

  test("frames of other kinds (late digests, leftovers) are passed over while receiving", () => {
    const r = offered();
    r.step({ type: "go", want: null });
    r.step({ type: "frame", frame: { type: MsgType.BASE_DIGESTS, payload: new Uint8Array(36) } });
    r.step(json(MsgType.DONE, { session: "old", id: "x", path: "y", bytes: 0, storedBytes: 0 }));
    r.step(json(MsgType.PROGRESS, { session: S }));
    expect(r.state.name).toBe("receiving");
  });
});

