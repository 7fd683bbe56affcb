// Chunk-sized buffers that worker threads read and write in place. Handing a
// buffer of about a MiB to a worker and back costs some 0.1 ms of CPU per
// round trip in Bun, transferred or shared alike (measured here: 145 us for
// 1 MiB against 40 us for a few bytes): over a 1 GiB disk that was a tenth
// of a push's CPU time. So these buffers live in SharedArrayBuffers (arenas)
// that each worker is handed once, when the arena is made; a job then names
// the bytes it works on (a SlotRef: arena, offset, length) and nothing large
// crosses between threads.
//
// A slot is given out by take() and must come back through give() only once
// every thread is done with it: the caller's pipeline decides that (a reply
// from the worker, a write that completed). Arenas are added as needed and
// kept until the SharedSlots is dropped (with the session and its workers).
import { ptr } from "bun:ffi";
import { SMALL_BYTES, type PayloadPool } from "./buffer-pool.ts";

/** Bytes in an arena a worker already holds. */
export interface SlotRef {
  arena: number;
  at: number;
  length: number;
}

/** Slot starts are aligned to this (an O_DIRECT read into a slot needs no bounce buffer). */
const ALIGN = 4096;

let nextArena = 1;

interface Arena {
  id: number;
  sab: SharedArrayBuffer;
  /** byte offset of slot 0 (aligned) */
  base: number;
  /** per slot: given out */
  taken: Uint8Array;
}

export class SharedSlots {
  readonly slotSize: number;
  private readonly arenas: Arena[] = [];
  private readonly bySab = new Map<SharedArrayBuffer, Arena>();
  private readonly free: { arena: Arena; slot: number }[] = [];
  private readonly sinks: ((id: number, sab: SharedArrayBuffer) => void)[] = [];

  /** `capacity`: the bytes each slot holds; `perArena`: slots added at a time. */
  constructor(
    readonly capacity: number,
    private readonly perArena = 8,
  ) {
    if (!Number.isSafeInteger(capacity) || capacity <= 0 || !Number.isSafeInteger(perArena) || perArena <= 0) throw new RangeError(`bad slot size ${capacity} x ${perArena}`);
    this.slotSize = Math.ceil(capacity / ALIGN) * ALIGN;
  }

  /**
   * Calls `send` for every arena, now and as they are made (WorkerPool.share
   * hands them to its workers); returns what stops it (the workers are gone).
   */
  shareWith(send: (id: number, sab: SharedArrayBuffer) => void): () => void {
    this.sinks.push(send);
    for (const a of this.arenas) send(a.id, a.sab);
    return () => {
      const i = this.sinks.indexOf(send);
      if (i >= 0) this.sinks.splice(i, 1);
    };
  }

  /** A whole free slot (`capacity` bytes, the first `n` when given), its contents left from its last use. */
  take(n = this.capacity): Uint8Array {
    if (n > this.capacity) throw new RangeError(`${n} bytes do not fit a slot of ${this.capacity}`);
    if (this.free.length === 0) this.grow();
    const { arena, slot } = this.free.pop()!;
    arena.taken[slot] = 1;
    return new Uint8Array(arena.sab, arena.base + slot * this.slotSize, n);
  }

  /**
   * Hands a slot back by any view of its bytes. A view of no slot here is
   * ignored (a small payload's own buffer); a slot handed back twice is a bug
   * that would let two chunks share memory, and throws.
   */
  give(view: Uint8Array): void {
    const found = this.slotOf(view);
    if (!found) return;
    const { arena, slot } = found;
    if (!arena.taken[slot]) throw new Error(`slot ${slot} of arena ${arena.id} handed back twice`);
    arena.taken[slot] = 0;
    this.free.push({ arena, slot });
  }

  /** Hands a slot back by a reference to its bytes (see give). */
  giveRef(ref: SlotRef): void {
    const arena = this.arenas.find((a) => a.id === ref.arena);
    if (arena) this.give(new Uint8Array(arena.sab, ref.at, ref.length));
  }

  /** The reference a worker resolves to `view`'s bytes, or null when they are in no slot here. */
  ref(view: Uint8Array): SlotRef | null {
    const found = this.slotOf(view);
    return found ? { arena: found.arena.id, at: view.byteOffset, length: view.length } : null;
  }

  private slotOf(view: Uint8Array): { arena: Arena; slot: number } | null {
    const arena = view.buffer instanceof SharedArrayBuffer ? this.bySab.get(view.buffer) : undefined;
    if (!arena) return null;
    const slot = Math.floor((view.byteOffset - arena.base) / this.slotSize);
    if (slot < 0 || slot >= arena.taken.length || view.byteOffset + view.length > arena.base + (slot + 1) * this.slotSize) return null;
    return { arena, slot };
  }

  private grow(): void {
    const sab = new SharedArrayBuffer(this.perArena * this.slotSize + ALIGN);
    const skew = ptr(new Uint8Array(sab, 0, 1)) % ALIGN;
    const arena: Arena = { id: nextArena++, sab, base: skew === 0 ? 0 : ALIGN - skew, taken: new Uint8Array(this.perArena) };
    this.arenas.push(arena);
    this.bySab.set(sab, arena);
    for (let s = this.perArena - 1; s >= 0; s--) this.free.push({ arena, slot: s });
    for (const send of this.sinks) send(arena.id, sab);
  }
}

/**
 * Payload buffers for a channel (Channel.usePool) in shared slots: a payload
 * too large for a small buffer of its own, and small enough for a slot, is
 * built in one, so a worker can check it where it lies.
 */
export class SlotPayloads implements PayloadPool {
  constructor(readonly slots: SharedSlots) {}

  /** (a small payload gets a buffer of its own: handing it over costs little) */
  take(n: number): Uint8Array {
    return n > SMALL_BYTES && n <= this.slots.capacity ? this.slots.take(n) : new Uint8Array(n);
  }

  /** Only a payload's own view finds its slot: its buffer is the whole arena. */
  give(buf: ArrayBufferLike | Uint8Array | undefined): void {
    if (buf instanceof Uint8Array) this.slots.give(buf);
  }
}
