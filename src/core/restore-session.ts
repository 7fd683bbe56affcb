// The restore session as the restoring side sees the receiver (docs/PROTOCOL.md
// §8.6, §8.6a, and its state table in §8.6b): an explicit state machine.
// restore.ts's stream source reads the frames and feeds them in, says when it
// gives the go-ahead and when the target is done; step() is the one place the
// state changes. It does no I/O: it returns the chunk record to write, or the
// message to send, and a frame a state does not allow fails the session.
import { MsgType, decodeMessage, sessionOf, typeName, type RestoreDone, type RestoreGo, type RestoreInfo, type ErrorMsg } from "../protocol/messages.ts";
import type { Frame } from "../protocol/frame.ts";
import { decodeChunkRecord, encodeWant, wants, type ChunkRecord } from "../protocol/chunk-record.ts";
import { TbError, outcome } from "./errors.ts";
import { peerError } from "./handshake.ts";
import { zeroChecksum } from "./zero.ts";
import { MAX_CHUNK_SIZE } from "./limits.ts";

export type RestoreState =
  /** the handshake is done: waiting for RESTORE_INFO with this session */
  | { name: "awaiting-offer" }
  /** the offer is in hand (digests, confirmation, the target compared): nothing asked for yet */
  | { name: "offered"; info: RestoreInfo }
  /**
   * RESTORE is sent: records come, each the next wanted index. `want` (a
   * delta restore) says which come; `next` is the index expected next,
   * `received` how many came, `records` how many will.
   */
  | { name: "receiving"; info: RestoreInfo; want: Uint8Array | null; next: number; received: number; records: number }
  /** every record came (or the receiver ended early): the target is synced and read back */
  | { name: "received"; info: RestoreInfo; received: number }
  /** RESTORE_DONE is sent */
  | { name: "done"; info: RestoreInfo }
  /** the receiver refused or failed, broke the protocol, or this side stopped */
  | { name: "failed"; error: TbError; began: boolean };

export type RestoreEvent =
  /** a frame from the receiver */
  | { type: "frame"; frame: Frame }
  /** the restorer goes ahead; `want`: bit i set = send chunk i (null: every chunk) */
  | { type: "go"; want: Uint8Array | null }
  /** the target is written and checked (ok), or this side stopped (why) */
  | { type: "finished"; ok: true }
  | { type: "finished"; ok: false; message: string };

export type RestoreOutput =
  | { type: "none" }
  /** a checked chunk record, the next one to write */
  | { type: "record"; record: ChunkRecord }
  /** a message to send the receiver */
  | { type: "send"; msg: RestorerMessage };

/** What the restoring side says in a restore session. */
export type RestorerMessage = { type: typeof MsgType.RESTORE; body: RestoreGo } | { type: typeof MsgType.RESTORE_DONE; body: RestoreDone } | { type: typeof MsgType.ERROR; body: ErrorMsg };

const NONE: RestoreOutput = { type: "none" };
const sameVersion = "use the same tbbackup version on both sides";

export class RestoreSession {
  private s: RestoreState = { name: "awaiting-offer" };

  constructor(readonly session: string) {}

  get state(): Readonly<RestoreState> {
    return this.s;
  }
  get failure(): TbError | null {
    return this.s.name === "failed" ? this.s.error : null;
  }
  /** RESTORE_INFO, once it came */
  get info(): RestoreInfo | null {
    return "info" in this.s ? this.s.info : null;
  }
  /** RESTORE was sent: the receiver sends data from then on */
  get began(): boolean {
    return this.s.name === "receiving" || this.s.name === "received" || this.s.name === "done" || (this.s.name === "failed" && this.s.began);
  }

  /** The one place the state changes. */
  step(ev: RestoreEvent): RestoreOutput {
    const s = this.s;
    if (ev.type === "finished") return this.finished(s, ev);
    if (ev.type === "go") {
      if (s.name !== "offered") throw new TbError("INTERNAL", `restore session: a go-ahead in state ${s.name}`, "report this bug");
      const want = ev.want;
      const records = want ? countWanted(want, s.info.chunks) : s.info.chunks;
      this.s = { name: "receiving", info: s.info, want, next: nextWanted(want, s.info.chunks, 0), received: 0, records };
      // nothing to come: the target already holds every chunk
      if (records === 0) this.s = { name: "received", info: s.info, received: 0 };
      return { type: "send", msg: { type: MsgType.RESTORE, body: { session: this.session, go: true, ...(want ? { want: encodeWant(want) } : {}) } } };
    }
    const f = ev.frame;
    switch (s.name) {
      case "awaiting-offer":
        return this.awaitingOffer(f);
      case "receiving":
        return this.receiving(s, f);
      default:
        // (offered, received: no frame is read; done, failed: over)
        return NONE;
    }
  }

  private fail(error: TbError): RestoreOutput {
    this.s = { name: "failed", error, began: this.began };
    return NONE;
  }

  private awaitingOffer(f: Frame): RestoreOutput {
    if (f.type === MsgType.ERROR) return this.fail(restoreError(f.payload));
    if (f.type !== MsgType.RESTORE_INFO) return NONE; // a repeated HELLO_ACK, leftovers of an earlier session
    const info = decodeMessage(MsgType.RESTORE_INFO, f.payload);
    if (info?.session === this.session) {
      // its sizes are the receiver's word: what a receiver of ours never offers is refused before anything is sized by it
      const fault = offerFault(info);
      if (fault) return this.fail(new TbError("PROTOCOL", `the receiver's restore offer ${fault}`, sameVersion));
      this.s = { name: "offered", info };
    } else if (!info && sessionOf(f.payload) === this.session) return this.fail(new TbError("PROTOCOL", "the receiver's restore offer is malformed", sameVersion));
    return NONE;
  }

  private receiving(s: Extract<RestoreState, { name: "receiving" }>, f: Frame): RestoreOutput {
    const { info } = s;
    switch (f.type) {
      case MsgType.DATA:
      case MsgType.ZERO: {
        const rec = decodeChunkRecord(f, info.chunkSize, zeroChecksum);
        if ("error" in rec) return this.fail(rec.code === "CORRUPT" ? new TbError(rec.code, rec.error, "restore again", [], outcome.target()) : new TbError(rec.code, rec.error, sameVersion));
        // with a `want`: only the chunks asked for come, in order
        if (s.want) {
          if (rec.header.index !== s.next) return this.fail(new TbError("CORRUPT", `the receiver sent chunk ${rec.header.index}, not chunk ${s.next} as asked`, "restore again", [], outcome.target()));
          s.next = nextWanted(s.want, info.chunks, s.next + 1);
        }
        // The offer said how many chunks come; after the last one RESTORE_END
        // says nothing new, and need not be waited for: it can be damaged or,
        // as the last frame, wake no reader on a device.
        if (++s.received === s.records) this.s = { name: "received", info, received: s.received };
        return { type: "record", record: rec };
      }
      case MsgType.RESTORE_END: {
        const end = decodeMessage(MsgType.RESTORE_END, f.payload);
        if (!end || end.root !== info.root || end.sha256 !== info.sha256 || end.bytes !== info.size) return this.fail(new TbError("PROTOCOL", "the receiver ended the restore with different totals than it offered", "restore again"));
        // early: restore.ts finds the records missing
        this.s = { name: "received", info, received: s.received };
        return NONE;
      }
      case MsgType.ERROR:
        return this.fail(peerError(f.payload));
      case MsgType.RESTORE_INFO: {
        // The same offer again (an answer to a HELLO repeated on a lossy link) is passed over;
        // a different one for this session while its data comes is not the protocol.
        const again = decodeMessage(MsgType.RESTORE_INFO, f.payload);
        if (again?.session !== this.session || sameOffer(again, info)) return NONE;
        return this.fail(new TbError("PROTOCOL", `the receiver sent ${typeName(f.type)} again, for another backup, while sending the backup`, sameVersion, [], outcome.target()));
      }
      default:
        // late BASE_DIGESTS (§8.6a), a repeated HELLO_ACK, leftovers of an earlier session on a shared device
        return NONE;
    }
  }

  private finished(s: RestoreState, ev: Extract<RestoreEvent, { type: "finished" }>): RestoreOutput {
    if (s.name === "done" || (s.name === "failed" && ev.ok)) return NONE;
    if (ev.ok) {
      if (s.name !== "received") throw new TbError("INTERNAL", `restore session: finished in state ${s.name}`, "report this bug");
      this.s = { name: "done", info: s.info };
      return { type: "send", msg: { type: MsgType.RESTORE_DONE, body: { session: this.session, ok: true } } };
    }
    const began = this.began;
    if (s.name !== "failed") this.s = { name: "failed", error: new TbError("CLOSED", ev.message, ""), began };
    return { type: "send", msg: { type: MsgType.ERROR, body: { session: this.session, code: "CLOSED", message: `restore stopped: ${ev.message}${began ? "" : " (nothing written)"}` } } };
  }
}

/** What in an offer no receiver of ours sends (a chunk size it never stores, a chunk count that does not fit the size), or null. */
function offerFault(info: RestoreInfo): string | null {
  if (info.chunkSize < 1 || info.chunkSize > MAX_CHUNK_SIZE) return `has chunks of ${info.chunkSize} bytes (a backup's are at most ${MAX_CHUNK_SIZE})`;
  if (info.kind === "image" && info.chunks !== Math.ceil(info.size / info.chunkSize)) return `counts ${info.chunks} chunks of ${info.chunkSize} bytes for ${info.size} bytes`;
  return null;
}

function countWanted(want: Uint8Array, chunks: number): number {
  let n = 0;
  for (let i = 0; i < chunks; i++) if (wants(want, i)) n++;
  return n;
}

/** The first index from `from` on that is asked for (every one without a `want`). */
function nextWanted(want: Uint8Array | null, chunks: number, from: number): number {
  while (want && from < chunks && !wants(want, from)) from++;
  return from;
}

/** A receiver's refusal; a choice it could not make comes with candidates to list. */
export function restoreError(payload: Uint8Array): TbError {
  const e = decodeMessage(MsgType.ERROR, payload);
  const err = peerError(payload);
  if (e?.candidates?.length) return new TbError(err.code, err.message, "pass --backup ID with one of the IDs above (at boot: rd.tbbackup.backup=ID)", e.candidates);
  return err;
}

/** Whether two offers describe the same backup (what the data is checked against). */
function sameOffer(a: RestoreInfo, b: RestoreInfo): boolean {
  return a.id === b.id && a.size === b.size && a.chunks === b.chunks && a.chunkSize === b.chunkSize && a.root === b.root && a.sha256 === b.sha256;
}
