// A device path (/dev/tbstreamX, a pty, a virtio-serial port, a FIFO) opened
// O_RDWR with blocking reads and writes (fd-conn.ts); a receiver serving
// several Thunderbolt peers makes it non-blocking and polls it instead
// (transport/thunderbolt.ts: a blocked read would hold a thread of the fs
// pool per idle peer). A read is always
// pending, so the peer's CLOSE (EOF) or an unplug (ENXIO) is seen even while
// we only write (README, "Thunderbolt stream setup", step 5: only a reader
// notices the peer leaving).
// The device is not exclusive (a second opener shares the rings and steals
// frames), so we refuse one another process holds open and take an flock.
import * as fs from "node:fs";
import { LOCK_EX, LOCK_NB, LOCK_UN, loadLibc } from "../util/libc.ts";
import { TbError, errnoText, isErrno, outcome } from "../errors.ts";
import { describeHolders, holdersOf } from "../util/holders.ts";
import type { Conn, Listener, Transport } from "./types.ts";
import { fdConn } from "./fd-conn.ts";
import { inEmulatedTree } from "../util/sysroot.ts";

/** How long a connecting side waits for open() (it blocks until the peer is attached). */
export const CONNECT_OPEN_TIMEOUT_MS = 60_000;

type FlockFn = (fd: number, op: number) => number;

/** polled devices: the longest sleep between reads while the peer is silent */
const IDLE_POLL_MS = 100;

/** libc flock(); null where it cannot be loaded (the /proc scan still guards). */
async function loadFlock(): Promise<FlockFn | null> {
  const libc = await loadLibc();
  return libc ? (fd, op) => libc.flock(fd, op) : null;
}

function isPty(path: string): boolean {
  try {
    return fs.realpathSync(path).startsWith("/dev/pts/");
  } catch {
    return false;
  }
}

function busy(path: string, who: string): TbError {
  return new TbError(
    "BUSY",
    `${path} is already open by process ${who}; a second process on one stream would steal its data`,
    "stop that process (or wait for it to finish) and run the command again",
  );
}

function openError(path: string, e: unknown): TbError {
  if (isErrno(e, "ENOENT")) return new TbError("STREAM_SETUP", `${path} does not exist`, "check the device path (tbbackup streams lists them)");
  if (isErrno(e, "EINVAL")) return new TbError("STREAM_SETUP", `${path}: stream not configured (EINVAL at open: its HopIDs are not set)`, "set the stream's HopIDs, or run without --stream to let tbbackup configure it");
  if (isErrno(e, "ENXIO")) return new TbError("CLOSED", `${path}: no peer attached (ENXIO): cable unplugged or the stream was removed`, "plug the cable and start tbbackup on the other machine");
  if (isErrno(e, "EACCES", "EPERM")) return new TbError("STREAM_SETUP", `${path}: permission denied`, "run tbbackup as root");
  if (isErrno(e, "ENOMEM")) return new TbError("STREAM_SETUP", `${path}: the driver could not allocate its rings (ENOMEM)`, "use a smaller --ring-size or close other streams");
  return new TbError("STREAM_SETUP", `cannot open ${path}: ${errnoText(e)}`, "check the device path");
}

/**
 * Opens `path` once (never close-and-reopen to retry: README "Thunderbolt stream setup"). With
 * `timeoutMs`, an open that blocks longer (no peer attached) gives TIMEOUT.
 * `polled`: once open, the descriptor is made non-blocking and read without
 * holding a thread (FdConnOptions.polled): a receiver serving several
 * peers' devices would otherwise have every fs thread waiting in a read.
 */
export async function openDevice(path: string, timeoutMs: number | null = null, polled = false): Promise<Conn> {
  // A stream is a character device (tbstream, a serial port, a pty) or a FIFO.
  // Anything else - a disk given by mistake - would get protocol frames written into it.
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(path);
  } catch {} // a missing path: the open below says so
  if (st && !st.isCharacterDevice() && !st.isFIFO() && !inEmulatedTree(path)) {
    const what = st.isBlockDevice() ? "a block device (a disk)" : st.isDirectory() ? "a directory" : st.isFile() ? "a regular file" : "not a character device";
    throw new TbError("USAGE", `--stream ${path} is ${what}, not a stream; nothing was written to it`, "give the tbstream device ('tbbackup streams' lists them), a serial port or pty, a FIFO, or unix:PATH / tcp:HOST:PORT");
  }
  // A pty's other holder is the program that made it (socat, the test cable):
  // for ptys only the lock counts.
  const pty = isPty(path);
  const others = pty ? [] : holdersOf(path);
  if (others.length) throw busy(path, describeHolders(others));
  let fd: number;
  try {
    fd = await new Promise<number>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      let late = false;
      if (timeoutMs !== null)
        timer = setTimeout(() => {
          late = true;
          reject(new TbError("TIMEOUT", `${path} did not open within ${Math.round(timeoutMs / 1000)} s: the peer is not attached`, "check the cable and that tbbackup runs on the other machine"));
        }, timeoutMs);
      fs.open(path, "r+", (e, n) => {
        if (timer) clearTimeout(timer);
        if (late) {
          if (!e) fs.close(n, () => {});
          return;
        }
        if (e) reject(e);
        else resolve(n);
      });
    });
  } catch (e) {
    throw e instanceof TbError ? e : openError(path, e);
  }
  const flock = await loadFlock();
  if (flock && flock(fd, LOCK_EX | LOCK_NB) !== 0) {
    fs.closeSync(fd);
    const hs = holdersOf(path);
    throw busy(path, hs.length ? describeHolders(hs) : "another process (it holds the lock)");
  }
  // Someone that does not lock (cat, dd) may have opened it meanwhile; a
  // tbbackup that lost the lock race closes within moments, so look twice.
  for (let i = 0; i < 2 && !pty; i++) {
    const hs = holdersOf(path);
    if (!hs.length) break;
    if (i === 1) {
      fs.closeSync(fd);
      throw busy(path, describeHolders(hs));
    }
    await Bun.sleep(200);
  }
  if (polled) {
    const libc = await loadLibc();
    if (!libc || libc.makeNonBlocking(fd) !== 0) {
      flock?.(fd, LOCK_UN);
      fs.closeSync(fd);
      throw new TbError("STREAM_SETUP", `cannot make ${path} non-blocking (fcntl failed)`, "pass --stream to serve that one device alone");
    }
  }
  return deviceConn(fd, path, flock, polled);
}

function gone(path: string, e: unknown): TbError {
  if (isErrno(e, "ENXIO", "EIO", "ENODEV", "EPIPE"))
    return new TbError("CLOSED", `${path}: cable unplugged or peer gone (${(e as NodeJS.ErrnoException).code})`, "reconnect the cable and run the command again", [], outcome.incomplete("transfer"));
  return new TbError("CLOSED", `${path}: ${errnoText(e)}`, "run the command again", [], outcome.incomplete("transfer"));
}

function deviceConn(fd: number, path: string, flock: FlockFn | null, polled: boolean): Conn {
  return fdConn(fd, {
    description: path,
    lossy: true,
    polled,
    // an idle peer's device (a keeper has several) is looked at 10 times a second, not 100;
    // the backoff reaches that only after 127 ms of silence, never inside a busy session
    maxPollMs: IDLE_POLL_MS,
    gone: (e) => gone(path, e),
    // The pending read keeps the file open until it returns; drop the lock
    // now so this process can open the device again for the next session.
    beforeClose: () => flock?.(fd, LOCK_UN),
  });
}

export class DeviceTransport implements Transport {
  constructor(readonly path: string) {}
  /** `waitMs` (--wait, rd.tbbackup.timeout): how long open() may block while the peer is not attached */
  connect(waitMs?: number): Promise<Conn> {
    return openDevice(this.path, waitMs && waitMs > 0 ? waitMs : CONNECT_OPEN_TIMEOUT_MS);
  }
  async listen(): Promise<Listener> {
    let stopped = false;
    return {
      description: this.path,
      accept: async () => (stopped ? null : openDevice(this.path)),
      close: async () => {
        stopped = true;
      },
    };
  }
}
