// File names as the disk has them. Linux names are bytes, not text: an old disk
// holds Latin-1 names that are not valid UTF-8, and node:fs would turn their
// bytes into U+FFFD (two such names then become one). The file-level code keeps
// every path as a "byte string" (one char per byte, latin1) and hands fs the
// bytes; only messages decode them as UTF-8.
//
// In the archive a name that is valid UTF-8 is written as usual (pax `path`).
// One that is not goes in a pax header of our own: `path`/`linkpath` with the raw
// bytes and `hdrcharset=BINARY` (as GNU tar writes and reads them), and the same
// bytes in base64 as `TBBACKUP.path`/`TBBACKUP.linkpath`, since tar-stream reads
// pax values as UTF-8 (docs/FORMAT.md).
import { isUtf8 } from "node:buffer";

/** A byte string's bytes, for fs calls. */
export function bytes(s: string): Buffer {
  return Buffer.from(s, "latin1");
}

/** Bytes (or a UTF-8 string from the command line) as a byte string. */
export function byteString(b: Uint8Array | string): string {
  return (typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b.buffer, b.byteOffset, b.length)).toString("latin1");
}

/** A byte string for people: its bytes decoded as UTF-8 (bad bytes shown as U+FFFD). */
export function shown(s: string): string {
  return bytes(s).toString("utf8");
}

/** True when the name's bytes are valid UTF-8 (plain text for any tar reader). */
export function isText(s: string): boolean {
  return isUtf8(bytes(s));
}

export const PAX_RAW_PATH = "TBBACKUP.path";
export const PAX_RAW_LINKPATH = "TBBACKUP.linkpath";

/** Pax extended header records ("<len> key=value\n"), values as bytes. */
export function encodePax(records: [string, Uint8Array | string][]): Buffer {
  const out: Buffer[] = [];
  for (const [key, value] of records) {
    const body = Buffer.concat([Buffer.from(` ${key}=`), typeof value === "string" ? Buffer.from(value) : value, Buffer.from("\n")]);
    // the length counts its own digits
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    out.push(Buffer.from(String(len)), body);
  }
  return Buffer.concat(out);
}

/** A name's stand-in in the ustar fields, which pax overrides: ASCII, at most 99 bytes. */
export function asciiStandIn(s: string): string {
  const base = s.replace(/\/+$/, "").split("/").pop() || "_";
  return base.replace(/[^\x20-\x7e]/g, "_").slice(-99);
}

/** The entry's name (or link target) as a byte string, from our raw record or the text tar-stream read. */
export function entryName(text: string, raw: string | undefined): string {
  return raw !== undefined ? byteString(Buffer.from(raw, "base64")) : byteString(text);
}

/**
 * A pax extended header ("x") with these records, as the 512-byte blocks that
 * go before its entry. (tar-stream takes no body for such an entry.)
 */
export function paxHeaderBlocks(records: Buffer, mtimeSecs: number): Buffer {
  const h = Buffer.alloc(512);
  const field = (at: number, len: number, value: string) => h.write(value, at, len, "latin1");
  const octal = (at: number, len: number, n: number) => field(at, len, n.toString(8).padStart(len - 1, "0") + "\0");
  field(0, 100, "PaxHeader");
  octal(100, 8, 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, records.length);
  octal(136, 12, Math.max(0, Math.min(mtimeSecs, 0o77777777777)));
  field(148, 8, "        "); // the checksum counts its own field as spaces
  field(156, 1, "x");
  field(257, 6, "ustar\0");
  field(263, 2, "00");
  let sum = 0;
  for (const b of h) sum += b;
  field(148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  const pad = (512 - (records.length % 512)) % 512;
  return Buffer.concat([h, records, Buffer.alloc(pad)]);
}
