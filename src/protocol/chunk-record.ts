// Chunk records, DATA (0x10) and ZERO (0x11): how a chunk travels (push, and
// a receiver serving a restore) and the one place that builds and checks
// them (docs/PROTOCOL.md §6). Pure: no I/O.
import { HEADER_SIZE, TRAILER_SIZE, encodeFrame, sealFrame, writeHeader, type Frame } from "./frame.ts";
import { CHUNK_HEADER_SIZE, MsgType, readChunkHeader, writeChunkHeader, type ChunkHeader } from "./messages.ts";
import { frameHasChecksum } from "../store/seekable.ts";

export { CHUNK_HEADER_SIZE, readChunkHeader, writeChunkHeader, type ChunkHeader };

/** Where a DATA frame's zstd bytes start: build the frame around them in place. */
export const DATA_PAYLOAD_AT = HEADER_SIZE + CHUNK_HEADER_SIZE;

/** Room for a whole DATA frame whose zstd frame has at most `zstdBytes` bytes. */
export function dataFrameSize(zstdBytes: number): number {
  return DATA_PAYLOAD_AT + zstdBytes + TRAILER_SIZE;
}

/**
 * Seals a DATA frame in `out` whose zstd frame (`zstdLength` bytes) already
 * sits at DATA_PAYLOAD_AT; returns the frame's length.
 */
export function sealDataFrame(out: Uint8Array, h: ChunkHeader, zstdLength: number): number {
  const payloadLength = CHUNK_HEADER_SIZE + zstdLength;
  writeHeader(out, 0, MsgType.DATA, payloadLength);
  writeChunkHeader(out, HEADER_SIZE, h);
  sealFrame(out, payloadLength);
  return HEADER_SIZE + payloadLength + TRAILER_SIZE;
}

/** A record that is its header alone (ZERO, SAME): the payload, for tests and tools that frame it themselves. */
export function headerOnlyPayload(h: ChunkHeader): Uint8Array {
  const payload = new Uint8Array(CHUNK_HEADER_SIZE);
  writeChunkHeader(payload, 0, h);
  return payload;
}

/** A complete ZERO frame: the chunk's header and nothing else. */
export function zeroRecordFrame(h: ChunkHeader): Uint8Array {
  return encodeFrame(MsgType.ZERO, headerOnlyPayload(h));
}

export type ChunkRecord =
  | { kind: "data"; header: ChunkHeader; /** the zstd frame, inside the frame's payload buffer */ zstd: Uint8Array }
  | { kind: "zero"; header: ChunkHeader };

export type ChunkRecordError = { error: string; code: "PROTOCOL" | "CORRUPT" };

/**
 * Checks a DATA or ZERO frame on its own: a header that fits, a raw length of
 * 1..chunkSize, a ZERO record with nothing after its header and the zero
 * checksum for its length, a DATA record holding a zstd frame with a content
 * checksum. Whether it is the chunk expected next is the session's to judge.
 */
export function decodeChunkRecord(f: Frame, chunkSize: number, zeroChecksum: (rawLength: number) => bigint): ChunkRecord | ChunkRecordError {
  const h = readChunkHeader(f.payload);
  if (!h) return { error: "a chunk record is too short", code: "PROTOCOL" };
  if (h.rawLength === 0 || h.rawLength > chunkSize) return { error: `chunk ${h.index} has a bad length ${h.rawLength}`, code: "PROTOCOL" };
  if (f.type === MsgType.ZERO) {
    if (f.payload.length !== CHUNK_HEADER_SIZE || h.checksum !== zeroChecksum(h.rawLength)) return { error: `zero record for chunk ${h.index} is malformed`, code: "CORRUPT" };
    return { kind: "zero", header: h };
  }
  if (f.type !== MsgType.DATA) return { error: "not a chunk record", code: "PROTOCOL" };
  const zstd = f.payload.subarray(CHUNK_HEADER_SIZE);
  if (!frameHasChecksum(zstd)) return { error: `chunk ${h.index} is not a zstd frame with a content checksum`, code: "PROTOCOL" };
  return { kind: "data", header: h, zstd };
}

/**
 * A complete SAME frame (incremental push, docs/PROTOCOL.md §6.4): the chunk's
 * header (its XXH3-64 as the sender read it) and nothing else; the chunk's
 * digest (docs/PROTOCOL.md §5.4a) equals the base backup's for that index.
 */
export function sameRecordFrame(h: ChunkHeader): Uint8Array {
  return encodeFrame(MsgType.SAME, headerOnlyPayload(h));
}

/** Checks a SAME frame on its own: exactly a header, with a raw length of 1..chunkSize. */
export function decodeSameRecord(f: Frame, chunkSize: number): { kind: "same"; header: ChunkHeader } | ChunkRecordError {
  const h = readChunkHeader(f.payload);
  if (!h || f.payload.length !== CHUNK_HEADER_SIZE) return { error: "a SAME record is not exactly a chunk header", code: "PROTOCOL" };
  if (h.rawLength === 0 || h.rawLength > chunkSize) return { error: `chunk ${h.index} has a bad length ${h.rawLength}`, code: "PROTOCOL" };
  return { kind: "same", header: h };
}

/** Most digests in one BASE_DIGESTS frame: 2 MiB of payload, well under MAX_PAYLOAD. */
export const BASE_DIGESTS_PER_FRAME = 65536;

/** A BASE_DIGESTS payload: u32 LE index of the first digest, then 32 bytes per digest. */
export function encodeBaseDigests(first: number, digests: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + digests.length);
  new DataView(out.buffer).setUint32(0, first, true);
  out.set(digests, 4);
  return out;
}

/** A BASE_DIGESTS payload's parts, or null when it is not one. */
export function decodeBaseDigests(payload: Uint8Array): { first: number; digests: Uint8Array } | null {
  if (payload.length < 4 + 32 || (payload.length - 4) % 32 !== 0 || (payload.length - 4) / 32 > BASE_DIGESTS_PER_FRAME) return null;
  return { first: new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true), digests: payload.subarray(4) };
}

/**
 * The `want` of a delta restore's RESTORE (docs/PROTOCOL.md §8.6a): one bit
 * per chunk, bit i of byte i >> 3 (least significant first) set = send chunk
 * i, exactly ceil(chunks / 8) bytes, in base64.
 */
export function encodeWant(bits: Uint8Array): string {
  return Buffer.from(bits.buffer, bits.byteOffset, bits.length).toString("base64");
}

/** A `want` for `chunks` chunks, or null when it is not one (wrong length, not base64). */
export function decodeWant(want: string, chunks: number): Uint8Array | null {
  const bytes = Math.ceil(chunks / 8);
  // checked before decoding: a peer's string is a claim, not a size
  if (want.length !== 4 * Math.ceil(bytes / 3) || !/^[A-Za-z0-9+/]*={0,2}$/.test(want)) return null;
  const bits = new Uint8Array(Buffer.from(want, "base64"));
  return bits.length === bytes ? bits : null;
}

/** Whether chunk i is set in a `want` bitmap. */
export function wants(bits: Uint8Array, i: number): boolean {
  return ((bits[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
}
