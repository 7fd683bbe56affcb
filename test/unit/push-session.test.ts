// The push session's state machine (src/core/push-session.ts, docs/PROTOCOL.md
// §8.2b): each transition, what it asks the caller to do, and the messages a
// state refuses. No I/O: frames go in as values, time as numbers.
import { describe, expect, test } from "bun:test";
import { MsgType, type End } from "../../src/protocol/messages.ts";
import { MAX_DAMAGED_ANSWERS, MIN_END_WAIT_MS, PushSession, STATUS_EVERY_MS, type PushSessionConfig } from "../../src/core/push-session.ts";
import { TbError } from "../../src/core/errors.ts";

const S = "11111111-2222-4333-8444-555555555555";
const frame = (type: number, v: object) => ({ type: "frame" as const, frame: { type, payload: new TextEncoder().encode(JSON.stringify(v)) } });
const done = (extra: object = {}) => frame(MsgType.DONE, { session: S, id: "pc/sda/1", path: "/srv/pc/sda/1", bytes: 4096, storedBytes: 100, root: "r", ...extra });
const resend = (from: number, seq: number, session = S) => frame(MsgType.RESEND, { session, from, seq });
const error = (code: string, session?: string) => frame(MsgType.ERROR, { code, message: "m", ...(session ? { session } : {}) });
const end: End = { chunks: 1, bytes: 4096, root: "r" };
const IDLE = 30_000;

function session(cfg: Partial<PushSessionConfig> = {}): PushSession {
  return new PushSession({ session: S, canAsk: true, canResend: true, idleMs: IDLE, ...cfg }, 0);
}
/** A session whose END is written at time `at`. */
function confirming(cfg: Partial<PushSessionConfig> = {}, at = 0): PushSession {
  const p = session(cfg);
  p.step({ type: "end-writing", end }, at);
  p.step({ type: "end-written" }, at);
  expect(p.state.name).toBe("confirming");
  return p;
}

describe("push session: sending", () => {
  test("a DONE for this session before END is refused with PROTOCOL", () => {
    const p = session();
    p.step(done(), 5);
    expect(p.state.name).toBe("failed");
    expect(p.failure?.code).toBe("PROTOCOL");
    expect(p.failure?.message).toMatch(/DONE before the sender's END/);
  });

  test("a DONE of another session is passed over", () => {
    const p = session();
    p.step(done({ session: "another" }), 5);
    expect(p.state).toEqual({ name: "sending", rewindTo: null });
  });

  test("RESEND when resending was not agreed is refused with PROTOCOL; one of another session is passed over", () => {
    const p = session({ canResend: false });
    p.step(resend(3, 1, "another"), 1);
    expect(p.state.name).toBe("sending");
    p.step(resend(3, 1), 2);
    expect(p.failure?.code).toBe("PROTOCOL");
    expect(p.failure?.message).toMatch(/chunk 3 again, but resending was not agreed/);
  });

  test("RESEND asks for a rewind; a repeated request is not a new one; the rewind is taken once", () => {
    const p = session();
    expect(p.step(resend(7, 1), 1)).toEqual([{ type: "rewind", from: 7 }]);
    expect(p.rewindTo).toBe(7);
    expect(p.step(resend(7, 1), 2)).toEqual([]);
    p.step({ type: "rewound" }, 3);
    expect(p.rewindTo).toBeNull();
    expect(p.step(resend(9, 2), 4)).toEqual([{ type: "rewind", from: 9 }]);
  });

  test("END written while a rewind waits: still sending, the rewind comes first", () => {
    const p = session();
    p.step(resend(2, 1), 1);
    p.step({ type: "end-writing", end }, 2);
    p.step({ type: "end-written" }, 3);
    expect(p.state).toEqual({ name: "sending", rewindTo: 2 });
  });

  test("a silent receiver fails the push only when a write also waited --idle on it", () => {
    const p = session();
    p.step({ type: "quiet" }, IDLE + 1);
    expect(p.state.name).toBe("sending");
    p.writing(IDLE);
    p.step({ type: "quiet" }, 2 * IDLE - 1);
    expect(p.state.name).toBe("sending");
    p.step({ type: "quiet" }, 2 * IDLE);
    expect(p.failure?.code).toBe("TIMEOUT");
    expect(p.failure?.message).toMatch(/has taken no data/);
  });

  test("a damaged frame is passed over with resend, ends the push without", () => {
    const corrupt = { type: "broken" as const, error: new TbError("CORRUPT", "damaged", "") };
    const p = session();
    p.step(corrupt, 1);
    expect(p.state.name).toBe("sending");
    const q = session({ canResend: false });
    q.step(corrupt, 1);
    expect(q.failure?.code).toBe("CORRUPT");
  });

  test("an ERROR of this session (or of none) ends it with the receiver's code; another session's is passed over", () => {
    const p = session();
    p.step(error("NO_SPACE", "another"), 1);
    expect(p.state.name).toBe("sending");
    p.step(error("NO_SPACE"), 2);
    expect(p.failure?.code).toBe("NO_SPACE");
    // over: nothing changes it any more
    p.step(done(), 3);
    expect(p.failure?.code).toBe("NO_SPACE");
  });
});

describe("push session: ending and confirming", () => {
  test("a DONE while END is still being written is the confirmation", () => {
    const p = session();
    p.step({ type: "end-writing", end }, 1);
    p.step(done(), 2);
    expect(p.done?.id).toBe("pc/sda/1");
  });

  test("after END: DONE confirms", () => {
    const p = confirming();
    p.step(frame(MsgType.PROGRESS, { session: S }), 1);
    p.step(done(), 2);
    expect(p.state.name).toBe("done");
  });

  test("a malformed DONE from a receiver without STATUS is refused with PROTOCOL", () => {
    const p = confirming({ canAsk: false });
    p.step(frame(MsgType.DONE, { id: 1 }), 1);
    expect(p.failure?.code).toBe("PROTOCOL");
  });

  test("no DONE: asked again (END and STATUS) every 5 s; PROGRESS does not count as an answer; then not confirmed", () => {
    const p = confirming({ idleMs: 1000 });
    expect(p.step({ type: "quiet" }, STATUS_EVERY_MS - 1)).toEqual([]);
    p.step(frame(MsgType.PROGRESS, { session: S }), STATUS_EVERY_MS - 1);
    expect(p.step({ type: "quiet" }, STATUS_EVERY_MS)).toEqual([{ type: "ask", end }]);
    expect(p.step({ type: "quiet" }, STATUS_EVERY_MS + 1)).toEqual([]);
    p.step({ type: "quiet" }, MIN_END_WAIT_MS - 1);
    expect(p.state.name).toBe("confirming");
    p.step({ type: "quiet" }, MIN_END_WAIT_MS);
    expect(p.failure?.code).toBe("TIMEOUT");
    expect(p.failure?.outcome?.kind).toBe("unconfirmed");
  });

  test("damaged answers: asked again at once, until the third", () => {
    const corrupt = { type: "broken" as const, error: new TbError("CORRUPT", "damaged", "") };
    const p = confirming();
    for (let i = 0; i < MAX_DAMAGED_ANSWERS; i++) expect(p.step(corrupt, i + 1)).toEqual([{ type: "ask", end }]);
    p.step(corrupt, 10);
    expect(p.failure?.code).toBe("CORRUPT");
    expect(p.failure?.outcome?.kind).toBe("unconfirmed");
  });

  test("the end of the stream after END: not confirmed, rather than incomplete", () => {
    const p = confirming();
    p.step({ type: "broken", error: new TbError("CLOSED", "eof", "") }, 1);
    expect(p.failure?.code).toBe("CLOSED");
    expect(p.failure?.outcome?.kind).toBe("unconfirmed");
  });

  test("ERROR NOT_FOUND answers STATUS after END (a restarted receiver); before END it is the receiver's own", () => {
    const p = confirming();
    p.step(error("NOT_FOUND", S), 1);
    expect(p.failure?.code).toBe("CLOSED");
    expect(p.failure?.message).toMatch(/no record of this push/);
    const q = session();
    q.step(error("NOT_FOUND", S), 1);
    expect(q.failure?.code).toBe("NOT_FOUND");
  });

  test("RESEND after END goes back to sending; after END again, DONE confirms", () => {
    const p = confirming();
    expect(p.step(resend(0, 1), 1)).toEqual([{ type: "rewind", from: 0 }]);
    expect(p.state).toEqual({ name: "sending", rewindTo: 0 });
    p.step({ type: "rewound" }, 2);
    p.step({ type: "end-writing", end }, 3);
    p.step({ type: "end-written" }, 4);
    p.step(done(), 5);
    expect(p.state.name).toBe("done");
  });

  test("a DONE that passes a second RESEND on the wire (END went out once) ends the session: the roots are compared after", () => {
    const p = confirming();
    p.step(resend(0, 1), 1);
    p.step({ type: "rewound" }, 2);
    p.step({ type: "end-writing", end }, 3);
    p.step({ type: "end-written" }, 4);
    p.step(resend(0, 2), 5);
    expect(p.state.name).toBe("sending");
    p.step(done(), 6);
    expect(p.state.name).toBe("done");
  });
});
