// unix:PATH as plain blocking socket descriptors (made through libc), read and
// written like a device (fd-conn.ts) into reused buffers. Bun's node:net hands
// every read over in a freshly allocated buffer, which cost the receiving side
// about a third of its CPU time here. Falls back to node:net where libc cannot
// be loaded.
import * as fs from "node:fs";
import * as path from "node:path";
import { constants } from "node:os";
import { TbError, errnoText, isErrno, outcome } from "../errors.ts";
import { AF_UNIX, SHUT_RDWR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, loadLibc, type Libc } from "../util/libc.ts";
import { fdConn } from "./fd-conn.ts";
import { NetTransport, connectRetrying, inUse, removeStaleSocket } from "./net.ts";
import type { Conn, Listener, Transport } from "./types.ts";

/** How often an idle listener looks for a connection: soon after one, then every 100 ms. */
const ACCEPT_POLL_MS = [10, 20, 50, 100];

/** An errno from libc as the Error node's fs would throw. */
function errnoError(n: number, call: string): NodeJS.ErrnoException {
  const name = Object.entries(constants.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
  return Object.assign(new Error(`${name}: ${call}`), { code: name, errno: n });
}

/** struct sockaddr_un for `path` (at most 107 bytes). */
function sockaddr(path: string): Uint8Array {
  const p = new TextEncoder().encode(path);
  if (p.length > 107) throw new TbError("USAGE", `the socket path ${path} is longer than 107 bytes`, "use a shorter path for unix:PATH");
  const a = new Uint8Array(2 + 108);
  new DataView(a.buffer).setUint16(0, AF_UNIX, true);
  a.set(p, 2);
  return a;
}

/** Who may connect to a listening socket: its owner only (0600), or also this group (0660). */
export interface SocketAccess {
  gid?: number;
}

/** Sets the socket file's mode (and group) after it is bound. */
function restrictSocket(file: string, access: SocketAccess): void {
  try {
    if (access.gid !== undefined) fs.chownSync(file, process.getuid?.() ?? -1, access.gid);
    fs.chmodSync(file, access.gid !== undefined ? 0o660 : 0o600);
  } catch (e) {
    throw new TbError("DEST", `cannot set who may connect to unix:${file}: ${errnoText(e)}`, access.gid !== undefined ? "check that this user may give the socket to that group (root, or a member of it)" : "check the path and permissions");
  }
}

export class UnixTransport implements Transport {
  constructor(
    readonly path: string,
    readonly access: SocketAccess = {},
  ) {}

  private get description(): string {
    return `unix:${this.path}`;
  }

  /** `polled`: a receiver's connection, read without blocking (see FdConnOptions.polled) */
  private conn(libc: Libc, fd: number, polled = false): Conn {
    return fdConn(fd, {
      description: this.description,
      lossy: false,
      polled,
      gone: (e) =>
        isErrno(e, "EPIPE", "ECONNRESET")
          ? new TbError("CLOSED", `the other side closed ${this.description}`, "check the other side's message and run again", [], outcome.incomplete("backup"))
          : new TbError("CLOSED", `the stream ${this.description} was cut (${errnoText(e)})`, "check the connection and run the command again", [], outcome.incomplete("backup")),
      // wakes our own pending read, and tells the peer we are gone
      beforeClose: () => libc.shutdown(fd, SHUT_RDWR),
    });
  }

  /**
   * One connection attempt. The socket does not block while connecting (a
   * receiver whose queue is full would otherwise freeze this thread, its
   * timers and its signal handlers), then it does.
   */
  private async attempt(libc: Libc, addr: Uint8Array): Promise<number> {
    const fd = libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw errnoError(libc.errno(), "socket");
    if (libc.connect(fd, addr) === 0 && libc.makeBlocking(fd) === 0) return fd;
    const e = errnoError(libc.errno(), "connect");
    fs.closeSync(fd);
    throw e;
  }

  async connect(waitMs = 0): Promise<Conn> {
    const libc = await loadLibc();
    if (!libc) return new NetTransport({ kind: "unix", path: this.path }).connect(waitMs);
    const addr = sockaddr(path.resolve(this.path));
    return this.conn(libc, await connectRetrying(this.description, waitMs, () => this.attempt(libc, addr)));
  }

  async listen(): Promise<Listener> {
    const libc = await loadLibc();
    if (!libc) {
      // (node:net binds with the process umask: restricted just after, not atomically)
      const l = await new NetTransport({ kind: "unix", path: this.path }).listen();
      restrictSocket(this.path, this.access);
      return l;
    }
    const desc = this.description;
    // bound by its absolute name, which is how /proc/net/unix will show it
    const addr = sockaddr(path.resolve(this.path));
    removeStaleSocket(this.path);
    const fd = libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw new TbError("DEST", `cannot listen on ${desc}: ${errnoText(errnoError(libc.errno(), "socket"))}`, "check the path and permissions");
    // Bound under umask 0177, so the socket is never connectable by others, not even for a moment.
    const umask = process.umask(0o177);
    let failure: NodeJS.ErrnoException | null = null;
    try {
      if (libc.bind(fd, addr) !== 0 || libc.listen(fd, 64) !== 0) failure = errnoError(libc.errno(), "bind");
    } finally {
      process.umask(umask);
    }
    if (failure) {
      const e = failure;
      fs.closeSync(fd);
      if (isErrno(e, "EADDRINUSE")) throw inUse(desc);
      throw new TbError("DEST", `cannot listen on ${desc}: ${errnoText(e)}`, "check the path and permissions");
    }
    const file = this.path;
    try {
      restrictSocket(file, this.access);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw e;
    }
    let closed = false;
    return {
      description: desc,
      // The listening socket does not block: poll it, so the event loop stays free.
      accept: async () => {
        for (let tries = 0; !closed; tries++) {
          // non-blocking from accept4: a receiver serves several connections at once, and none may hold a thread of the pool while it is silent
          const c = libc.accept(fd);
          if (c >= 0) return this.conn(libc, c, true);
          const e = errnoError(libc.errno(), "accept");
          if (!isErrno(e, "EAGAIN", "EWOULDBLOCK", "EINTR", "ECONNABORTED")) throw new TbError("DEST", `cannot accept on ${desc}: ${errnoText(e)}`, "restart the receiver");
          await Bun.sleep(ACCEPT_POLL_MS[Math.min(tries, ACCEPT_POLL_MS.length - 1)]!);
        }
        return null;
      },
      close: async () => {
        if (closed) return;
        closed = true;
        fs.closeSync(fd);
        fs.rmSync(file, { force: true });
      },
    };
  }
}
