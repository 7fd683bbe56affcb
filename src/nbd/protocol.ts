// The NBD wire protocol, server side (fixed newstyle handshake, simple and
// structured replies): constants, reply encoders and a pull decoder for what
// a client sends. Pure: no sockets. Spec: the NBD protocol document
// (github.com/NetworkBlockDevice/nbd, doc/proto.md); README "Opening a backup
// without restoring it" says which parts tbbackup serves.

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** handshake flags (server) */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** client flags */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** transmission flags */
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;

export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

export const ReplyType = { NONE: 0, OFFSET_DATA: 1, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 } as const;
/** command flag of NBD_CMD_BLOCK_STATUS: one extent is enough */
export const CMD_FLAG_REQ_ONE = 1 << 3;
/** base:allocation states */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
export const BASE_ALLOCATION = "base:allocation";
export const REPLY_FLAG_DONE = 1;

/** The longest option a client may send (an export name is at most 4096 bytes, plus info requests). */
export const MAX_OPTION_LENGTH = 16 * 1024;
/** The longest read (and write payload) we accept: larger reads get EINVAL. */
export const MAX_REQUEST_LENGTH = 32 * 1024 * 1024;
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;

/** What the server sends first: magic, IHAVEOPT, handshake flags. */
export function greeting(): Uint8Array {
  const b = new Uint8Array(18);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, NBDMAGIC);
  v.setBigUint64(8, IHAVEOPT);
  v.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  return b;
}

export function optionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(20 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, OPT_REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, 20);
  return b;
}

/** An error reply with a message for a human. */
export function optionError(option: number, type: number, message: string): Uint8Array {
  return optionReply(option, type, new TextEncoder().encode(message.slice(0, 1000)));
}

export function infoExport(size: number, flags: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint16(0, Info.EXPORT);
  v.setBigUint64(2, BigInt(size));
  v.setUint16(10, flags);
  return b;
}

export function infoBlockSize(min: number, preferred: number, max: number): Uint8Array {
  const b = new Uint8Array(14);
  const v = new DataView(b.buffer);
  v.setUint16(0, Info.BLOCK_SIZE);
  v.setUint32(2, min);
  v.setUint32(6, preferred);
  v.setUint32(10, max);
  return b;
}

export function infoText(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Uint8Array {
  const t = new TextEncoder().encode(text);
  const b = new Uint8Array(2 + t.length);
  new DataView(b.buffer).setUint16(0, type);
  b.set(t, 2);
  return b;
}

/** NBD_REP_SERVER's data: the export name's length and the name, then a description. */
export function serverEntry(name: string, description: string): Uint8Array {
  const n = new TextEncoder().encode(name);
  const d = new TextEncoder().encode(description);
  const b = new Uint8Array(4 + n.length + d.length);
  new DataView(b.buffer).setUint32(0, n.length);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}

/** The answer to NBD_OPT_EXPORT_NAME: size and flags (and 124 zeros unless the client asked for none). */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(noZeroes ? 10 : 134);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(size));
  v.setUint16(8, flags);
  return b;
}

export function simpleReply(error: number, handle: bigint): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  v.setBigUint64(8, handle);
  return b;
}

/** A structured reply chunk's header (the payload, `length` bytes, follows). */
export function structuredHeader(flags: number, type: number, handle: bigint, length: number): Uint8Array {
  const b = new Uint8Array(STRUCTURED_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  v.setBigUint64(8, handle);
  v.setUint32(16, length);
  return b;
}

/** A whole NBD_REPLY_TYPE_ERROR chunk, marked done. */
export function structuredError(handle: bigint, error: number, message: string): Uint8Array {
  const m = new TextEncoder().encode(message.slice(0, 1000));
  const h = structuredHeader(REPLY_FLAG_DONE, ReplyType.ERROR, handle, 6 + m.length);
  const b = new Uint8Array(h.length + 6 + m.length);
  b.set(h);
  const v = new DataView(b.buffer);
  v.setUint32(h.length, error);
  v.setUint16(h.length + 4, m.length);
  b.set(m, h.length + 6);
  return b;
}

/** The header of an NBD_REPLY_TYPE_OFFSET_DATA chunk with its offset (the data follows). */
export function offsetDataHeader(handle: bigint, offset: number, dataLength: number, done: boolean): Uint8Array {
  const b = new Uint8Array(STRUCTURED_HEADER_SIZE + 8);
  b.set(structuredHeader(done ? REPLY_FLAG_DONE : 0, ReplyType.OFFSET_DATA, handle, 8 + dataLength));
  new DataView(b.buffer).setBigUint64(STRUCTURED_HEADER_SIZE, BigInt(offset));
  return b;
}

/** NBD_REP_META_CONTEXT's data: the context's id and name. */
export function metaContext(id: number, name: string): Uint8Array {
  const n = new TextEncoder().encode(name);
  const b = new Uint8Array(4 + n.length);
  new DataView(b.buffer).setUint32(0, id);
  b.set(n, 4);
  return b;
}

/** A whole NBD_REPLY_TYPE_BLOCK_STATUS chunk, marked done: the context id, then (length, flags) pairs. */
export function blockStatusReply(handle: bigint, contextId: number, extents: readonly { length: number; flags: number }[]): Uint8Array {
  const len = 4 + 8 * extents.length;
  const b = new Uint8Array(STRUCTURED_HEADER_SIZE + len);
  b.set(structuredHeader(REPLY_FLAG_DONE, ReplyType.BLOCK_STATUS, handle, len));
  const v = new DataView(b.buffer);
  v.setUint32(STRUCTURED_HEADER_SIZE, contextId);
  extents.forEach((e, i) => {
    v.setUint32(STRUCTURED_HEADER_SIZE + 4 + 8 * i, e.length);
    v.setUint32(STRUCTURED_HEADER_SIZE + 8 + 8 * i, e.flags);
  });
  return b;
}

/** Parses NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT data; null when it is malformed. */
export function parseMetaContext(data: Uint8Array): { name: string; queries: string[] } | null {
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  const dec = new TextDecoder();
  if (data.length < 8) return null;
  const n = v.getUint32(0);
  if (n > data.length - 8) return null;
  const name = dec.decode(data.subarray(4, 4 + n));
  let at = 4 + n;
  const count = v.getUint32(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return null;
    const q = v.getUint32(at);
    at += 4;
    if (q > data.length - at) return null;
    queries.push(dec.decode(data.subarray(at, at + q)));
    at += q;
  }
  return at === data.length ? { name, queries } : null;
}

export interface Request {
  flags: number;
  type: number;
  handle: bigint;
  /** a bigint: a client may claim any 64-bit offset */
  offset: bigint;
  length: number;
}

/** Parses NBD_OPT_GO / NBD_OPT_INFO data; null when it is malformed. */
export function parseGo(data: Uint8Array): { name: string; infos: number[] } | null {
  if (data.length < 6) return null;
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  const n = v.getUint32(0);
  if (n > data.length - 6) return null;
  const count = v.getUint16(4 + n);
  if (data.length !== 4 + n + 2 + 2 * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + n + 2 * i));
  return { name: new TextDecoder().decode(data.subarray(4, 4 + n)), infos };
}

export type ClientEvent =
  | { kind: "flags"; flags: number }
  | { kind: "option"; option: number; data: Uint8Array }
  /** an option longer than MAX_OPTION_LENGTH: not read; the connection must end */
  | { kind: "optionTooLong"; option: number; length: number }
  | { kind: "request"; request: Request }
  /** a write's payload, skipped without keeping it */
  | { kind: "payloadSkipped"; request: Request }
  /** a magic number that is not there: the connection must end */
  | { kind: "garbage"; what: string };

type State =
  | { s: "flags" }
  | { s: "optionHeader" }
  | { s: "optionData"; option: number; length: number }
  | { s: "request" }
  | { s: "skip"; left: number; request: Request }
  | { s: "dead" };

/**
 * What a client sends, as a pull decoder: `push` bytes in any pieces, then
 * `next()` hands out one event at a time. The server calls `transmission()`
 * once it has accepted NBD_OPT_GO / EXPORT_NAME, before asking for the next
 * event. Every length is checked before anything is allocated for it.
 */
export class ClientDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private state: State = { s: "flags" };

  push(bytes: Uint8Array): void {
    if (this.state.s === "dead" || bytes.length === 0) return;
    this.chunks.push(bytes);
    this.buffered += bytes.length;
  }

  /** bytes received and not yet decoded */
  get pending(): number {
    return this.buffered;
  }

  transmission(): void {
    this.state = { s: "request" };
  }

  next(): ClientEvent | null {
    for (;;) {
      const st = this.state;
      switch (st.s) {
        case "dead":
          return null;
        case "flags": {
          const b = this.take(4);
          if (!b) return null;
          this.state = { s: "optionHeader" };
          return { kind: "flags", flags: view(b).getUint32(0) };
        }
        case "optionHeader": {
          const b = this.take(16);
          if (!b) return null;
          const v = view(b);
          if (v.getBigUint64(0) !== IHAVEOPT) return this.die("an option without the IHAVEOPT magic");
          const option = v.getUint32(8);
          const length = v.getUint32(12);
          if (length > MAX_OPTION_LENGTH) {
            this.state = { s: "dead" };
            return { kind: "optionTooLong", option, length };
          }
          this.state = { s: "optionData", option, length };
          continue;
        }
        case "optionData": {
          const b = this.take(st.length);
          if (!b) return null;
          this.state = { s: "optionHeader" };
          return { kind: "option", option: st.option, data: b };
        }
        case "request": {
          const b = this.take(REQUEST_SIZE);
          if (!b) return null;
          const v = view(b);
          if (v.getUint32(0) !== REQUEST_MAGIC) return this.die("a request without the request magic");
          const request: Request = { flags: v.getUint16(4), type: v.getUint16(6), handle: v.getBigUint64(8), offset: v.getBigUint64(16), length: v.getUint32(24) };
          if (request.type === Cmd.WRITE) {
            // its payload follows; it is refused anyway, so it is skipped (a huge claim ends the connection)
            if (request.length > MAX_REQUEST_LENGTH) return this.die(`a write of ${request.length} bytes`);
            this.state = { s: "skip", left: request.length, request };
            continue;
          }
          return { kind: "request", request };
        }
        case "skip": {
          st.left -= this.drop(st.left);
          if (st.left > 0) return null;
          this.state = { s: "request" };
          return { kind: "payloadSkipped", request: st.request };
        }
      }
    }
  }

  private die(what: string): ClientEvent {
    this.state = { s: "dead" };
    this.chunks = [];
    this.buffered = 0;
    return { kind: "garbage", what };
  }

  /** Exactly n bytes from the front, or null (nothing consumed) when fewer are buffered. */
  private take(n: number): Uint8Array | null {
    if (this.buffered < n) return null;
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      out.set(c.subarray(0, k), at);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out;
  }

  /** Drops up to n bytes from the front; returns how many. */
  private drop(n: number): number {
    let dropped = 0;
    while (dropped < n && this.chunks.length) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - dropped);
      dropped += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= dropped;
    return dropped;
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.length);
}
