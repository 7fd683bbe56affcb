// A restore session as the receiver serves it (docs/PROTOCOL.md §8.6, §8.6a,
// and its state table in §8.6c): an explicit state machine. serve-restore.ts
// chooses and opens the backup, then feeds it every frame the restoring side
// sends, every failed read, and says when the records are all written.
// step() is the one place the state changes; it does no I/O: it returns what
// the caller is to do (send a message, send the digests); while it is
// "sending", the caller sends the records asked for. A frame a state does not
// expect is passed over or ends the session.
import { MsgType, decodeMessage, sessionOf, type ErrorMsg, type HelloAck, type RestoreEnd, type RestoreInfo } from "../protocol/messages.ts";
import type { Frame } from "../protocol/frame.ts";
import { decodeWant } from "../protocol/chunk-record.ts";
import { TbError } from "./errors.ts";
import { peerError } from "./handshake.ts";

export type ServeRestoreState =
  /** the backup is chosen and open, HELLO_ACK went out: nothing offered yet */
  | { name: "chosen" }
  /** RESTORE_INFO (and the digests) went out, last at `offeredAt`: waiting for the go-ahead; a repeated HELLO gets the offer again */
  | { name: "offering"; offeredAt: number }
  /** RESTORE came: the records go out (`want`: only the chunks whose bit is set; null: every one) */
  | { name: "sending"; want: Uint8Array | null }
  /** RESTORE_END went out: waiting for the restoring side's result (`sent`: records sent) */
  | { name: "confirming"; sent: number }
  /** RESTORE_DONE came */
  | { name: "done"; sent: number }
  /** the restoring side declined the offer (its ERROR before the go-ahead): nothing was sent */
  | { name: "declined"; message: string }
  /** after RESTORE_END, anything but RESTORE_DONE (an ERROR, another frame, a timeout, the end of the stream) */
  | { name: "unconfirmed"; message: string }
  /** before RESTORE_END: a malformed go-ahead, a silent or departed restorer, a damaged stored chunk, a failed write */
  | { name: "failed"; error: TbError };

export type ServeRestoreEvent =
  /** make the offer (once, from chosen) */
  | { type: "offer" }
  /** a frame from the restoring side */
  | { type: "frame"; frame: Frame }
  /** reading failed: nothing within --idle (TIMEOUT), the end of the stream (CLOSED), a damaged frame (CORRUPT) */
  | { type: "broken"; error: TbError }
  /** every record asked for is written (`sent` of them) */
  | { type: "sent"; sent: number }
  /** this side failed (a damaged stored chunk, a write that failed) */
  | { type: "failed"; error: TbError };

/** What the receiver says in a restore session. */
export type ServerMessage =
  | { type: typeof MsgType.HELLO_ACK; body: HelloAck }
  | { type: typeof MsgType.RESTORE_INFO; body: RestoreInfo }
  | { type: typeof MsgType.RESTORE_END; body: RestoreEnd }
  | { type: typeof MsgType.ERROR; body: ErrorMsg };

export type ServeRestoreAction =
  /** send this message (an ERROR is sent on a best-effort basis: the session is over anyway) */
  | { type: "send"; msg: ServerMessage }
  /** send the backup's per-chunk SHA-256s (BASE_DIGESTS, §8.6a), from the first */
  | { type: "digests" };

export interface ServeRestoreConfig {
  /** the HELLO_ACK that answered the HELLO (sent again with the offer to a repeated HELLO) */
  ack: HelloAck;
  /** the offer; its `digests: true` means the digests follow it */
  info: RestoreInfo;
}

const sameVersion = "use the same tbbackup version on both sides";

/**
 * A HELLO repeated sooner than this after the last offer is passed over. The
 * restorer repeats it every second until a HELLO_ACK comes; a run of them
 * read at once were queued while this receiver was busy (at --max-sessions,
 * say), and one answer, with the digests, does for all of them.
 */
export const REOFFER_MS = 500;

export class ServeRestoreSession {
  private s: ServeRestoreState = { name: "chosen" };

  constructor(private readonly cfg: ServeRestoreConfig) {}

  get state(): Readonly<ServeRestoreState> {
    return this.s;
  }
  get session(): string {
    return this.cfg.info.session;
  }
  /** the session has ended (done, declined, unconfirmed or failed) */
  get over(): boolean {
    return this.s.name === "done" || this.s.name === "declined" || this.s.name === "unconfirmed" || this.s.name === "failed";
  }

  /** The one place the state changes (`now`: the time in ms, for a repeated HELLO). */
  step(ev: ServeRestoreEvent, now: number): ServeRestoreAction[] {
    const s = this.s;
    if (this.over) return [];
    switch (ev.type) {
      case "offer":
        if (s.name !== "chosen") throw new TbError("INTERNAL", `serving a restore: an offer in state ${s.name}`, "report this bug");
        this.s = { name: "offering", offeredAt: now };
        return this.offer();
      case "sent":
        if (s.name !== "sending") throw new TbError("INTERNAL", `serving a restore: records sent in state ${s.name}`, "report this bug");
        return this.sent(s, ev.sent);
      case "failed":
        return this.fail(ev.error);
      case "broken":
        if (s.name === "confirming") return this.unconfirmed(ev.error.message);
        return this.fail(ev.error);
      case "frame":
        switch (s.name) {
          case "offering":
            return this.offering(s, ev.frame, now);
          case "sending":
            return this.sending(ev.frame);
          case "confirming":
            return this.confirming(s, ev.frame);
          default:
            // (chosen: no frame is read before the offer)
            return [];
        }
    }
  }

  /** RESTORE_INFO, and the digests when the offer says they follow. */
  private offer(): ServeRestoreAction[] {
    const { info } = this.cfg;
    return [{ type: "send", msg: { type: MsgType.RESTORE_INFO, body: info } }, ...(info.digests ? [{ type: "digests" } as const] : [])];
  }

  /** Ends the session before RESTORE_END; the restoring side hears why unless it left (`CLOSED`, `PEER`) or said why itself (`theirs`). */
  private fail(error: TbError, theirs = false): ServeRestoreAction[] {
    this.s = { name: "failed", error };
    if (theirs || error.code === "CLOSED" || error.code === "PEER") return [];
    return [{ type: "send", msg: { type: MsgType.ERROR, body: { session: this.session, code: error.code, message: `receiver: ${error.message}` } } }];
  }

  private unconfirmed(message: string): ServeRestoreAction[] {
    this.s = { name: "unconfirmed", message };
    return [];
  }

  private offering(s: Extract<ServeRestoreState, { name: "offering" }>, f: Frame, now: number): ServeRestoreAction[] {
    const { info } = this.cfg;
    switch (f.type) {
      case MsgType.RESTORE: {
        const go = decodeMessage(MsgType.RESTORE, f.payload);
        if (go?.session !== this.session) return [];
        let want: Uint8Array | null = null;
        if (go.want !== undefined) {
          want = info.digests ? decodeWant(go.want, info.chunks) : null;
          if (!want) return this.fail(new TbError("PROTOCOL", info.digests ? `the restoring side's list of wanted chunks is malformed (${go.want.length} characters for ${info.chunks} chunks)` : "the restoring side asked for some chunks only, but was sent no digests", sameVersion));
        }
        // (the caller, seeing "sending", sends the records asked for)
        this.s = { name: "sending", want };
        return [];
      }
      case MsgType.ERROR:
        // the restoring side declined (a person said no, a target too small)
        this.s = { name: "declined", message: decodeMessage(MsgType.ERROR, f.payload)?.message ?? "cancelled" };
        return [];
      case MsgType.HELLO:
        // The restorer repeats its HELLO until a HELLO_ACK comes: the first may
        // have been lost (a lossy link), and the offer after it with it (the
        // restorer reads no offer before its HELLO_ACK). Answer it all again;
        // the restorer passes over a second copy that does arrive.
        if (sessionOf(f.payload) !== this.session || now - s.offeredAt < REOFFER_MS) return [];
        s.offeredAt = now;
        return [{ type: "send", msg: { type: MsgType.HELLO_ACK, body: this.cfg.ack } }, ...this.offer()];
      default:
        // PROGRESS keepalives (a delta restorer reads its target), leftovers of an earlier session
        return [];
    }
  }

  /** Frames read while sending: only once the restoring side is leaving, to learn why. */
  private sending(f: Frame): ServeRestoreAction[] {
    if (f.type === MsgType.ERROR) return this.fail(peerError(f.payload), true);
    return [];
  }

  private sent(s: Extract<ServeRestoreState, { name: "sending" }>, sent: number): ServeRestoreAction[] {
    const { info } = this.cfg;
    this.s = { name: "confirming", sent };
    const check = info.root ? { root: info.root } : { sha256: info.sha256 };
    return [{ type: "send", msg: { type: MsgType.RESTORE_END, body: { chunks: info.chunks, bytes: info.size, ...check, ...(s.want ? { sent } : {}) } } }];
  }

  /** After RESTORE_END: the restoring side writes, syncs and reads back, saying PROGRESS meanwhile; then one word. */
  private confirming(s: Extract<ServeRestoreState, { name: "confirming" }>, f: Frame): ServeRestoreAction[] {
    if (f.type === MsgType.PROGRESS) return [];
    if (f.type === MsgType.RESTORE_DONE) {
      this.s = { name: "done", sent: s.sent };
      return [];
    }
    return this.unconfirmed((f.type === MsgType.ERROR ? decodeMessage(MsgType.ERROR, f.payload)?.message : undefined) ?? "no confirmation");
  }
}
