// One keepalive for the three sessions that must tell a waiting peer "still at
// it" (docs/PROTOCOL.md, PROGRESS): a sender re-reading a resumed prefix, a
// receiver storing a push, a restore syncing and reading back its target.

export interface Keepalive {
  /** stops the timer; resolves once a send under way has settled (it never rejects) */
  stop(): Promise<void>;
  /** whether a send failed (no more are made then) */
  readonly failed: boolean;
  /** the error of the send that failed */
  readonly error: unknown;
}

export interface KeepaliveOptions {
  /** a count of work done: when it has not changed since the last tick, nothing is sent (a hung host goes quiet) */
  moved?: () => number;
  /** send once at the start too, not only after the first interval */
  now?: boolean;
}

/**
 * Calls `send` every `everyMs` while started. A tick while the last send is
 * still under way sends nothing (a peer that stopped reading gets no pile of
 * them); the first failed send stops the sending and is kept in `error`.
 */
export function startKeepalive(send: () => Promise<void>, everyMs: number, opts: KeepaliveOptions = {}): Keepalive {
  let busy: Promise<void> | null = null;
  let stopped = false;
  let seen = opts.moved?.();
  const state = { failed: false, error: undefined as unknown };
  const tick = (): void => {
    if (busy || stopped || state.failed) return;
    if (opts.moved) {
      const n = opts.moved();
      if (n === seen) return;
      seen = n;
    }
    let sending: Promise<void>;
    try {
      sending = send();
    } catch (e) {
      sending = Promise.reject(e);
    }
    busy = sending.then(
      () => {
        busy = null;
      },
      (e: unknown) => {
        busy = null;
        if (!state.failed) Object.assign(state, { failed: true, error: e });
      },
    );
  };
  if (opts.now) tick();
  const timer = setInterval(tick, everyMs);
  return {
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await busy;
    },
    get failed() {
      return state.failed;
    },
    get error() {
      return state.error;
    },
  };
}
