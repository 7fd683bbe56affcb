// A Conn over a raw blocking descriptor (a device, a unix socket), read and
// written through the fs thread pool. A read is always pending, so the peer's
// EOF (a device's CLOSE, an unplug, a socket's hang-up) is seen even while we
// only write. Read buffers are reused: the channel hands each one back once
// decoded (fresh memory is costly: src/util/buffer-pool.ts).
import * as fs from "node:fs";
import { isErrno } from "../errors.ts";
import type { TbError } from "../errors.ts";
import type { Conn } from "./types.ts";

/** a receiver that catches up with its sender reads what the stream holds in fewer trips through the fs threads (with 256 KiB, 3% more CPU) */
const READ_SIZE = 1024 * 1024;
/** reads kept while the channel does not take them (and spare buffers kept): at most 8 MiB either way */
const MAX_QUEUED = 8;
/** the longest sleep between reads of a silent non-blocking descriptor (and between tries of a write it cannot take) */
const MAX_POLL_MS = 10;
/** polled: a write the descriptor cannot take yet is tried again at once this many times before sleeping (more burn CPU for nothing: scripts/bench-polled-write.ts) */
const WRITE_TRIES = 2;
/**
 * polled: while this side writes (a receiver serving a restore), the longest
 * sleep between reads of a silent peer, for this long after each write. A
 * peer that stops (a restorer whose disk is full) says so and leaves; each
 * millisecond before we read that is another MB sent into a stream nobody
 * reads (a Thunderbolt device still takes writes once its peer has left).
 */
const WRITING_POLL_MS = 2;
const WRITING_FOR_MS = 50;

// Raw fds, not FileHandle: FileHandle.close() waits for pending operations,
// and a read is always pending here.
const readAsync = (fd: number, buf: Uint8Array) =>
  new Promise<number>((resolve, reject) => fs.read(fd, buf, 0, buf.length, null, (e, n) => (e ? reject(e) : resolve(n))));
const writeAsync = (fd: number, buf: Uint8Array, off: number) =>
  new Promise<number>((resolve, reject) => fs.write(fd, buf, off, buf.length - off, null, (e, n) => (e ? reject(e) : resolve(n))));

export interface FdConnOptions {
  description: string;
  lossy: boolean;
  /** the error for a failed read or write */
  gone(e: unknown): TbError;
  /**
   * The descriptor is non-blocking: a read with nothing to read returns at
   * once and is tried again after a short sleep (1 ms, growing to 10 ms while
   * the peer is silent, or to maxPollMs; never past WRITING_POLL_MS while we
   * write). A blocking read would hold one of the fs thread
   * pool's few threads (as many as cores) for as long as the peer is silent,
   * and a receiver serving several connections would starve (no thread left
   * for another session's reads, writes and syncs).
   */
  polled?: boolean;
  /** polled: the longest sleep between reads of a silent descriptor (default MAX_POLL_MS) */
  maxPollMs?: number;
  /** runs on close() before the descriptor is closed (unlock, shutdown) */
  beforeClose?(): void;
}

export function fdConn(fd: number, o: FdConnOptions): Conn {
  const queue: Uint8Array[] = [];
  const spare: ArrayBuffer[] = [];
  let eof = false;
  let failure: TbError | null = null;
  let closed = false;
  let wakeReader: (() => void) | null = null;
  let wakePump: (() => void) | null = null;
  // The descriptor is closed only when no read or write is in flight: a
  // thread-pool read that starts after a close would otherwise hit whatever
  // reuses the number (the next session's socket or device). Once closed,
  // no new read or write starts, so the last one to finish closes it.
  let inFlight = 0;
  const io = async <T>(op: Promise<T>): Promise<T> => {
    inFlight++;
    try {
      return await op;
    } finally {
      if (--inFlight === 0 && closed) fs.close(fd, () => {});
    }
  };
  const wake = () => {
    const w = wakeReader;
    wakeReader = null;
    w?.();
  };

  let idleMs = 1;
  let wroteAt = -Infinity;
  /** ends the pump's sleep between polls early (set while it sleeps) */
  let cutSleep: (() => void) | null = null;
  let sleepingMs = 0;
  const writing = () => performance.now() - wroteAt < WRITING_FOR_MS;
  /** this side writes: a peer that was silent a while is looked at soon again (WRITING_POLL_MS) */
  const noteWrite = () => {
    wroteAt = performance.now();
    if (cutSleep && sleepingMs > WRITING_POLL_MS) cutSleep();
  };
  (async () => {
    while (!closed) {
      if (queue.length >= MAX_QUEUED) {
        await new Promise<void>((r) => (wakePump = r));
        continue;
      }
      const buf = new Uint8Array(spare.pop() ?? new ArrayBuffer(READ_SIZE));
      let n: number;
      try {
        n = await io(readAsync(fd, buf));
        idleMs = 1;
      } catch (e) {
        if (o.polled && isErrno(e, "EAGAIN", "EWOULDBLOCK") && !closed) {
          spare.push(buf.buffer as ArrayBuffer);
          const cap = writing() ? WRITING_POLL_MS : (o.maxPollMs ?? MAX_POLL_MS);
          sleepingMs = Math.min(idleMs, cap);
          await new Promise<void>((r) => {
            const t = setTimeout(r, sleepingMs);
            cutSleep = () => {
              clearTimeout(t);
              r();
            };
          });
          cutSleep = null;
          idleMs = Math.min(cap, idleMs * 2);
          continue;
        }
        if (!closed) failure = o.gone(e);
        break;
      }
      if (n === 0) {
        eof = true;
        break;
      }
      queue.push(buf.subarray(0, n));
      wake();
    }
    wake();
  })();

  return {
    description: o.description,
    lossy: o.lossy,
    async read() {
      for (;;) {
        const c = queue.shift();
        if (c) {
          const p = wakePump as (() => void) | null;
          wakePump = null;
          p?.();
          return c;
        }
        if (failure) throw failure;
        if (eof || closed) return null;
        await new Promise<void>((r) => (wakeReader = r));
      }
    },
    release(chunk) {
      if (chunk.buffer instanceof ArrayBuffer && chunk.buffer.byteLength === READ_SIZE && spare.length < MAX_QUEUED) spare.push(chunk.buffer);
    },
    async write(data) {
      if (failure) throw failure;
      let off = 0;
      let tries = 0;
      let waitMs = 1;
      while (off < data.length) {
        noteWrite(); // (at each try: also while a long write waits for room)
        if (closed) throw o.gone(new Error("closed"));
        try {
          off += await io(writeAsync(fd, data, off));
          tries = 0;
          waitMs = 1;
        } catch (e) {
          if (isErrno(e, "EAGAIN", "EWOULDBLOCK")) {
            // A device says EAGAIN while its TX ring is full, also once the
            // peer has closed (its CLOSE, seen by our read, is the only sign):
            // a blocking write would have failed then, so fail too.
            if (failure) throw failure;
            if (eof) throw o.gone(Object.assign(new Error("the other side closed the stream"), { code: "EPIPE" }));
            // The ring frees a slot every few microseconds while the peer
            // reads: try again at once a few times (each try is a trip through
            // the fs threads) before sleeping, which would leave it idle.
            if (++tries <= WRITE_TRIES) continue;
            await Bun.sleep(waitMs);
            waitMs = Math.min(o.maxPollMs ?? MAX_POLL_MS, waitMs * 2);
            continue;
          }
          throw failure ?? o.gone(e);
        }
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      cutSleep?.();
      wake();
      const p = wakePump as (() => void) | null;
      p?.();
      o.beforeClose?.();
      if (inFlight === 0) fs.close(fd, () => {});
    },
  };
}
