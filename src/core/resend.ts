// Asking for a damaged chunk again (the "resend" capability, docs/PROTOCOL.md
// §8.2a): the receiver's budget of damage it tolerates before it ends the
// session, and the sender's record of where it can go back to.
import { TbError } from "./errors.ts";

/** A chunk asked for this many times fails the session. */
export const MAX_TRIES_PER_CHUNK = 3;
/** More requests than this within a minute fail the session: the link is too bad to go on. */
export const MAX_RESENDS_PER_MINUTE = 10;
const MINUTE_MS = 60_000;
/** A request not answered by the chunk within this long is sent again (it may have been lost itself). */
export const RESEND_REPEAT_MS = 5000;
/** How many chunks back the sender can go (its state before each of them is kept). */
export const REWIND_WINDOW = 8192;

const HINT = "the link damages data: check the cable (and that nothing else uses the stream), then push again; it continues from the last durable point";

/** The receiver's count of damaged chunks: within bounds, each is asked for again. */
export class DamageBudget {
  private tries = new Map<number, number>();
  private recent: number[] = [];

  /** Notes that chunk `index` arrived damaged (`why`): null to ask for it again, or the error that ends the session. */
  note(index: number, why: string, now = Date.now()): TbError | null {
    const tries = (this.tries.get(index) ?? 0) + 1;
    this.tries.set(index, tries);
    // only recent chunks can come back: forget the oldest
    if (this.tries.size > 64) this.tries.delete(this.tries.keys().next().value!);
    this.recent = this.recent.filter((t) => now - t < MINUTE_MS);
    this.recent.push(now);
    if (tries >= MAX_TRIES_PER_CHUNK) return new TbError("CORRUPT", `chunk ${index} arrived damaged ${tries} times (last: ${why})`, HINT);
    if (this.recent.length > MAX_RESENDS_PER_MINUTE) return new TbError("CORRUPT", `${this.recent.length} chunks arrived damaged within a minute (last: chunk ${index}, ${why})`, HINT);
    return null;
  }
}

/** The sender's state before each of the last `keep` chunks it sent, to go back to when one is asked for again. */
export class RewindPoints<T> {
  /** kept from `first` on; the entries before it are dropped in batches (a shift per chunk would copy the lot) */
  private ring: { index: number; state: T }[] = [];
  private first = 0;

  constructor(private readonly keep = REWIND_WINDOW) {}

  /** The state before chunk `index` is sent; any kept for it or later chunks is replaced (they are sent again). */
  save(index: number, state: T): void {
    while (this.ring.length > this.first && this.ring[this.ring.length - 1]!.index >= index) this.ring.pop();
    this.ring.push({ index, state });
    if (this.ring.length - this.first > this.keep) this.first++;
    if (this.first >= this.keep) {
      this.ring.splice(0, this.first);
      this.first = 0;
    }
  }

  /** The state before chunk `index`, forgetting all later ones (it is kept: it may be asked for again); null when it is not kept. */
  take(index: number): T | null {
    for (let i = this.ring.length - 1; i >= this.first; i--) {
      const p = this.ring[i]!;
      if (p.index < index) break;
      if (p.index === index) {
        this.ring.length = i + 1;
        return p.state;
      }
    }
    return null;
  }

  /** how many are kept */
  get size(): number {
    return this.ring.length - this.first;
  }
}
