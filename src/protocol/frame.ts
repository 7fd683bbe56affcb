// Wire frame codec: pure functions and a byte-at-a-time state machine, no I/O.
// Layout (docs/PROTOCOL.md):
//   0  magic "TBK1" | 4 type u8 | 5 flags u8 | 6 reserved u16 | 8 length u32 LE
//   12 header CRC-32 of bytes 0..11 | 16 payload | 16+length payload CRC-32
// The header has its own CRC so a length is trusted only after it checks out,
// and it is bounded before any allocation.

export const MAGIC = new Uint8Array([0x54, 0x42, 0x4b, 0x31]); // "TBK1"
export const HEADER_SIZE = 16;
export const TRAILER_SIZE = 4;
/** Largest payload accepted from a peer: a compressed 4 MiB chunk plus headroom. */
export const MAX_PAYLOAD = 5 * 1024 * 1024;

export function crc32(data: Uint8Array, seed = 0): number {
  return Bun.hash.crc32(data, seed) >>> 0;
}

/** Writes a frame header for a payload of `length` bytes into `out` at `at`. */
export function writeHeader(out: Uint8Array, at: number, type: number, length: number): void {
  if (length > MAX_PAYLOAD) throw new RangeError(`payload of ${length} bytes exceeds ${MAX_PAYLOAD}`);
  out.set(MAGIC, at);
  const view = new DataView(out.buffer, out.byteOffset + at, HEADER_SIZE);
  view.setUint8(4, type);
  view.setUint8(5, 0);
  view.setUint16(6, 0, true);
  view.setUint32(8, length, true);
  view.setUint32(12, crc32(out.subarray(at, at + 12)), true);
}

/** Encodes one whole frame into a fresh buffer. */
export function encodeFrame(type: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length + TRAILER_SIZE);
  writeHeader(out, 0, type, payload.length);
  out.set(payload, HEADER_SIZE);
  sealFrame(out, payload.length);
  return out;
}

/** Fills in the payload CRC of a frame whose header and payload are already in `frame`. */
export function sealFrame(frame: Uint8Array, payloadLength: number): void {
  const crc = crc32(frame.subarray(HEADER_SIZE, HEADER_SIZE + payloadLength));
  new DataView(frame.buffer, frame.byteOffset).setUint32(HEADER_SIZE + payloadLength, crc, true);
}

export interface Frame {
  type: number;
  payload: Uint8Array;
}

export type DecodeEvent =
  | { kind: "frame"; frame: Frame }
  /** Bytes skipped while looking for a valid header (garbage, or a corrupt header). */
  | { kind: "garbage"; bytes: number }
  /** A header that checked out but whose payload CRC did not: the frame is lost. */
  | { kind: "corrupt"; type: number; length: number };

const enum State {
  Seek,
  Payload,
}

/**
 * Incremental decoder. push() accepts any number of bytes (one at a time is fine)
 * and returns the events they complete. After garbage or a corrupt frame it
 * resynchronises on the next valid header.
 */
export class FrameDecoder {
  private buf: Uint8Array = new Uint8Array(0);
  private state: State = State.Seek;
  private type = 0;
  private length = 0;
  private payload: Uint8Array | null = null;
  private filled = 0;

  /**
   * Where payloads are built (length + 4 bytes for the trailer). A caller that
   * reuses buffers sets this and hands finished payloads' buffers back itself.
   */
  alloc: (n: number) => Uint8Array = (n) => new Uint8Array(n);
  /** takes back a buffer from alloc that holds no frame after all (its payload failed its CRC) */
  free: (buf: Uint8Array) => void = () => {};

  constructor(private readonly maxPayload = MAX_PAYLOAD) {}

  push(data: Uint8Array): DecodeEvent[] {
    const events: DecodeEvent[] = [];
    let input = data;
    while (input.length > 0) {
      if (this.state === State.Payload) {
        input = this.fillPayload(input, events);
        continue;
      }
      // Seek: accumulate just enough bytes to test a header.
      this.buf = concat(this.buf, input);
      input = new Uint8Array(0);
      if (this.scanHeaders(events)) {
        const rest = this.buf;
        this.buf = new Uint8Array(0);
        input = rest;
      }
    }
    return events;
  }

  /** Counts frame headers accepted: tells a caller whether the frame in progress is still the same one. */
  framesStarted = 0;

  /** Inside a frame whose payload has not all arrived. */
  get midFrame(): boolean {
    return this.state === State.Payload;
  }

  /**
   * Gives up on the frame in progress, whose payload stopped coming (its
   * sender died and a lossy link lost the rest): reported as corrupt, and
   * what it held is scanned again for headers, as after a bad checksum, so
   * frames that arrived since (a new sender's HELLO) are not swallowed.
   */
  abandon(): DecodeEvent[] {
    if (this.state !== State.Payload) return [];
    const held = this.payload!.slice(0, this.filled);
    const events: DecodeEvent[] = [{ kind: "corrupt", type: this.type, length: this.length }];
    this.free(this.payload!);
    this.payload = null;
    this.state = State.Seek;
    events.push(...this.push(held));
    return events;
  }

  /** Bytes held that do not yet form a frame (for tests and diagnostics). */
  get pending(): number {
    return this.state === State.Payload ? HEADER_SIZE + this.filled : this.buf.length;
  }

  /** Looks for a valid header in buf; true when one was found (state is then Payload). */
  private scanHeaders(events: DecodeEvent[]): boolean {
    let i = 0;
    const b = this.buf;
    while (i + HEADER_SIZE <= b.length) {
      if (this.headerAt(b, i)) {
        const view = new DataView(b.buffer, b.byteOffset + i, HEADER_SIZE);
        this.flushSkipped(events, i);
        this.type = view.getUint8(4);
        this.length = view.getUint32(8, true);
        this.payload = this.alloc(this.length + TRAILER_SIZE);
        this.filled = 0;
        this.state = State.Payload;
        this.framesStarted++;
        this.buf = b.subarray(i + HEADER_SIZE);
        return true;
      }
      i++;
    }
    // Keep a possible partial header; everything before it is garbage.
    const keepFrom = Math.max(0, b.length - (HEADER_SIZE - 1));
    const firstCandidate = this.firstMagicCandidate(b, keepFrom);
    this.flushSkipped(events, firstCandidate);
    this.buf = b.slice(firstCandidate);
    return false;
  }

  /** A valid header at b[i]: magic, header CRC, and a length within bounds. */
  private headerAt(b: Uint8Array, i: number): boolean {
    if (b[i] !== MAGIC[0] || b[i + 1] !== MAGIC[1] || b[i + 2] !== MAGIC[2] || b[i + 3] !== MAGIC[3]) return false;
    const view = new DataView(b.buffer, b.byteOffset + i, HEADER_SIZE);
    return view.getUint32(12, true) === crc32(b.subarray(i, i + 12)) && view.getUint32(8, true) <= this.maxPayload;
  }

  /**
   * Whether the frame in progress holds what looks like the start of another
   * frame: after a long stall, the sign that its sender died and a new one
   * began (a paused sender's payload simply continues).
   */
  get holdsHeader(): boolean {
    if (this.state !== State.Payload) return false;
    const b = this.payload!.subarray(0, this.filled);
    for (let i = 0; i + HEADER_SIZE <= b.length; i++) if (this.headerAt(b, i)) return true;
    return false;
  }

  private firstMagicCandidate(b: Uint8Array, from: number): number {
    for (let i = from; i < b.length; i++) {
      let ok = true;
      for (let k = 0; k < MAGIC.length && i + k < b.length; k++) {
        if (b[i + k] !== MAGIC[k]) {
          ok = false;
          break;
        }
      }
      if (ok) return i;
    }
    return b.length;
  }

  private flushSkipped(events: DecodeEvent[], n: number): void {
    if (n > 0) events.push({ kind: "garbage", bytes: n });
  }

  private fillPayload(input: Uint8Array, events: DecodeEvent[]): Uint8Array {
    const payload = this.payload!;
    const want = payload.length - this.filled;
    const take = Math.min(want, input.length);
    payload.set(input.subarray(0, take), this.filled);
    this.filled += take;
    if (this.filled === payload.length) {
      const body = payload.subarray(0, this.length);
      const crc = new DataView(payload.buffer, payload.byteOffset + this.length, 4).getUint32(0, true);
      this.payload = null;
      this.state = State.Seek;
      if (crc === crc32(body)) {
        events.push({ kind: "frame", frame: { type: this.type, payload: body } });
      } else {
        // The header was sound but the payload was not: bytes may have been lost
        // or flipped. Report it, then rescan the payload itself for the next
        // header, so a frame that began inside a short payload is not lost.
        events.push({ kind: "corrupt", type: this.type, length: this.length });
        const rescan = concat(payload, input.subarray(take));
        if (rescan !== payload) this.free(payload);
        return rescan;
      }
    }
    return input.subarray(take);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
