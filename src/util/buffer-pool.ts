// Reusable buffers for the data path. On the machines we measured, touching
// fresh memory costs about 3 ms per MiB (the hypervisor backs each page on
// first use, and Bun's allocator returns freed large buffers to the kernel),
// more than compressing it. So chunk-sized buffers go around in circles:
// main thread -> worker -> main thread -> the pool.

/** Payloads up to this size are not worth a pooled buffer (see take()). */
export const SMALL_BYTES = 64 * 1024;

/** Where a channel builds incoming payloads (Channel.usePool), and takes them back. */
export interface PayloadPool {
  take(n: number): Uint8Array;
  /** a payload (or its buffer) that nobody uses any more */
  give(buf: ArrayBufferLike | Uint8Array | undefined): void;
}

export class BufferPool implements PayloadPool {
  private free: ArrayBuffer[] = [];

  /** `capacity`: the size of every pooled buffer; `keep`: how many idle ones to hold. */
  constructor(
    readonly capacity: number,
    private readonly keep: number,
  ) {}

  /** A view of `n` bytes, on a pooled buffer when `n` fits one. */
  take(n: number): Uint8Array {
    // A small payload (a ZERO record, a control message) gets a small buffer of
    // its own: a read of a few hundred KiB can hold thousands of them, and a
    // pooled buffer each (the pool keeps only `keep`) made a receiver of a
    // mostly empty disk allocate a chunk-sized buffer per record, faster than
    // the collector freed them (16 GiB of holes: 800 MiB of RSS in 1.5 s).
    if (n > this.capacity || n <= SMALL_BYTES) return new Uint8Array(n);
    return new Uint8Array(this.free.pop() ?? new ArrayBuffer(this.capacity), 0, n);
  }

  /** A whole pooled buffer. */
  takeBuffer(): ArrayBuffer {
    return this.free.pop() ?? new ArrayBuffer(this.capacity);
  }

  /** Hands a buffer back; ones of another size, or beyond `keep`, are left to the collector. */
  give(buf: ArrayBufferLike | Uint8Array | undefined): void {
    if (ArrayBuffer.isView(buf)) buf = buf.buffer;
    if (buf instanceof ArrayBuffer && buf.byteLength === this.capacity && this.free.length < this.keep) this.free.push(buf);
  }
}

/** Upper bound of a zstd frame holding `n` raw bytes (ZSTD_COMPRESSBOUND). */
export function compressBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0);
}
