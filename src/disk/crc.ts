// The checksums on-disk structures carry: CRC-32 (GPT), CRC-32C (ext4
// metadata_csum) and CRC-16 (ext4 gdt_csum), table-driven, pure.

function table32(poly: number): Uint32Array {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
}

const CRC32C = table32(0x82f63b78);
const CRC16 = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** CRC-32 (ISO-HDLC, as GPT uses it): initial ~0, final inversion (Bun's, as the protocol's frames use it). */
export function crc32(data: Uint8Array): number {
  return Bun.hash.crc32(data) >>> 0;
}

/** Raw CRC-32C update as ext4 uses it (ext2fs_crc32c_le): no inversion on either side. */
export function crc32cRaw(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32C[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** CRC-16 (reflected 0x8005, as Linux crc16) update, no inversion. */
export function crc16(seed: number, data: Uint8Array): number {
  let c = seed & 0xffff;
  for (let i = 0; i < data.length; i++) c = (CRC16[(c ^ data[i]!) & 0xff]! ^ (c >>> 8)) & 0xffff;
  return c;
}
