// The work no implementation of push -> receive or restore can skip, measured
// on one core of this machine in the same run as scripts/bench.sh: the chunk
// digest (BLAKE3, docs/FORMAT.md §4a) of its non-zero chunks, zstd level 1 of
// them and their decompression. The SHA-256 of the whole image, the floor
// before chunk digests, is still printed for the history.
// Prints the CPU seconds and the best wall time two cores could give, so the
// benchmark's ratios can be read against what is possible here.
// usage: bun scripts/bench-floor.ts IMAGE ZSTD_LINE_SECONDS ZSTD_DC_SECONDS
import * as fs from "node:fs";
import { zstd as loadZstd } from "../src/util/zstd.ts";
import { DEFAULT_CHUNK_SIZE } from "../src/core/limits.ts";
import { compressBound } from "../src/util/buffer-pool.ts";
import { chunkDigest } from "../src/store/root.ts";

const [image, zstdLine, zstdDc] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])];
const zstd = loadZstd();
const CH = DEFAULT_CHUNK_SIZE;
const fd = fs.openSync(image, "r");
const size = fs.fstatSync(fd).size;

// The non-zero chunks, read once into memory that is already touched (this
// machine pays ~3 ms per MiB for fresh memory, which would blur the figures).
const chunks: Uint8Array[] = [];
const offsets: number[] = []; // where each kept chunk sits, for the hash in image order
const buf = new Uint8Array(CH);
const zero = new Uint8Array(CH);
for (let off = 0; off < size; off += CH) {
  const n = fs.readSync(fd, buf, 0, CH, off);
  if (Buffer.from(buf.buffer, 0, n).equals(zero.subarray(0, n))) continue;
  chunks.push(buf.slice(0, n));
  offsets.push(off);
}

function timed(f: () => void): number {
  f(); // once to warm up
  const t = performance.now();
  f();
  return (performance.now() - t) / 1000;
}

const sha = timed(() => {
  const h = new Bun.CryptoHasher("sha256");
  let nz = 0;
  for (let off = 0; off < size; off += CH) {
    const n = Math.min(CH, size - off);
    h.update(nz < chunks.length && off === offsets[nz] ? chunks[nz++]! : zero.subarray(0, n));
  }
  h.digest();
});
const digests = timed(() => {
  for (const c of chunks) chunkDigest(c, "blake3");
});
const cctx = new zstd.CCtx();
cctx.setParameter(zstd.CParameter.compressionLevel, 1);
cctx.setParameter(zstd.CParameter.checksumFlag, 1);
const out = new Uint8Array(compressBound(CH) * chunks.length);
const frames: Uint8Array[] = [];
const compress = timed(() => {
  frames.length = 0;
  let at = 0;
  for (const c of chunks) {
    const n = cctx.compress2(out.subarray(at, at + compressBound(c.length)), c);
    frames.push(out.subarray(at, at + n));
    at += n;
  }
});
const dctx = new zstd.DCtx();
const decompress = timed(() => {
  for (let i = 0; i < frames.length; i++) dctx.decompress(buf, frames[i]!);
});

const line = (label: string, cpu: number, ref: number, refName: string) =>
  console.log(`${label.padEnd(44)} ${cpu.toFixed(2).padStart(8)} CPU-s  best on 2 cores ${(cpu / 2).toFixed(2)} s = ${(cpu / 2 / ref).toFixed(2)}x ${refName}`);
const mib = (n: number) => Math.round(n / 1048576);
console.log(`work that cannot be skipped, one core each (${mib(size)} MiB image, ${chunks.length} non-zero chunks):`);
console.log(`${"  SHA-256 of the image".padEnd(44)} ${sha.toFixed(2).padStart(8)} s`);
console.log(`${"  BLAKE3 of the non-zero chunks".padEnd(44)} ${digests.toFixed(2).padStart(8)} s`);
console.log(`${"  zstd-napi level 1 of the non-zero chunks".padEnd(44)} ${compress.toFixed(2).padStart(8)} s`);
console.log(`${"  decompressing them".padEnd(44)} ${decompress.toFixed(2).padStart(8)} s`);
line("push -> receive: BLAKE3 twice, compress, check", 2 * digests + compress + decompress, zstdLine, "the zstd line");
line("  the same with SHA-256 of the image twice", 2 * sha + compress + decompress, zstdLine, "the zstd line");
line("  the same with SHA-256 on the sender only", sha + compress + decompress, zstdLine, "the zstd line");
line("restore: decompress, BLAKE3", digests + decompress, zstdDc, "zstd -dc");
line("  the same with SHA-256 of the image", sha + decompress, zstdDc, "zstd -dc");
