// Little-endian field access, GUID and label text for the on-disk parsers.

export function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/** A little-endian 64-bit field as a number; values past 2^53 come back as Infinity (no disk is that big). */
export function u64(b: Uint8Array, o: number): number {
  const hi = u32(b, o + 4);
  if (hi >= 0x200000) return Infinity;
  return hi * 0x100000000 + u32(b, o);
}

export function ascii(b: Uint8Array, o: number, len: number): string {
  let s = "";
  for (let i = o; i < o + len && i < b.length; i++) s += String.fromCharCode(b[i]!);
  return s;
}

/** A GUID stored mixed-endian (GPT, as UEFI writes it), lower-case and dashed. */
export function guidMixed(b: Uint8Array, o: number): string {
  const h = (i: number) => b[o + i]!.toString(16).padStart(2, "0");
  const p = (idx: number[]) => idx.map(h).join("");
  return `${p([3, 2, 1, 0])}-${p([5, 4])}-${p([7, 6])}-${p([8, 9])}-${p([10, 11, 12, 13, 14, 15])}`;
}

/** A UUID stored as 16 bytes in order (ext4, swap, XFS), lower-case and dashed; undefined when all zero. */
export function uuidBytes(b: Uint8Array, o: number): string | undefined {
  let zero = true;
  let s = "";
  for (let i = 0; i < 16; i++) {
    if (b[o + i]) zero = false;
    s += b[o + i]!.toString(16).padStart(2, "0");
    if (i === 3 || i === 5 || i === 7 || i === 9) s += "-";
  }
  return zero ? undefined : s;
}

/** A NUL-padded label: printable characters only (a label is shown on a terminal), undefined when empty. */
export function label(b: Uint8Array, o: number, len: number): string | undefined {
  const end = b.subarray(o, o + len).indexOf(0);
  const raw = new TextDecoder("utf-8", { fatal: false }).decode(b.subarray(o, end < 0 ? o + len : o + end));
  const clean = raw.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?").trim();
  return clean.length ? clean : undefined;
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}
