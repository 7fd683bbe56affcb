// Recognises what cannot be imaged by used blocks and names it: encrypted
// volumes, volume-manager and RAID members, and file systems this version
// does not analyse. Everything it returns has method "whole". Pure.
import { readChecked, type FsAnalysis, type ReadAt } from "./types.ts";
import { ascii, u32, uuidBytes } from "./bytes.ts";

const MD_MAGIC = 0xa92b4efc;
const BCACHE_MAGIC = [0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81];

function at(read: ReadAt, size: number, offset: number, length: number): Uint8Array | null {
  if (offset < 0 || offset + length > size) return null;
  return readChecked(read, offset, length, "a signature");
}

function w(fs: string, size: number, reason: string, uuid?: string): FsAnalysis {
  return { fs, method: "whole", reason, usedBytes: size, size, ...(uuid ? { uuid } : {}) };
}

/** What the region holds when it is one of the things we image whole; "unknown" (whole) otherwise. */
/**
 * Containers whose content must never be read as a file system: encrypted
 * volumes, LVM, md RAID members, bcache, ZFS. Looked for before any
 * file-system analyser, since a container made over an old file system can
 * leave that file system's superblock in place (md 1.2 writes at 4 KiB and
 * leaves an old ext4's superblock at 1 KiB), and its allocation map would then
 * drop the container's data. null when none is there.
 */
export function identifyContainer(read: ReadAt, size: number): FsAnalysis | null {
  const head = at(read, size, 0, Math.min(size, 8192));
  if (!head || head.length < 512) return null;
  if (ascii(head, 0, 6) === "LUKS\xba\xbe" || ascii(head, 0, 6) === "SKUL\xba\xbe")
    return w("luks", size, "encrypted (LUKS): content cannot be read");
  if (ascii(head, 3, 8) === "-FVE-FS-") return w("bitlocker", size, "encrypted (BitLocker): content cannot be read");
  for (let s = 0; s < 4; s++) if (ascii(head, s * 512, 8) === "LABELONE" && ascii(head, s * 512 + 24, 8) === "LVM2 001") return w("lvm2", size, "LVM physical volume: imaged whole");
  // md 1.1 at 0, 1.2 at 4 KiB, 1.0 at the end (8 KiB from the end, 4 KiB aligned), 0.90 at the last 64 KiB boundary minus 64 KiB
  if (u32(head, 0) === MD_MAGIC || (head.length >= 4100 && u32(head, 4096) === MD_MAGIC)) return w("linux_raid_member", size, "RAID member (md): imaged whole");
  const end10 = Math.floor((size - 8192) / 4096) * 4096;
  const end09 = Math.floor(size / 65536) * 65536 - 65536;
  for (const o of [end10, end09]) {
    const b = o > 0 ? at(read, size, o, 4) : null;
    if (b && u32(b, 0) === MD_MAGIC) return w("linux_raid_member", size, "RAID member (md): imaged whole");
  }
  if (head.length >= 4096 + 40 && BCACHE_MAGIC.every((v, i) => head[4096 + 24 + i] === v)) return w("bcache", size, "bcache device: imaged whole");
  // ZFS: an uberblock magic in label 0's uberblock array (128 KiB in)
  const ub = at(read, size, 128 * 1024, 8);
  if (ub && (u32(ub, 0) === 0x00bab10c || u32(ub, 4) === 0x0cb1ba00)) return w("zfs_member", size, "ZFS pool member: imaged whole");
  return null;
}

export function identifyWhole(read: ReadAt, size: number): FsAnalysis {
  const head = at(read, size, 0, Math.min(size, 8192));
  if (!head || head.length < 512) return w("unknown", size, "too small to hold a file system");
  const container = identifyContainer(read, size);
  if (container) return container;
  const sb = at(read, size, 1024, 1024);
  if (sb && u32(sb, 0) === 0xf2f52010) return w("f2fs", size, "F2FS: not analysed, imaged whole", uuidBytes(sb, 0x6c));
  if (sb && (ascii(sb, 0, 2) === "H+" || ascii(sb, 0, 2) === "HX")) return w("hfsplus", size, "HFS+: not analysed, imaged whole");
  if (ascii(head, 32, 4) === "NXSB") return w("apfs", size, "APFS: not analysed, imaged whole");
  if (ascii(head, 3, 8) === "EXFAT   ") return w("exfat", size, "exFAT: not analysed, imaged whole");
  if (ascii(head, 3, 8) === "ReFS\0\0\0\0") return w("refs", size, "ReFS: not analysed, imaged whole");
  if (ascii(head, 0, 4) === "hsqs") return w("squashfs", size, "squashfs: imaged whole");
  if (ascii(head, 0, 4) === "XFSB") return w("xfs", size, "XFS: not analysed, imaged whole");
  if (ascii(head, 3, 8) === "NTFS    ") return w("ntfs", size, "NTFS: not analysed, imaged whole");
  const bt = at(read, size, 65536 + 64, 8);
  if (bt && ascii(bt, 0, 8) === "_BHRfS_M") return w("btrfs", size, "btrfs: not analysed, imaged whole");
  if (ascii(head, 54, 5) === "FAT12" || ascii(head, 54, 5) === "FAT16" || ascii(head, 82, 5) === "FAT32") return w("vfat", size, "FAT: not analysed, imaged whole");
  return w("unknown", size, "no file system recognised: imaged whole");
}
