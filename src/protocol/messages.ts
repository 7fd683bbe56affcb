// Message types carried in frames, and their payload codecs. Pure, no I/O.
// Control messages are JSON objects (versioned by `proto` in HELLO); chunk
// records are fixed binary headers followed by the compressed bytes.

export const PROTOCOL_VERSION = 1;
export const PROTOCOL_NAME = "tbbackup";

export const MsgType = {
  HELLO: 0x01,
  HELLO_ACK: 0x02,
  ERROR: 0x03,
  DATA: 0x10,
  ZERO: 0x11,
  END: 0x12,
  PROGRESS: 0x13,
  DONE: 0x14,
  LIST: 0x20,
  LIST_RESULT: 0x21,
  RESTORE: 0x22,
  RESTORE_INFO: 0x23,
  RESTORE_END: 0x24,
  RESTORE_DONE: 0x25,
  RESUME: 0x15,
  STATUS: 0x16,
  /** key authentication on tcp:, before HELLO (auth.ts) */
  AUTH: 0x30,
  AUTH_CHALLENGE: 0x31,
  AUTH_PROOF: 0x32,
  AUTH_OK: 0x33,
} as const;
export type MsgTypeName = keyof typeof MsgType;

export function typeName(type: number): string {
  for (const [name, value] of Object.entries(MsgType)) if (value === type) return name;
  return `0x${type.toString(16).padStart(2, "0")}`;
}

export interface HostIdentity {
  hostname: string;
  machineId: string | null;
  productUuid: string | null;
}

export interface DiskIdentity {
  path: string;
  kind: "block" | "file" | "files";
  name: string;
  size: number;
  model: string | null;
  serial: string | null;
  wwn: string | null;
  logicalBlockSize: number | null;
  partitionTable: string | null;
}

export type Role = "push" | "list" | "restore";

export interface Hello {
  protocol: typeof PROTOCOL_NAME;
  proto: number;
  tool: string;
  role: Role;
  session: string;
  host: HostIdentity;
  caps: string[];
  /** push only */
  disk?: DiskIdentity;
  label?: string;
  chunkSize?: number;
  level?: number;
  content?: "image" | "files";
  /** restore only: the backup asked for (an ID), and the disk it will be written to */
  backup?: string;
  target?: DiskIdentity;
}

export interface HelloAck {
  protocol: typeof PROTOCOL_NAME;
  proto: number;
  tool: string;
  session: string;
  host: HostIdentity;
  caps: string[];
  /** where the stored backup will be, relative to the receiver's DIR */
  id?: string;
  /**
   * An interrupted push of the same disk can continue: the receiver holds
   * `chunks` durable chunks whose chunk-list lines hash to `digest`. The sender
   * must answer with RESUME.
   */
  resume?: { id: string; chunks: number; digest: string };
}

/** The sender's answer to a resume offer: continue at chunk `from` (0: start afresh). */
export interface Resume {
  session: string;
  from: number;
}

export interface ErrorMsg {
  session?: string;
  code: string;
  message: string;
}

export interface FilesSummary {
  roots: string[];
  /** entries archived (files, directories, links, special files) */
  count: number;
  /** bytes of regular file content */
  bytes: number;
  /** "PATH: ERRNO" for a file skipped; "PATH: stored with N bytes zeroed (ERRNO)" for one stored with zeros where reads failed */
  unreadable: string[];
  changed: string[];
  /** mount points inside the roots whose contents were not archived (without --cross-mounts) (absent from older manifests) */
  mounts?: string[];
}

export interface End {
  chunks: number;
  bytes: number;
  sha256: string;
  /** file-level backups only */
  files?: FilesSummary;
}

export interface Progress {
  chunks: number;
  bytes: number;
}

export interface Done {
  /** the push session it confirms (older receivers leave it out) */
  session?: string;
  id: string;
  path: string;
  sha256: string;
  bytes: number;
  storedBytes: number;
}

/** Sent by the receiver before a restore's data: what will be written. */
export interface RestoreInfo {
  session: string;
  id: string;
  kind: "image" | "files";
  host: HostIdentity;
  disk: DiskIdentity;
  label: string | null;
  date: string;
  size: number;
  chunkSize: number;
  chunks: number;
  sha256: string;
}

/** The restoring side's go-ahead (after confirmation and size checks). */
export interface RestoreGo {
  session: string;
  go: true;
}

export interface RestoreEnd {
  chunks: number;
  bytes: number;
  sha256: string;
}

export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** Parses a JSON control payload; returns null when it is not a JSON object. */
export function decodeJson<T>(payload: Uint8Array): T | null {
  try {
    const v: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
    return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as T) : null;
  } catch {
    return null;
  }
}

// Chunk record header (DATA and ZERO), little endian:
//   0 index u32 | 4 rawLength u32 | 8 offset u64 | 16 xxh3-64 of raw data u64
// DATA: followed by one zstd frame. ZERO: nothing follows.
export const CHUNK_HEADER_SIZE = 24;

export interface ChunkHeader {
  index: number;
  rawLength: number;
  offset: number;
  checksum: bigint;
}

export function writeChunkHeader(out: Uint8Array, at: number, h: ChunkHeader): void {
  const v = new DataView(out.buffer, out.byteOffset + at, CHUNK_HEADER_SIZE);
  v.setUint32(0, h.index, true);
  v.setUint32(4, h.rawLength, true);
  v.setBigUint64(8, BigInt(h.offset), true);
  v.setBigUint64(16, h.checksum, true);
}

export function readChunkHeader(payload: Uint8Array): ChunkHeader | null {
  if (payload.length < CHUNK_HEADER_SIZE) return null;
  const v = new DataView(payload.buffer, payload.byteOffset, CHUNK_HEADER_SIZE);
  const offset = v.getBigUint64(8, true);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return {
    index: v.getUint32(0, true),
    rawLength: v.getUint32(4, true),
    offset: Number(offset),
    checksum: v.getBigUint64(16, true),
  };
}

export function encodeZero(h: ChunkHeader): Uint8Array {
  const out = new Uint8Array(CHUNK_HEADER_SIZE);
  writeChunkHeader(out, 0, h);
  return out;
}
