// A framed, checksummed message channel over a Conn: the I/O half of the
// protocol. Reads continuously (a read is always pending), decodes frames,
// and hands them out one at a time with deadlines.
import { FrameDecoder, encodeFrame, type Frame } from "../protocol/frame.ts";
import { MsgType, encodeJson, typeName, type JsonMsgType, type Messages } from "../protocol/messages.ts";
import type { Conn } from "../transport/index.ts";
import type { PayloadPool } from "../util/buffer-pool.ts";
import { TbError, outcome } from "./errors.ts";
import { Signal } from "../util/signal.ts";

const MAX_QUEUED_FRAMES = 32;
/** how long a frame may stay unfinished while we read (a whole frame takes well under a second) */
const FRAME_STALL_MS = 10_000;

/** A frame whose payload failed its CRC: its type is known (the header checked out), its content is not. */
export class CorruptFrame extends TbError {
  constructor(readonly frameType: number, description: string) {
    super("CORRUPT", `a corrupt ${typeName(frameType)} frame arrived from ${description} (checksum mismatch)`, "the data was damaged in transit; check the cable and run the command again");
  }
}

export class Channel {
  /** frames in arrival order; a damaged frame is queued as its error, reported once */
  private frames: (Frame | TbError)[] = [];
  private failure: TbError | null = null;
  private ended = false;
  private wake: (() => void) | null = null;
  private wakePump: (() => void) | null = null;
  readonly decoder = new FrameDecoder();
  garbageBytes = 0;
  private pool: PayloadPool | null = null;
  /** the last write queued: the next one starts when it is done */
  private writing: Promise<void> = Promise.resolve();
  /** fired when the peer stops listening (an ERROR arrives or the stream ends) */
  private leaving = new Set<Signal>();

  constructor(readonly conn: Conn) {
    void this.pump();
  }

  private async pump(): Promise<void> {
    // Time spent reading while one frame stayed unfinished (lossy links only).
    let stalledMs = 0;
    try {
      for (;;) {
        while (this.frames.length >= MAX_QUEUED_FRAMES) await new Promise<void>((r) => (this.wakePump = r));
        const inFrame = this.decoder.midFrame ? this.decoder.framesStarted : -1;
        const readFrom = Date.now();
        const data = await this.conn.read();
        if (data === null) break;
        const events = this.decoder.push(data);
        this.conn.release?.(data); // the decoder copies what it keeps
        // A frame whose payload stops coming (its sender died, and the device
        // lost its CLOSE) would swallow what follows, a new sender's HELLOs
        // included: once it has stayed unfinished for FRAME_STALL_MS of reading
        // and holds the start of another frame, give up on it. (A sender or
        // receiver that was only paused just continues the payload.)
        stalledMs = inFrame >= 0 && this.decoder.midFrame && this.decoder.framesStarted === inFrame ? stalledMs + (Date.now() - readFrom) : 0;
        if (this.conn.lossy && stalledMs >= FRAME_STALL_MS && this.decoder.holdsHeader) {
          events.push(...this.decoder.abandon());
          stalledMs = 0;
        }
        for (const ev of events) {
          if (ev.kind === "frame") {
            this.frames.push(ev.frame);
            if (ev.frame.type === MsgType.ERROR) this.markLeft();
          }
          else if (ev.kind === "garbage") this.garbageBytes += ev.bytes;
          else {
            this.frames.push(new CorruptFrame(ev.type, this.conn.description));
          }
        }
        this.notify();
      }
    } catch (e) {
      this.failure ??= e instanceof TbError ? e : new TbError("CLOSED", String(e), "run the command again");
    }
    this.ended = true;
    this.markLeft();
    this.notify();
  }

  private markLeft(): void {
    for (const s of this.leaving) s.fire();
    this.leaving.clear();
  }

  /**
   * A signal that fires once the peer has stopped listening: it sent ERROR,
   * or the stream ended. On a device, writes go on succeeding after the peer
   * left (only a reader sees it go): a long send races it (Signal.race), then
   * recv() says why. Call the returned `forget` when done with it.
   */
  peerLeaving(): { left: Signal; forget: () => void } {
    const left = new Signal();
    if (this.ended || this.frames.some((f) => !(f instanceof TbError) && f.type === MsgType.ERROR)) left.fire();
    else this.leaving.add(left);
    return { left, forget: () => this.leaving.delete(left) };
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /**
   * The next frame. Throws CORRUPT after a damaged frame, CLOSED at end of
   * stream, TIMEOUT when nothing arrives within `timeoutMs`.
   */
  async recv(timeoutMs: number, waitingFor = "the peer"): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.frames.shift();
      if (f) {
        const p = this.wakePump;
        this.wakePump = null;
        p?.();
        if (f instanceof TbError) throw f;
        return f;
      }
      if (this.failure) throw this.failure;
      if (this.ended)
        throw new TbError("CLOSED", `the other side closed the stream ${this.conn.description} while waiting for ${waitingFor}`, "check the other side's message and run again", [], outcome.incomplete("transfer"));
      const left = deadline - Date.now();
      if (left <= 0) throw new TbError("TIMEOUT", `no answer from ${waitingFor} on ${this.conn.description} within ${Math.round(timeoutMs / 1000)} s`, "check that tbbackup runs on the other side and the cable is plugged in");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /**
   * Builds incoming payloads in `pool`'s buffers (null: fresh ones). Whoever
   * is done with a frame's payload hands it back with release().
   */
  usePool(pool: PayloadPool | null): void {
    this.pool = pool;
    this.decoder.alloc = pool ? (n) => pool.take(n) : (n) => new Uint8Array(n);
    this.decoder.free = pool ? (b) => pool.give(b) : () => {};
  }

  release(buf: ArrayBufferLike | Uint8Array | undefined): void {
    this.pool?.give(buf);
  }

  get isEnded(): boolean {
    return this.ended && this.frames.length === 0;
  }

  send(type: number, payload: Uint8Array): Promise<void> {
    return this.sendFrame(encodeFrame(type, payload));
  }

  sendJson<T extends JsonMsgType>(type: T, value: Messages[T]): Promise<void> {
    return this.send(type, encodeJson(value));
  }

  /**
   * Writes one whole frame after those already being written: a device takes
   * a write in parts (as its ring has room), and a keepalive sent meanwhile
   * must not land in the middle of another frame.
   */
  sendFrame(frame: Uint8Array): Promise<void> {
    const p = this.writing.then(() => this.conn.write(frame));
    this.writing = p.catch(() => {});
    return p;
  }

  /**
   * Reads and discards until the peer closes or `ms` pass, so a peer still
   * writing is not reset before it has read our last message (an ERROR).
   */
  async drain(ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      try {
        await this.recv(end - Date.now(), "the peer to hang up");
      } catch {
        if (this.ended) return;
        if (Date.now() >= end) return;
      }
    }
  }

  close(): Promise<void> {
    return this.conn.close();
  }
}
