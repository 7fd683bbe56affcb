// The states of one push session on the receiver (docs/PROTOCOL.md §8.2c), and
// the moves between them. receive.ts moves a session through them; a move the
// table does not allow is a bug (INTERNAL), never a peer's doing: what a peer
// sends in the wrong state is dropped or refused by receive.ts itself.
import { TbError } from "./errors.ts";

export type ReceiveState =
  /** the HELLO checked out: a partial of this disk to offer, or a new backup */
  | "opening"
  /** a resumable partial was offered (HELLO_ACK with `resume`): waiting for the sender's RESUME */
  | "offering"
  /** the sender continues the partial: its durable prefix is read back and checked */
  | "checking"
  /** chunk records come in order, until END */
  | "receiving"
  /** a damaged chunk was asked for again (RESEND): until it comes, other records and END are dropped */
  | "resending"
  /** END checked: the last checks drain, the roots are compared, the backup is sealed and committed */
  | "sealing"
  /** stored complete under its final name; DONE sent (or being sent: a failure now does not undo it) */
  | "stored"
  /** ended after the backup was started: what arrived is kept as a partial */
  | "failed"
  /** ended before a backup was written to (the offer unanswered, a prefix that fails its check, a store that cannot be written) */
  | "refused";

const MOVES: Record<ReceiveState, readonly ReceiveState[]> = {
  opening: ["offering", "receiving", "refused"],
  // (a sender that declines the offer gets a new backup: back to opening)
  offering: ["checking", "opening", "refused"],
  checking: ["receiving", "refused"],
  receiving: ["resending", "sealing", "failed"],
  resending: ["resending", "receiving", "failed"],
  // a chunk that failed its check turns up when the checks drain: it is asked for again
  sealing: ["resending", "stored", "failed"],
  stored: [],
  failed: [],
  refused: [],
};

/** Whether a session in `from` may move to `to`. */
export function canMove(from: ReceiveState, to: ReceiveState): boolean {
  return MOVES[from].includes(to);
}

/** One push session's state; every move is checked against the table above. */
export class ReceiveSessionState {
  private current: ReceiveState = "opening";

  get state(): ReceiveState {
    return this.current;
  }

  is(...states: ReceiveState[]): boolean {
    return states.includes(this.current);
  }

  to(next: ReceiveState): void {
    if (!canMove(this.current, next)) throw new TbError("INTERNAL", `a push session cannot go from ${this.current} to ${next}`, "report this bug");
    this.current = next;
  }

  /** Whether it has ended (stored, failed or refused). */
  get ended(): boolean {
    return MOVES[this.current].length === 0;
  }
}
