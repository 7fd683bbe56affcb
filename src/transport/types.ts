// The one transport interface. A Conn is a reliable-or-not byte pipe in both
// directions; framing, checksums and retries live above it (src/protocol, src/core).

export interface Conn {
  /** Next bytes from the peer, or null at end of stream. Throws TbError("CLOSED") when cut. */
  read(): Promise<Uint8Array | null>;
  /** Optional: the bytes read() gave are no longer needed (their buffer may be reused). */
  release?(chunk: Uint8Array): void;
  /** Writes all of `data` (waits on backpressure). */
  write(data: Uint8Array): Promise<void>;
  /** Closes this side; idempotent. */
  close(): Promise<void>;
  readonly description: string;
  /** True for transports that can lose bytes written before the peer opened (devices). */
  readonly lossy: boolean;
  /**
   * A lossy connection that may be served alongside others: one Thunderbolt
   * peer's device of several (its transport opens it again only once this
   * one is closed). Its sessions count against --max-sessions one by one.
   */
  readonly concurrent?: boolean;
  /** The peer at the other end, when the transport knows it (a Thunderbolt peer's name and XDomain) */
  readonly peer?: string;
}

export interface Listener {
  /** The next session's connection, or null when no more will come. */
  accept(): Promise<Conn | null>;
  close(): Promise<void>;
  readonly description: string;
}

export interface Transport {
  /**
   * For the sides that start a session (push, list, restore). Socket
   * transports keep trying for up to waitMs while nobody listens yet.
   */
  connect(waitMs?: number): Promise<Conn>;
  /** For receive. */
  listen(): Promise<Listener>;
}
