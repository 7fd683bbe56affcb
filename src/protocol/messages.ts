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
  RESEND: 0x17,
  /** incremental push: the base's per-chunk digests, binary (docs/PROTOCOL.md §8.7) */
  BASE_DIGESTS: 0x18,
  /** incremental push: "chunk i is the same as the base's" (docs/PROTOCOL.md §6.4) */
  SAME: 0x19,
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
  /** push: the sender also wants the whole-image SHA-256 (--sha256) */
  sha256?: boolean;
  /** push of an image with used-block imaging: what was found on the disk and how each part is imaged (docs/PROTOCOL.md) */
  layout?: Layout;
  /** push only, optional: file systems of the source that were mounted read-write when the push began */
  mountedRw?: MountedRw[];
  /** restore only: the backup asked for (an ID), and the disk it will be written to */
  backup?: string;
  target?: DiskIdentity;
  /** restore only, with capability `delta-restore`: the restorer will compare with its target and wants the backup's digests (docs/PROTOCOL.md §8.6a) */
  delta?: boolean;
}

/** One partition of a layout (or, with no partition table, the whole disk as index 0). */
export interface LayoutPart {
  index: number;
  start: number;
  length: number;
  /** GPT type GUID or MBR type ("0x83"); "" for the whole disk */
  type: string;
  /** GPT partition name and unique GUID */
  name?: string;
  partUuid?: string;
  /** file system found: "ext4", "swap", "luks", ..., "unknown" */
  fs: string;
  label?: string;
  uuid?: string;
  method: "used-blocks" | "whole" | "header-only";
  reason?: string;
  /** bytes of this partition that were read and stored as they are (the rest is stored as zeros) */
  usedBytes: number;
}

/** How an image push treated the disk: README, "Used-block imaging". */
export interface Layout {
  table: "gpt" | "mbr" | "none";
  sectorSize: number;
  note?: string;
  partitions: LayoutPart[];
  /** bytes outside every partition (kept whole) */
  outsideBytes: number;
  /** bytes kept as they are on the disk; everything else reads as zeros in the image */
  usedBytes: number;
}

/** The most partitions a layout from a peer may list. */
const MAX_LAYOUT_PARTS = 256;

/**
 * A layout from a peer, rebuilt from its known fields with their types checked
 * and strings cut short; undefined when it is not one.
 */
export function layoutFrom(x: unknown): Layout | undefined {
  if (typeof x !== "object" || x === null) return undefined;
  const o = x as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : null);
  const str = (v: unknown, max = 128) => (typeof v === "string" ? v.slice(0, max) : undefined);
  if (o.table !== "gpt" && o.table !== "mbr" && o.table !== "none") return undefined;
  if (!Array.isArray(o.partitions) || o.partitions.length > MAX_LAYOUT_PARTS) return undefined;
  const parts: LayoutPart[] = [];
  for (const p of o.partitions as Record<string, unknown>[]) {
    if (typeof p !== "object" || p === null) return undefined;
    const index = num(p.index), start = num(p.start), length = num(p.length), usedBytes = num(p.usedBytes);
    if (index === null || start === null || length === null || usedBytes === null) return undefined;
    if (p.method !== "used-blocks" && p.method !== "whole" && p.method !== "header-only") return undefined;
    const opt = (k: string, v: string | undefined) => (v !== undefined ? { [k]: v } : {});
    parts.push({ index, start, length, type: str(p.type) ?? "", ...opt("name", str(p.name)), ...opt("partUuid", str(p.partUuid)), fs: str(p.fs, 32) ?? "unknown", ...opt("label", str(p.label)), ...opt("uuid", str(p.uuid)), method: p.method, ...opt("reason", str(p.reason, 256)), usedBytes });
  }
  const sectorSize = num(o.sectorSize), outsideBytes = num(o.outsideBytes), usedBytes = num(o.usedBytes);
  if (sectorSize === null || outsideBytes === null || usedBytes === null) return undefined;
  const note = str(o.note, 256);
  return { table: o.table, sectorSize, ...(note !== undefined ? { note } : {}), partitions: parts, outsideBytes, usedBytes };
}

/** A file system mounted read-write from the pushed disk (or one of its partitions). */
export interface MountedRw {
  device: string;
  mountpoint: string;
}

/** At most this many `mountedRw` entries are taken from a peer, each string at most MAX_MOUNT_TEXT characters. */
const MAX_MOUNTED_RW = 64;
const MAX_MOUNT_TEXT = 4096;

/** A peer's `mountedRw` claim, checked and capped; undefined when absent or not a list of {device, mountpoint} strings. */
export function mountedRwOf(v: unknown): MountedRw[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: MountedRw[] = [];
  for (const m of v.slice(0, MAX_MOUNTED_RW)) {
    const { device, mountpoint } = (m ?? {}) as { device?: unknown; mountpoint?: unknown };
    if (typeof device !== "string" || typeof mountpoint !== "string") continue;
    out.push({ device: device.slice(0, MAX_MOUNT_TEXT), mountpoint: mountpoint.slice(0, MAX_MOUNT_TEXT) });
  }
  return out.length ? out : undefined;
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
  /**
   * Incremental push (capability `incremental`): a complete backup of the same
   * disk the sender may send SAME records against; its `chunks` digests follow
   * in BASE_DIGESTS frames (docs/PROTOCOL.md §8.7).
   */
  base?: { id: string; chunks: number };
  /**
   * The chunk digest of this backup's integrity root (capability `blake3`,
   * docs/PROTOCOL.md §5.4a), which the sender computes: absent, SHA-256.
   */
  digest?: ChunkDigest;
}

/** The hash of each raw chunk in the integrity root (docs/FORMAT.md §4a). */
export type ChunkDigest = "sha256" | "blake3";
const isChunkDigest = (v: unknown): v is ChunkDigest => v === "sha256" || v === "blake3";

/** The sender's answer to a resume offer: continue at chunk `from` (0: start afresh). */
export interface Resume {
  session: string;
  from: number;
}

export interface ErrorMsg {
  session?: string;
  code: string;
  message: string;
  /** a restore the receiver could not choose: the backups to choose from, one line each */
  candidates?: string[];
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
  /** the integrity root (docs/FORMAT.md §4a), to a receiver that lists the "root" capability */
  root?: string;
  /** the whole-image SHA-256: with --sha256, or always to a receiver without "root" */
  sha256?: string;
  /** file-level backups only */
  files?: FilesSummary;
}

/** The receiver's durable progress (§8.2). */
export interface Progress {
  chunks: number;
  bytes: number;
}

/** "Still at it": a receiver's keepalive, a restorer's during its read-back. */
export interface Keepalive {
  session: string;
}

/** The sender's keepalive while it re-reads a resumed prefix: chunks checked so far, of how many. */
export interface PrefixKeepalive {
  session: string;
  checking: number;
  of: number;
}

/**
 * The receiver asks for chunk `from` again (it arrived damaged) and for every
 * chunk after it; `seq` numbers the requests of a session (1, 2, ...), so a
 * repeated request is told from a new one.
 */
export interface Resend {
  session: string;
  from: number;
  seq: number;
}

/** After END: the sender asks again for its session's DONE. */
export interface Status {
  session: string;
}

export interface ListResult {
  session: string;
  /** one entry per backup (docs/PROTOCOL.md §5.7); the fields `list` shows are checked by its validator */
  backups: Record<string, unknown>[];
}

export interface RestoreDone {
  session: string;
  ok: true;
}

export interface Done {
  /** the push session it confirms (older receivers leave it out) */
  session?: string;
  id: string;
  path: string;
  /** as END carried them */
  root?: string;
  sha256?: string;
  bytes: number;
  storedBytes: number;
  /** incremental push: the base and how many chunks were copied from it */
  base?: string;
  sameChunks?: number;
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
  /** what the restored data must check out against: the integrity root, or for a backup older than it, its SHA-256 */
  root?: string;
  sha256?: string;
  /** delta restore (§8.6a): BASE_DIGESTS frames with every chunk's digest follow this message */
  digests?: boolean;
  /** the chunk digest of `root` (to a restorer that lists `blake3`): absent, SHA-256 */
  digest?: ChunkDigest;
}

/** The restoring side's go-ahead (after confirmation and size checks). */
export interface RestoreGo {
  session: string;
  go: true;
  /** delta restore (§8.6a), only after digests were sent: base64 of a bitmap, bit i (LSB first) set = send chunk i */
  want?: string;
}

export interface RestoreEnd {
  chunks: number;
  bytes: number;
  /** delta restore: how many chunk records were sent */
  sent?: number;
  /** as RESTORE_INFO said */
  root?: string;
  sha256?: string;
}

/** Every JSON control message by its type: a send of the wrong shape does not compile. */
export interface Messages {
  [MsgType.HELLO]: Hello;
  [MsgType.HELLO_ACK]: HelloAck;
  [MsgType.ERROR]: ErrorMsg;
  [MsgType.END]: End;
  [MsgType.PROGRESS]: Progress | Keepalive | PrefixKeepalive;
  [MsgType.DONE]: Done;
  [MsgType.RESUME]: Resume;
  [MsgType.STATUS]: Status;
  [MsgType.RESEND]: Resend;
  [MsgType.LIST_RESULT]: ListResult;
  [MsgType.RESTORE]: RestoreGo;
  [MsgType.RESTORE_INFO]: RestoreInfo;
  [MsgType.RESTORE_END]: RestoreEnd;
  [MsgType.RESTORE_DONE]: RestoreDone;
}
export type JsonMsgType = keyof Messages;

type Fields = Record<string, unknown>;
const isStr = (v: unknown): v is string => typeof v === "string";
const isBool = (v: unknown): v is boolean => typeof v === "boolean";
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isObj = (v: unknown): v is Fields => typeof v === "object" && v !== null && !Array.isArray(v);
const opt = (v: unknown, is: (x: unknown) => boolean) => v === undefined || is(v);
const isStrs = (v: unknown) => Array.isArray(v) && v.every(isStr);
const isNum = (v: unknown): v is number => typeof v === "number";
const orNull = (is: (x: unknown) => boolean) => (x: unknown) => x === null || is(x);
/** A LIST_RESULT entry with the fields `list` shows (docs/PROTOCOL.md §5.7) of the right types. */
const isListEntry = (e: unknown): boolean =>
  isObj(e) &&
  isStr(e.id) && isStr(e.kind) && isStr(e.status) && isStr(e.date) && isNum(e.size) && isNum(e.storedBytes) &&
  orNull(isStr)(e.label) && orNull(isNum)(e.ratio) &&
  opt(e.sharedBytes, orNull(isNum)) && opt(e.why, isStr) && opt(e.unreadableFiles, isNum) && opt(e.changedFiles, isNum);

/**
 * What each message must hold before anyone reads it: a payload of another
 * shape is treated as malformed (null from decodeMessage), never cast. The
 * finer checks (a protocol name, a backup's fields) stay with the code that
 * acts on them.
 */
const validators: { [K in JsonMsgType]: (v: Fields) => boolean } = {
  [MsgType.HELLO]: (v) => isStr(v.session) && isStr(v.role) && isObj(v.host),
  [MsgType.HELLO_ACK]: (v) => isStr(v.session) && isObj(v.host) && opt(v.id, isStr) && opt(v.resume, (r) => isObj(r) && isStr(r.id) && isCount(r.chunks) && isStr(r.digest)) && opt(v.base, (b) => isObj(b) && isStr(b.id) && isCount(b.chunks)) && opt(v.digest, isChunkDigest),
  [MsgType.ERROR]: (v) => isStr(v.code) && isStr(v.message) && opt(v.session, isStr) && opt(v.candidates, isStrs),
  [MsgType.END]: (v) => isCount(v.chunks) && isCount(v.bytes) && opt(v.root, isStr) && opt(v.sha256, isStr) && opt(v.files, isObj),
  [MsgType.PROGRESS]: (v) => isStr(v.session) || (isCount(v.chunks) && isCount(v.bytes)),
  [MsgType.DONE]: (v) => isStr(v.id) && isStr(v.path) && isCount(v.bytes) && isCount(v.storedBytes) && opt(v.session, isStr) && opt(v.root, isStr) && opt(v.sha256, isStr) && opt(v.base, isStr) && opt(v.sameChunks, isCount),
  [MsgType.RESUME]: (v) => isStr(v.session) && isCount(v.from),
  [MsgType.STATUS]: (v) => isStr(v.session),
  [MsgType.RESEND]: (v) => isStr(v.session) && isCount(v.from) && isCount(v.seq),
  [MsgType.LIST_RESULT]: (v) => isStr(v.session) && Array.isArray(v.backups) && v.backups.every(isListEntry),
  [MsgType.RESTORE]: (v) => isStr(v.session) && v.go === true && opt(v.want, isStr),
  [MsgType.RESTORE_INFO]: (v) =>
    isStr(v.session) && isStr(v.id) && isStr(v.kind) && isObj(v.host) && isObj(v.disk) && isCount(v.size) && isCount(v.chunkSize) && isCount(v.chunks) && opt(v.root, isStr) && opt(v.sha256, isStr) && opt(v.digests, isBool) && opt(v.digest, isChunkDigest),
  [MsgType.RESTORE_END]: (v) => isCount(v.chunks) && isCount(v.bytes) && opt(v.root, isStr) && opt(v.sha256, isStr) && opt(v.sent, isCount),
  [MsgType.RESTORE_DONE]: (v) => isStr(v.session) && v.ok === true,
};

/** A control message of `type`, or null when the payload is not valid JSON of that message's shape. */
export function decodeMessage<T extends JsonMsgType>(type: T, payload: Uint8Array): Messages[T] | null {
  const v = decodeJson<Fields>(payload);
  return v && validators[type](v) ? (v as unknown as Messages[T]) : null;
}

/** The `session` a message names, whatever its type (an ERROR or DONE of another session is stale). */
export function sessionOf(payload: Uint8Array): string | undefined {
  const s = decodeJson<Fields>(payload)?.session;
  return isStr(s) ? s : undefined;
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
