// The receiver's push-session state machine (src/core/receive-state.ts): the
// moves a session makes, and that any other move is refused as a bug.
import { expect, test } from "bun:test";
import { ReceiveSessionState, canMove, type ReceiveState } from "../../src/core/receive-state.ts";
import { TbError } from "../../src/errors.ts";

const ALL: ReceiveState[] = ["opening", "offering", "checking", "receiving", "resending", "sealing", "stored", "failed", "refused"];

function walk(...moves: ReceiveState[]): ReceiveSessionState {
  const s = new ReceiveSessionState();
  for (const m of moves) s.to(m);
  return s;
}

test("a new backup, a resumed one, a resend and a declined offer are each a path through the states", () => {
  expect(walk("receiving", "sealing", "stored").state).toBe("stored");
  expect(walk("offering", "checking", "receiving", "resending", "resending", "receiving", "sealing", "resending", "receiving", "sealing", "stored").ended).toBe(true);
  // the sender declines the offer: a new backup is started
  expect(walk("offering", "opening", "receiving", "failed").state).toBe("failed");
  // the offer unanswered, or a prefix that fails its check: nothing was written
  expect(walk("offering", "refused").ended).toBe(true);
  expect(walk("offering", "checking", "refused").ended).toBe(true);
});

test("a move the table does not allow throws INTERNAL and leaves the state as it was", () => {
  const s = walk("receiving", "resending");
  let err: unknown = null;
  try {
    s.to("sealing"); // END while a chunk is awaited is dropped, never sealed
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(TbError);
  expect((err as TbError).code).toBe("INTERNAL");
  expect((err as TbError).message).toBe("a push session cannot go from resending to sealing");
  expect(s.state).toBe("resending");
  // nothing leaves an ended session, and nothing goes back to a stored one
  for (const end of ["stored", "failed", "refused"] as const) for (const to of ALL) expect(canMove(end, to)).toBe(false);
  for (const from of ALL) if (from !== "sealing") expect(canMove(from, "stored")).toBe(false);
  // a session that was refused never wrote anything: it cannot have received chunks first
  expect(canMove("receiving", "refused")).toBe(false);
  expect(canMove("opening", "sealing")).toBe(false);
  expect(() => walk("sealing")).toThrow(/cannot go from opening to sealing/);
});
