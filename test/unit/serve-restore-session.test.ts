// The receiver's side of a restore session (src/core/serve-restore-session.ts,
// docs/PROTOCOL.md §8.6c): each transition, the messages it asks to send, and
// the frames each state passes over or ends on. No I/O.
import { describe, expect, test } from "bun:test";
import { MsgType, type HelloAck, type RestoreInfo } from "../../src/protocol/messages.ts";
import { encodeWant } from "../../src/protocol/chunk-record.ts";
import { REOFFER_MS, ServeRestoreSession, type ServeRestoreAction } from "../../src/core/serve-restore-session.ts";
import { TbError } from "../../src/core/errors.ts";

const S = "11111111-2222-4333-8444-555555555555";
const json = (type: number, v: object) => ({ type: "frame" as const, frame: { type, payload: new TextEncoder().encode(JSON.stringify(v)) } });
const CHUNK = 4096;
const ack: HelloAck = { protocol: "tbbackup", proto: 1, tool: "tbbackup/test", session: S, host: { hostname: "store", machineId: "s", productUuid: null }, caps: ["root", "delta-restore"] };
const info: RestoreInfo = { session: S, id: "pc/sda/1", kind: "image", host: { hostname: "pc", machineId: "m", productUuid: null }, disk: { path: "/dev/sda", kind: "block", name: "sda", size: 10 * CHUNK, model: null, serial: null, wwn: null, logicalBlockSize: 512, partitionTable: null }, label: null, date: "2026-01-01T00:00:00Z", size: 10 * CHUNK, chunkSize: CHUNK, chunks: 10, root: "r" };
const withDigests: RestoreInfo = { ...info, digests: true };
const hello = (session = S) => json(MsgType.HELLO, { protocol: "tbbackup", proto: 1, tool: "tbbackup/test", role: "restore", session, host: { hostname: "pc" }, caps: [] });
const go = (v: object = {}) => json(MsgType.RESTORE, { session: S, go: true, ...v });
const errorFrame = (message: string) => json(MsgType.ERROR, { session: S, code: "CLOSED", message });
const broken = (code: TbError["code"], message = "x") => ({ type: "broken" as const, error: new TbError(code, message, "") });
/** The time the events happen at (ms): a test moves it on. */
let clock = 0;
/** The types of the messages (or "digests") the actions send, in order. */
const said = (actions: ServeRestoreAction[]) => actions.map((a) => (a.type === "send" ? a.msg.type : a.type));

function offering(i: RestoreInfo = info): ServeRestoreSession {
  const r = new ServeRestoreSession({ ack, info: i });
  r.step({ type: "offer" }, clock);
  expect(r.state.name).toBe("offering");
  return r;
}
function sending(i: RestoreInfo = info, v: object = {}): ServeRestoreSession {
  const r = offering(i);
  expect(r.step(go(v), clock)).toEqual([]);
  expect(r.state.name).toBe("sending");
  return r;
}
function confirming(): ServeRestoreSession {
  const r = sending();
  r.step({ type: "sent", sent: 10 }, clock);
  expect(r.state.name).toBe("confirming");
  return r;
}

describe("serving a restore: the offer", () => {
  test("the offer is RESTORE_INFO, then the digests when it says they follow", () => {
    const r = new ServeRestoreSession({ ack, info });
    expect(r.state.name).toBe("chosen");
    const out = r.step({ type: "offer" }, clock);
    expect(out).toEqual([{ type: "send", msg: { type: MsgType.RESTORE_INFO, body: info } }]);
    expect(r.state.name).toBe("offering");
    expect(said(new ServeRestoreSession({ ack, info: withDigests }).step({ type: "offer" }, clock))).toEqual([MsgType.RESTORE_INFO, "digests"]);
  });

  test("a repeated HELLO of this session gets HELLO_ACK and the offer again (and the digests), each time; another session's is passed over", () => {
    clock = 10_000;
    const r = offering(withDigests);
    clock += 1000; // the restorer repeats its HELLO every second
    const again = r.step(hello(), clock);
    expect(again).toEqual([{ type: "send", msg: { type: MsgType.HELLO_ACK, body: ack } }, { type: "send", msg: { type: MsgType.RESTORE_INFO, body: withDigests } }, { type: "digests" }]);
    clock += 1000;
    expect(said(r.step(hello(), clock))).toEqual([MsgType.HELLO_ACK, MsgType.RESTORE_INFO, "digests"]);
    expect(r.state).toEqual({ name: "offering", offeredAt: clock });
    clock += 1000;
    expect(said(offering().step(hello(), clock + REOFFER_MS))).toEqual([MsgType.HELLO_ACK, MsgType.RESTORE_INFO]);
    expect(r.step(hello("another"), clock)).toEqual([]);
    expect(r.state.name).toBe("offering");
    // and the go-ahead still starts the records
    r.step(go(), clock);
    expect(r.state).toEqual({ name: "sending", want: null });
  });

  test("HELLOs repeated sooner than REOFFER_MS after the last offer (a run of them queued while the receiver was busy) get one answer", () => {
    clock = 10_000;
    const r = offering(withDigests);
    // the first of the run, read at once after the offer, and its fellows: passed over
    for (let i = 0; i < 5; i++) expect(r.step(hello(), clock + i)).toEqual([]);
    expect(said(r.step(hello(), clock + REOFFER_MS))).toEqual([MsgType.HELLO_ACK, MsgType.RESTORE_INFO, "digests"]);
    expect(r.step(hello(), clock + REOFFER_MS + 1)).toEqual([]);
    expect(said(r.step(hello(), clock + 2 * REOFFER_MS))).toEqual([MsgType.HELLO_ACK, MsgType.RESTORE_INFO, "digests"]);
    expect(r.state.name).toBe("offering");
  });

  test("PROGRESS keepalives, another session's RESTORE and leftovers are passed over", () => {
    const r = offering();
    expect(r.step(json(MsgType.PROGRESS, { session: S }), clock)).toEqual([]);
    expect(r.step(go({ session: "another" }), clock)).toEqual([]);
    expect(r.step(json(MsgType.RESTORE_DONE, { session: S, ok: true }), clock)).toEqual([]);
    expect(r.state.name).toBe("offering");
  });

  test("the go-ahead without `want`: every chunk", () => {
    expect(sending().state).toEqual({ name: "sending", want: null });
  });

  test("a `want` after the digests: only those chunks", () => {
    const bits = new Uint8Array(2);
    bits[0] = 0b101;
    expect(sending(withDigests, { want: encodeWant(bits) }).state).toEqual({ name: "sending", want: bits });
  });

  test("a malformed `want`, or one without digests sent: failed, PROTOCOL, the restorer told, no data", () => {
    const r = offering(withDigests);
    const out = r.step(go({ want: encodeWant(new Uint8Array(64)) }), clock);
    expect(r.state.name).toBe("failed");
    const s = r.state as { error: TbError };
    expect(s.error.code).toBe("PROTOCOL");
    expect(s.error.message).toMatch(/wanted chunks is malformed \(88 characters for 10 chunks\)/);
    expect(out).toEqual([{ type: "send", msg: { type: MsgType.ERROR, body: { session: S, code: "PROTOCOL", message: `receiver: ${s.error.message}` } } }]);
    const n = offering(info);
    n.step(go({ want: encodeWant(new Uint8Array(2)) }), clock);
    expect((n.state as { error: TbError }).error.message).toMatch(/was sent no digests/);
  });

  test("an ERROR before the go-ahead: declined, nothing said back", () => {
    const r = offering();
    expect(r.step(errorFrame("restore stopped: restore cancelled (nothing written)"), clock)).toEqual([]);
    expect(r.state).toEqual({ name: "declined", message: "restore stopped: restore cancelled (nothing written)" });
  });

  test("no go-ahead within --idle: failed, TIMEOUT, the restorer told; the end of the stream: failed, nothing said", () => {
    const r = offering();
    expect(said(r.step(broken("TIMEOUT"), clock))).toEqual([MsgType.ERROR]);
    expect((r.state as { error: TbError }).error.code).toBe("TIMEOUT");
    const c = offering();
    expect(c.step(broken("CLOSED"), clock)).toEqual([]);
    expect(c.state.name).toBe("failed");
  });

  test("records sent before a go-ahead is a bug", () => {
    expect(() => offering().step({ type: "sent", sent: 0 }, clock)).toThrow(/records sent in state offering/);
    expect(() => offering().step({ type: "offer" }, clock)).toThrow(/an offer in state offering/);
  });
});

describe("serving a restore: the records and the result", () => {
  test("all sent: RESTORE_END with the offer's totals (and `sent` after a `want`), then confirming", () => {
    const r = sending();
    expect(r.step({ type: "sent", sent: 10 }, clock)).toEqual([{ type: "send", msg: { type: MsgType.RESTORE_END, body: { chunks: 10, bytes: 10 * CHUNK, root: "r" } } }]);
    expect(r.state).toEqual({ name: "confirming", sent: 10 });
    const d = sending(withDigests, { want: encodeWant(new Uint8Array(2)) });
    expect(d.step({ type: "sent", sent: 0 }, clock)).toEqual([{ type: "send", msg: { type: MsgType.RESTORE_END, body: { chunks: 10, bytes: 10 * CHUNK, root: "r", sent: 0 } } }]);
    const old = sending({ ...info, root: undefined, sha256: "s" });
    expect(old.step({ type: "sent", sent: 10 }, clock)).toEqual([{ type: "send", msg: { type: MsgType.RESTORE_END, body: { chunks: 10, bytes: 10 * CHUNK, sha256: "s" } } }]);
  });

  test("the restorer leaving while the records go out: its ERROR ends the session with its reason, nothing said back; other frames are passed over", () => {
    const r = sending();
    expect(r.step(json(MsgType.PROGRESS, { session: S }), clock)).toEqual([]);
    expect(r.step(hello(), clock)).toEqual([]);
    expect(r.state.name).toBe("sending");
    expect(r.step(errorFrame("restore stopped: the target is read-only"), clock)).toEqual([]);
    const s = r.state as { name: string; error: TbError };
    expect(s.name).toBe("failed");
    expect(s.error.message).toMatch(/the other side reports: restore stopped: the target is read-only/);
    // whatever its code: it said why itself
    const v = sending();
    expect(v.step(json(MsgType.ERROR, { session: S, code: "VERIFY", message: "bad" }), clock)).toEqual([]);
    expect((v.state as { error: TbError }).error.code).toBe("VERIFY");
  });

  test("the stream ending, or a damaged frame, while reading why the restorer left: failed (CORRUPT: the restorer told)", () => {
    const c = sending();
    expect(c.step(broken("CLOSED"), clock)).toEqual([]);
    expect((c.state as { error: TbError }).error.code).toBe("CLOSED");
    const d = sending();
    expect(said(d.step(broken("CORRUPT"), clock))).toEqual([MsgType.ERROR]);
    expect(d.state.name).toBe("failed");
  });

  test("a failure of this side while sending (a damaged stored chunk): failed, the restorer told why", () => {
    const r = sending();
    const out = r.step({ type: "failed", error: new TbError("VERIFY", "backup pc/sda/1: chunk 3 is damaged", "") }, clock);
    expect(out).toEqual([{ type: "send", msg: { type: MsgType.ERROR, body: { session: S, code: "VERIFY", message: "receiver: backup pc/sda/1: chunk 3 is damaged" } } }]);
    expect(r.state.name).toBe("failed");
    // over: nothing more happens
    expect(r.step({ type: "sent", sent: 1 }, clock)).toEqual([]);
    expect(r.state.name).toBe("failed");
  });

  test("after RESTORE_END: PROGRESS keeps waiting, RESTORE_DONE is done", () => {
    const r = confirming();
    expect(r.step(json(MsgType.PROGRESS, { session: S }), clock)).toEqual([]);
    expect(r.state.name).toBe("confirming");
    expect(r.step(json(MsgType.RESTORE_DONE, { session: S, ok: true }), clock)).toEqual([]);
    expect(r.state).toEqual({ name: "done", sent: 10 });
    expect(r.over).toBe(true);
  });

  test("after RESTORE_END: an ERROR, another frame, a timeout or the end: unconfirmed, nothing said back", () => {
    const e = confirming();
    e.step(errorFrame("restore stopped: read-back differs"), clock);
    expect(e.state).toEqual({ name: "unconfirmed", message: "restore stopped: read-back differs" });
    const h = confirming();
    h.step(hello(), clock);
    expect(h.state).toEqual({ name: "unconfirmed", message: "no confirmation" });
    const t = confirming();
    expect(t.step(broken("TIMEOUT", "no answer within 300 s"), clock)).toEqual([]);
    expect(t.state).toEqual({ name: "unconfirmed", message: "no answer within 300 s" });
  });

  test("a state that is over takes nothing more", () => {
    const r = offering();
    r.step(errorFrame("no"), clock);
    expect(r.step(go(), clock)).toEqual([]);
    expect(r.step(hello(), clock)).toEqual([]);
    expect(r.step({ type: "failed", error: new TbError("CLOSED", "x", "") }, clock)).toEqual([]);
    expect(r.state.name).toBe("declined");
  });
});
