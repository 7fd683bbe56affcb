// The image's integrity root (docs/FORMAT.md §4a): a digest of every raw
// chunk, computed on the worker threads of both ends, and one SHA-256 over
// those digests in chunk order. A zero chunk's digest is a constant, so zeros
// cost no hashing. The chunk digest is BLAKE3 (manifest format 4), or SHA-256
// in backups made before it and with peers that predate it. Anyone can
// recompute the root from a raw disk with stock tools:
//   split -b 1M --filter='b3sum --no-names' disk.raw | sha256sum
//   split -b 1M --filter='sha256sum | cut -c1-64' disk.raw | sha256sum   (SHA-256 chunk digests)
// which is also `sha256sum digests.txt` of a stored backup.
import { blake3Hex } from "../util/blake3.ts";

/** The hash of each raw chunk. */
export type DigestAlgorithm = "sha256" | "blake3";

/** How the manifest names the root's algorithm, by its chunk digest. */
export const ROOT_ALGORITHMS = { sha256: "sha256-chunk-list", blake3: "blake3-chunk-list" } as const;
export type RootAlgorithm = (typeof ROOT_ALGORITHMS)[DigestAlgorithm];

/** The chunk digest a manifest's `digests.algorithm` names; null for one this version does not know. */
export function digestAlgorithmOf(rootAlgorithm: unknown): DigestAlgorithm | null {
  if (rootAlgorithm === ROOT_ALGORITHMS.sha256) return "sha256";
  if (rootAlgorithm === ROOT_ALGORITHMS.blake3) return "blake3";
  return null;
}

/** One line of digests.txt: 64 hex digits and "\n". */
export const DIGEST_LINE_BYTES = 65;

/** by chunk digest, then raw length (asked once per zero chunk, at both ends) */
const zeroDigests: Record<DigestAlgorithm, Map<number, string>> = { sha256: new Map(), blake3: new Map() };

/** The digest (hex) of rawLength zero bytes: every zero chunk's digest. */
export function zeroDigest(rawLength: number, algorithm: DigestAlgorithm): string {
  const known = zeroDigests[algorithm];
  let d = known.get(rawLength);
  if (d === undefined) {
    d = chunkDigest(new Uint8Array(rawLength), algorithm);
    known.set(rawLength, d);
  }
  return d;
}

/** The digest (hex) of one raw chunk in the integrity root. */
export function chunkDigest(raw: Uint8Array, algorithm: DigestAlgorithm): string {
  return algorithm === "blake3" ? blake3Hex(raw) : new Bun.CryptoHasher("sha256").update(raw).digest("hex");
}

/** Digest `i` (hex) of a packed list of 32-byte digests (BASE_DIGESTS, a base's or a backup's digests). */
export function digestAt(packed: Uint8Array, i: number): string {
  return Buffer.from(packed.buffer, packed.byteOffset + i * 32, 32).toString("hex");
}

/** hex digits of a frame-xxh3.txt line */
export const FRAME_DIGEST_HEX = 16;

/**
 * A stored frame's line in frame-xxh3.txt (docs/FORMAT.md §4b): its XXH3-64
 * as 16 lowercase hex digits. It only has to tell whether the frame's bytes
 * changed at rest since they were checked (the raw chunk's digest is what
 * the root covers), and costs a fraction of a SHA-256.
 */
export function frameDigest(frame: Uint8Array): string {
  return Bun.hash.xxHash3(frame).toString(16).padStart(16, "0");
}

/**
 * Whether a stored frame still has the digest of its line: a frame-xxh3.txt
 * line (16 hex digits) or an older frame-digests.txt line (a SHA-256).
 * `ownDigest`: frameDigest(frame), when the caller has it already.
 */
export function frameMatches(frame: Uint8Array, line: string, ownDigest = frameDigest(frame)): boolean {
  return line.length === FRAME_DIGEST_HEX ? ownDigest === line : chunkDigest(frame, "sha256") === line;
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isDigest(s: unknown): s is string {
  return typeof s === "string" && HEX64.test(s);
}

/**
 * Folds chunk digests, in chunk order, into the root. The last `keep` digests
 * can be taken back (save/restore: a push goes back to a chunk asked for
 * again); they wait in a list and are hashed in batches, so a save costs a
 * number, not a copy of the hash's state.
 */
export class RootBuilder {
  private sha = new Bun.CryptoHasher("sha256");
  /** how many digests the hash holds */
  private folded = 0;
  /** the digests added after those, in order */
  private pending: string[] = [];
  /** pending digests at which all but the last `keep` are hashed (at least 256 at a time) */
  private readonly foldAt: number;

  constructor(private readonly keep = 0) {
    this.foldAt = keep + Math.max(keep, 256);
  }

  get count(): number {
    return this.folded + this.pending.length;
  }

  add(digest: string): void {
    this.pending.push(digest);
    if (this.pending.length >= this.foldAt) this.fold(this.pending.length - this.keep);
  }

  private fold(n: number): void {
    this.sha.update(this.pending.slice(0, n).join("\n") + "\n");
    this.pending.splice(0, n);
    this.folded += n;
  }

  /** Where the root stands now (its count), to go back to with restore(). */
  save(): number {
    return this.count;
  }

  /** Goes back to `count` digests, as save() returned it: those added since are forgotten. It must be within the last `keep`. */
  restore(count: number): void {
    if (!Number.isSafeInteger(count) || count < this.folded || count > this.count) throw new RangeError(`cannot go back to ${count} digests (${this.folded} are final, ${this.count} added)`);
    this.pending.length = count - this.folded;
  }

  /** Forgets every digest added. */
  reset(): void {
    this.sha = new Bun.CryptoHasher("sha256");
    this.folded = 0;
    this.pending = [];
  }

  /** The root of every digest added so far. */
  digest(): string {
    const h = this.sha.copy();
    if (this.pending.length > 0) h.update(this.pending.join("\n") + "\n");
    return h.digest("hex");
  }
}
