// Linux swap: only the header page matters once the system is down, unless
// the area holds a hibernation image (then it is the machine's memory, and
// imaged whole). Pure; reads one page.
import { readChecked, markBlocks, newUsedBlocks, type FsAnalysis, type ReadAt } from "./types.ts";
import { ascii, label, u32, uuidBytes } from "./bytes.ts";

/** Page sizes a swap header may be written for (x86 4 KiB, arm64/ppc64 up to 64 KiB). */
const PAGE_SIZES = [4096, 8192, 16384, 65536];
const SWAP_MAGICS = ["SWAPSPACE2", "SWAP-SPACE"];
/** Signatures hibernation writers put where the swap magic was (swsusp, uswsusp, TuxOnIce, ...). */
const HIBERNATION = ["S1SUSPEND", "S2SUSPEND", "ULSUSPEND", "LINHIB0001", "\xed\xc3\x02\xe9\x98\x56\xe5\x0c"];

export function analyzeSwap(read: ReadAt, size: number): FsAnalysis | null {
  for (const page of PAGE_SIZES) {
    if (size < page * 2) break;
    const magic = ascii(readChecked(read, page - 10, 10, "the swap signature"), 0, 10);
    const hib = HIBERNATION.find((h) => magic.startsWith(h));
    if (!SWAP_MAGICS.includes(magic) && !hib) continue;
    const head = readChecked(read, 1024, 512, "the swap header");
    const names = { ...(label(head, 28, 16) ? { label: label(head, 28, 16) } : {}), ...(uuidBytes(head, 12) ? { uuid: uuidBytes(head, 12) } : {}) };
    if (hib) return { fs: "swap", ...names, method: "whole", reason: "holds a hibernation image", usedBytes: size, size };
    if (magic === "SWAPSPACE2" && u32(head, 0) !== 1) return { fs: "swap", ...names, method: "whole", reason: "unknown swap header version", usedBytes: size, size };
    const blocks = Math.floor(size / page);
    const used = newUsedBlocks(page, blocks);
    markBlocks(used, 0, 1);
    return { fs: "swap", ...names, method: "header-only", reason: "swap: content not kept", used, usedBytes: page + (size - blocks * page), size };
  }
  return null;
}
