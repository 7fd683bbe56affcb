// A device path (/dev/tbstreamX, a pty, a virtio-serial port, a FIFO) opened
// O_RDWR with blocking reads and writes through the fs thread pool. A read is
// always pending, so the peer's CLOSE (EOF) or an unplug (ENXIO) is seen even
// while we only write (DESIGN §2: only a reader notices the peer leaving).
import * as fs from "node:fs";
import { TbError, errnoText, isErrno } from "../core/errors.ts";
import type { Conn, Listener, Transport } from "./types.ts";

const READ_SIZE = 256 * 1024;
const MAX_QUEUED = 32;

export async function openDevice(path: string): Promise<Conn> {
  let fd: number;
  try {
    fd = await new Promise<number>((resolve, reject) => fs.open(path, "r+", (e, n) => (e ? reject(e) : resolve(n))));
  } catch (e) {
    if (isErrno(e, "ENOENT")) throw new TbError("STREAM_SETUP", `${path} does not exist`, "check the device path (tbbackup streams lists them)");
    if (isErrno(e, "EINVAL")) throw new TbError("STREAM_SETUP", `${path}: stream not configured (EINVAL at open)`, "set the stream's HopIDs, or run without --stream to let tbbackup configure it");
    if (isErrno(e, "ENXIO")) throw new TbError("CLOSED", `${path}: no peer attached (ENXIO)`, "plug the cable and start tbbackup on the other machine");
    if (isErrno(e, "EACCES", "EPERM")) throw new TbError("STREAM_SETUP", `${path}: permission denied`, "run tbbackup as root");
    throw new TbError("STREAM_SETUP", `cannot open ${path}: ${errnoText(e)}`, "check the device path");
  }
  return deviceConn(fd, path);
}

function gone(path: string, e: unknown): TbError {
  if (isErrno(e, "ENXIO", "EIO", "ENODEV", "EPIPE"))
    return new TbError("CLOSED", `${path}: cable unplugged or peer gone (${(e as NodeJS.ErrnoException).code})`, "the transfer is incomplete; reconnect the cable and run the command again");
  return new TbError("CLOSED", `${path}: ${errnoText(e)}`, "the transfer is incomplete; run the command again");
}

// Raw fds, not FileHandle: FileHandle.close() waits for pending operations,
// and a read is always pending here.
const readAsync = (fd: number, buf: Uint8Array) =>
  new Promise<number>((resolve, reject) => fs.read(fd, buf, 0, buf.length, null, (e, n) => (e ? reject(e) : resolve(n))));
const writeAsync = (fd: number, buf: Uint8Array, off: number) =>
  new Promise<number>((resolve, reject) => fs.write(fd, buf, off, buf.length - off, null, (e, n) => (e ? reject(e) : resolve(n))));

function deviceConn(fd: number, path: string): Conn {
  const queue: Uint8Array[] = [];
  let eof = false;
  let failure: TbError | null = null;
  let closed = false;
  let wakeReader: (() => void) | null = null;
  let wakePump: (() => void) | null = null;
  const wake = () => {
    const w = wakeReader;
    wakeReader = null;
    w?.();
  };

  (async () => {
    while (!closed) {
      if (queue.length >= MAX_QUEUED) {
        await new Promise<void>((r) => (wakePump = r));
        continue;
      }
      const buf = new Uint8Array(READ_SIZE);
      let n: number;
      try {
        n = await readAsync(fd, buf);
      } catch (e) {
        if (!closed) failure = gone(path, e);
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
    description: path,
    lossy: true,
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
    async write(data) {
      if (failure) throw failure;
      let off = 0;
      while (off < data.length) {
        try {
          off += await writeAsync(fd, data, off);
        } catch (e) {
          if (isErrno(e, "EAGAIN")) {
            await Bun.sleep(1);
            continue;
          }
          throw failure ?? gone(path, e);
        }
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      wake();
      const p = wakePump as (() => void) | null;
      p?.();
      fs.close(fd, () => {});
    },
  };
}

export class DeviceTransport implements Transport {
  constructor(readonly path: string) {}
  connect(): Promise<Conn> {
    return openDevice(this.path);
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
