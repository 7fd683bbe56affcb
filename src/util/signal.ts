// A one-shot event that many sends can race without leaving anything behind:
// racing a long-lived promise instead attaches a reaction per call that stays
// until it settles (about 100 bytes a chunk, gigabytes over a large disk).

export class Signal {
  private fired = false;
  private waiters = new Set<() => void>();

  get isFired(): boolean {
    return this.fired;
  }

  /** races still waiting on it */
  get pending(): number {
    return this.waiters.size;
  }

  fire(): void {
    if (this.fired) return;
    this.fired = true;
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  /**
   * True once `p` has settled (its rejection is passed on), false if the
   * signal fired first; either way nothing of this call is kept.
   */
  race(p: Promise<unknown>): Promise<boolean> {
    if (this.fired) {
      p.catch(() => {});
      return Promise.resolve(false);
    }
    return new Promise<boolean>((resolve, reject) => {
      const stop = () => resolve(false);
      this.waiters.add(stop);
      p.then(
        () => {
          this.waiters.delete(stop);
          resolve(true);
        },
        (e) => {
          this.waiters.delete(stop);
          reject(e);
        },
      );
    });
  }
}
