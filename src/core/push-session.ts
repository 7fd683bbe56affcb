// The push session as the sender sees the receiver (docs/PROTOCOL.md §8.2,
// §8.2a, and its state table in §8.2b): an explicit state machine. push.ts's
// listener feeds it every frame the receiver sends, every failed read and every
// quiet poll; push.ts's sending loop tells it when END goes out and takes the
// rewinds it asks for. step() is the one place the state changes; it does no
// I/O: it returns what the caller is to do (ask the receiver again, wake the
// sending loop for a rewind).
import { MsgType, decodeMessage, sessionOf, typeName, type Done, type End } from "../protocol/messages.ts";
import type { Frame } from "../protocol/frame.ts";
import { TbError, outcome } from "./errors.ts";
import { peerError } from "./handshake.ts";

/** The hint when all was sent but the receiver's confirmation did not come through. */
export const UNCONFIRMED = "the backup is not confirmed: if 'tbbackup list' on the receiver shows it complete, it is; otherwise check the receiver's disk and messages, then push again";

/**
 * After END, with no DONE for this long, ask the receiver for it (STATUS): a
 * damaged or lost DONE is sent again. (The driver wakes no reader for a frame
 * that came last; a fresh one brings both.)
 */
export const STATUS_EVERY_MS = 5000;
/** RESEND requests a sender follows in one push: far more than a receiver's own budget allows, but bounded. */
export const MAX_RESEND_REQUESTS = 1000;
/** Damaged answers to STATUS before giving up on hearing a good one. */
export const MAX_DAMAGED_ANSWERS = 3;
/** After END, wait at least this long for DONE (an answer to STATUS needs time), whatever --idle says. */
export const MIN_END_WAIT_MS = 2 * STATUS_EVERY_MS;

export type PushState =
  /** chunk records are going out; `rewindTo`: a chunk the receiver asked for again, not yet gone back to */
  | { name: "sending"; rewindTo: number | null }
  /** END is being written: as `sending`, but its DONE may already come */
  | { name: "ending"; end: End }
  /** END is written: only DONE or ERROR end the session; a receiver that lists `status` is asked again */
  | { name: "confirming"; end: End; askedAt: number; damagedAnswers: number }
  /** the receiver confirmed the backup (push.ts still compares what DONE says) */
  | { name: "done"; done: Done }
  /** the receiver failed, left, fell silent or broke the protocol */
  | { name: "failed"; error: TbError };

export type PushEvent =
  /** a frame from the receiver */
  | { type: "frame"; frame: Frame }
  /** no frame within a poll interval */
  | { type: "quiet" }
  /** reading failed: a damaged frame (CORRUPT), the end of the stream (CLOSED), ... */
  | { type: "broken"; error: unknown }
  /** the sending loop starts writing END */
  | { type: "end-writing"; end: End }
  /** END is written */
  | { type: "end-written" }
  /** the sending loop went back to `rewindTo` */
  | { type: "rewound" };

export type PushAction =
  /** send END again (it may be the frame that was lost) and STATUS */
  | { type: "ask"; end: End }
  /** the receiver asked for chunk `from` again: wake the sending loop if it waits */
  | { type: "rewind"; from: number };

export interface PushSessionConfig {
  session: string;
  /** the receiver lists `status`: after END it is asked again for a DONE that does not come */
  canAsk: boolean;
  /** both sides list `resend`: the receiver asks for damaged chunks again */
  canResend: boolean;
  /** how long the receiver may stay silent */
  idleMs: number;
}

const sameVersion = "use the same tbbackup version on both sides";

export class PushSession {
  private s: PushState = { name: "sending", rewindTo: null };
  /** when the receiver was last heard from (after END: anything but PROGRESS) */
  private heard: number;
  /** since when a write has waited on the receiver (null: none waits) */
  private writingSince: number | null = null;
  /** RESEND requests followed, and the last one's `seq` (a repeated request is not a new one) */
  private requests = 0;
  private lastRequest = 0;
  /** END has gone out once: a DONE may answer it even while a resend is under way */
  private endBegun = false;

  constructor(
    private readonly cfg: PushSessionConfig,
    now: number,
  ) {
    this.heard = now;
  }

  get state(): Readonly<PushState> {
    return this.s;
  }
  /** the session has ended: DONE came, or it failed */
  get over(): boolean {
    return this.s.name === "done" || this.s.name === "failed";
  }
  get failure(): TbError | null {
    return this.s.name === "failed" ? this.s.error : null;
  }
  get done(): Done | null {
    return this.s.name === "done" ? this.s.done : null;
  }
  /** the chunk to go back to, asked for again by the receiver, or null */
  get rewindTo(): number | null {
    return this.s.name === "sending" ? this.s.rewindTo : null;
  }

  /** A write starts (`now`) or ends (null) waiting on the receiver: one that waits --idle on a silent receiver means it froze. */
  writing(now: number | null): void {
    this.writingSince = now;
  }

  /** The one place the state changes. */
  step(ev: PushEvent, now: number): PushAction[] {
    const s = this.s;
    if (s.name === "done" || s.name === "failed") return [];
    switch (ev.type) {
      case "frame":
        return this.frame(s, ev.frame, now);
      case "quiet":
        return this.quiet(s, now);
      case "broken":
        return this.broken(s, ev.error, now);
      case "end-writing":
        this.endBegun = true;
        // a rewind asked for meanwhile: END still goes out, the rewind follows it
        if (s.name === "sending" && s.rewindTo === null) this.s = { name: "ending", end: ev.end };
        return [];
      case "end-written":
        if (s.name === "ending") {
          this.s = { name: "confirming", end: s.end, askedAt: 0, damagedAnswers: 0 };
          this.heard = now;
        }
        return [];
      case "rewound":
        if (s.name === "sending") this.s = { name: "sending", rewindTo: null };
        return [];
    }
  }

  private fail(error: TbError): PushAction[] {
    this.s = { name: "failed", error };
    return [];
  }

  private ask(s: Extract<PushState, { name: "confirming" }>, now: number): PushAction[] {
    s.askedAt = now;
    return [{ type: "ask", end: s.end }];
  }

  private frame(s: Exclude<PushState, { name: "done" | "failed" }>, f: Frame, now: number): PushAction[] {
    const confirming = s.name === "confirming";
    // PROGRESS (durable so far, or a keepalive) only keeps the silence timer fresh until END
    if (f.type !== MsgType.PROGRESS || !confirming) this.heard = now;
    switch (f.type) {
      case MsgType.RESEND: {
        const r = decodeMessage(MsgType.RESEND, f.payload);
        if (!this.cfg.canResend) {
          if (r?.session === this.cfg.session) return this.fail(new TbError("PROTOCOL", `the receiver asked for chunk ${r.from} again, but resending was not agreed in the handshake`, sameVersion));
          return [];
        }
        // a repeated request (the first came through) is not a new one
        if (!r || r.session !== this.cfg.session || r.seq <= this.lastRequest) return [];
        // a receiver keeps its own budget (3 a chunk, 10 a minute); one that asks without end is not believed
        if (++this.requests > MAX_RESEND_REQUESTS)
          return this.fail(new TbError("CORRUPT", `the receiver asked for damaged chunks again ${MAX_RESEND_REQUESTS} times`, "the link damages too much data; check the cable, then push again (it continues from the last durable point)"));
        this.lastRequest = r.seq;
        // also after END: sending goes back there, then END again
        this.s = { name: "sending", rewindTo: r.from };
        return [{ type: "rewind", from: r.from }];
      }
      case MsgType.DONE: {
        const d = decodeMessage(MsgType.DONE, f.payload);
        // on a shared device, a DONE meant for an earlier push may still be in flight
        // (receivers that know STATUS always name the session)
        if ((this.cfg.canAsk || typeof d?.session === "string") && d?.session !== this.cfg.session) return [];
        if (!d) return this.fail(new TbError("PROTOCOL", "the receiver's DONE is malformed", sameVersion, [], outcome.unconfirmed(UNCONFIRMED)));
        // (once END has gone out, a DONE may pass a later RESEND on the wire: the roots are compared after)
        if (s.name === "sending" && !this.endBegun) return this.fail(new TbError("PROTOCOL", `the receiver sent ${typeName(f.type)} before the sender's END: it confirmed a backup not yet sent whole`, sameVersion, [], outcome.incomplete("backup")));
        this.s = { name: "done", done: d };
        return [];
      }
      case MsgType.ERROR: {
        const session = sessionOf(f.payload);
        if (typeof session === "string" && session !== this.cfg.session) return []; // an earlier session's
        const err = peerError(f.payload);
        // the answer to our STATUS: this receiver (restarted?) does not know the session
        return this.fail(confirming && err.code === "NOT_FOUND" ? new TbError("CLOSED", "the receiver has no record of this push (was it restarted?)", "", [], outcome.unconfirmed(UNCONFIRMED)) : err);
      }
      default:
        // PROGRESS, and leftovers of the handshake or of an earlier session on a shared device
        return [];
    }
  }

  /**
   * Nothing came. While sending, a silent receiver is a failure only when a
   * write has also waited --idle on it; after END, only DONE or ERROR count.
   */
  private quiet(s: Exclude<PushState, { name: "done" | "failed" }>, now: number): PushAction[] {
    const { canAsk, idleMs } = this.cfg;
    const actions = s.name === "confirming" && canAsk && now - Math.max(this.heard, s.askedAt) >= STATUS_EVERY_MS ? this.ask(s, now) : [];
    const limit = s.name === "confirming" && canAsk ? Math.max(idleMs, MIN_END_WAIT_MS) : idleMs;
    if (now - this.heard < limit || (s.name !== "confirming" && (this.writingSince === null || now - this.writingSince < idleMs))) return actions;
    const silent = Math.round(idleMs / 1000);
    return this.fail(
      s.name === "confirming"
        ? new TbError("TIMEOUT", `the receiver did not confirm the backup within ${silent} s of the end`, "", [], outcome.unconfirmed(UNCONFIRMED))
        : new TbError("TIMEOUT", `the receiver has taken no data and said nothing for ${silent} s`, "check the receiver (its disk, its messages), then push again", [], outcome.incomplete("backup")),
    );
  }

  private broken(s: Exclude<PushState, { name: "done" | "failed" }>, e: unknown, now: number): PushAction[] {
    const code = e instanceof TbError ? e.code : null;
    if (s.name !== "confirming") {
      // a damaged frame from a receiver that asks again for what it lacks (it repeats a request that does not come through)
      if (code === "CORRUPT" && this.cfg.canResend) return [];
      return this.fail(e instanceof TbError ? e : new TbError("CLOSED", String(e), "run again"));
    }
    // everything was sent: the receiver may well have stored it, and only its answer was lost
    if (code === "CORRUPT") {
      // the first damaged frame after END is likely the DONE itself; later ones are answers
      if (this.cfg.canAsk && (s.askedAt === 0 || ++s.damagedAnswers < MAX_DAMAGED_ANSWERS)) return this.ask(s, now);
      return this.fail(new TbError("CORRUPT", "the receiver's answer to the end of the backup arrived damaged", "", [], outcome.unconfirmed(UNCONFIRMED)));
    }
    // (all was handed to the transport, not necessarily taken in by the receiver)
    if (code === "CLOSED") return this.fail(new TbError("CLOSED", "the connection closed after all data was sent, before the receiver confirmed the backup", "", [], outcome.unconfirmed(UNCONFIRMED)));
    return this.fail(e instanceof TbError ? e : new TbError("CLOSED", String(e), "run again"));
  }
}
