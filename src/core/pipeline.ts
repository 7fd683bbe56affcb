// One ordered, bounded pipeline: per-chunk jobs run on any worker, in any
// order, and their results are handed on strictly in chunk order, with at
// most `limit` jobs outstanding (memory stays bounded whatever the disk size).
// push, receive, restore and verify all feed their chunks through one.

export class OrderedPipeline<T> {
  private queue: { p: Promise<T>; settled: boolean }[] = [];

  /** `settle` gets each result in the order the jobs were added; a throw stops the pipeline there. */
  constructor(
    private readonly limit: number,
    private readonly settle: (result: T) => Promise<void> | void,
  ) {}

  get length(): number {
    return this.queue.length;
  }

  /** Adds a job; waits while more than `limit` are outstanding. */
  async add(p: Promise<T>): Promise<void> {
    const entry = { p, settled: false };
    // a job behind a failed one is never awaited: it must not be an unhandled rejection
    p.then(
      () => (entry.settled = true),
      () => (entry.settled = true),
    );
    this.queue.push(entry);
    while (this.queue.length > this.limit) await this.next();
  }

  /** Hands on the results that are ready, without waiting for the others. */
  async ready(): Promise<void> {
    while (this.queue.length > 0 && this.queue[0]!.settled) await this.next();
  }

  /** Hands on every result. */
  async drain(): Promise<void> {
    while (this.queue.length > 0) await this.next();
  }

  private async next(): Promise<void> {
    const { p } = this.queue.shift()!;
    await this.settle(await p);
  }
}
