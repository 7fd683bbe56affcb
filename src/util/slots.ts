// A counting semaphore: at most `size` runs at once, the others wait their
// turn in order. receive bounds the sessions of its Thunderbolt peers with it
// (each peer's device stays open between sessions, so connections cannot be the count).

export class Slots {
  private used = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly size: number) {}

  get inUse(): number {
    return this.used;
  }

  /** Runs `fn` in a slot; `onWait` is called once when it has to wait for one. */
  async run<T>(fn: () => Promise<T>, onWait?: () => void): Promise<T> {
    if (this.used < this.size) this.used++;
    else {
      onWait?.();
      // the run that ends hands its slot over: nobody arriving meanwhile takes it first
      await new Promise<void>((r) => this.waiting.push(r));
    }
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.used--;
    }
  }
}
