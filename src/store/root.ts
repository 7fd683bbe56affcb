// The image's integrity root (docs/FORMAT.md §4a): a SHA-256 of every raw
// chunk, computed on the worker threads of both ends, and one SHA-256 over
// those digests in chunk order. A zero chunk's digest is a constant, so zeros
// cost no hashing. Anyone can recompute it from a raw disk with stock tools:
//   split -b 1M --filter='sha256sum | cut -c1-64' disk.raw | sha256sum
// which is also `sha256sum digests.txt` of a stored backup.

/** How the manifest names the root's algorithm. */
export const ROOT_ALGORITHM = "sha256-chunk-list";
/** One line of digests.txt: 64 hex digits and "\n". */
export const DIGEST_LINE_BYTES = 65;

const zeroDigests = new Map<number, string>();

/** The SHA-256 (hex) of rawLength zero bytes: every zero chunk's digest. */
export function zeroDigest(rawLength: number): string {
  let d = zeroDigests.get(rawLength);
  if (d === undefined) {
    d = new Bun.CryptoHasher("sha256").update(new Uint8Array(rawLength)).digest("hex");
    zeroDigests.set(rawLength, d);
  }
  return d;
}

/** SHA-256 (hex) of one raw chunk: its digest in the integrity root. */
export function chunkDigest(raw: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(raw).digest("hex");
}

/** Digest `i` (hex) of a packed list of 32-byte digests (BASE_DIGESTS, a base's or a backup's digests). */
export function digestAt(packed: Uint8Array, i: number): string {
  return Buffer.from(packed.buffer, packed.byteOffset + i * 32, 32).toString("hex");
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isDigest(s: unknown): s is string {
  return typeof s === "string" && HEX64.test(s);
}

/** Folds chunk digests, in chunk order, into the root. */
export class RootBuilder {
  private sha = new Bun.CryptoHasher("sha256");
  count = 0;

  add(digest: string): void {
    this.sha.update(digest + "\n");
    this.count++;
  }

  /** Where the root stands now, to go back to (restore). */
  save(): { sha: Bun.CryptoHasher; count: number } {
    return { sha: this.sha.copy(), count: this.count };
  }

  /** Goes back to a state save() returned: the digests added since then are forgotten. */
  restore(s: { sha: Bun.CryptoHasher; count: number }): void {
    this.sha = s.sha.copy();
    this.count = s.count;
  }

  /** Forgets every digest added. */
  reset(): void {
    this.sha = new Bun.CryptoHasher("sha256");
    this.count = 0;
  }

  /** The root of every digest added so far. */
  digest(): string {
    return this.sha.copy().digest("hex");
  }
}
