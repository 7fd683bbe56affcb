// unix:PATH and tcp:HOST:PORT transports over node:net.
import * as net from "node:net";
import * as fs from "node:fs";
import * as path from "node:path";
import { TbError, errnoText, isErrno } from "../errors.ts";
import type { Conn, Listener, Transport } from "./types.ts";
import { streamConn } from "./stream-conn.ts";

export type NetAddress = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

export function describe(a: NetAddress): string {
  return a.kind === "unix" ? `unix:${a.path}` : `tcp:${a.host}:${a.port}`;
}

export class NetTransport implements Transport {
  constructor(readonly address: NetAddress) {}

  async connect(waitMs = 0): Promise<Conn> {
    const desc = describe(this.address);
    const attempt = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const opts = this.address.kind === "unix" ? { path: this.address.path } : { host: this.address.host, port: this.address.port };
        const s = net.connect(opts as net.NetConnectOpts);
        s.once("connect", () => resolve(s));
        s.once("error", (e) => reject(e));
      });
    const sock = await connectRetrying(desc, waitMs, attempt);
    sock.setNoDelay?.(true);
    return streamConn(sock, sock, desc, false, () => sock.destroy());
  }

  async listen(): Promise<Listener> {
    const desc = describe(this.address);
    if (this.address.kind === "unix") removeStaleSocket(this.address.path);
    const server = net.createServer({ pauseOnConnect: false });
    const queue: net.Socket[] = [];
    const waiters: ((s: net.Socket | null) => void)[] = [];
    let closed = false;
    server.on("connection", (s) => {
      const w = waiters.shift();
      if (w) w(s);
      else queue.push(s);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      if (this.address.kind === "unix") server.listen(path.resolve(this.address.path), () => resolve());
      else server.listen(this.address.port, this.address.host, () => resolve());
    }).catch((e: unknown) => {
      if (isErrno(e, "EADDRINUSE")) throw inUse(desc);
      throw new TbError("DEST", `cannot listen on ${desc}: ${errnoText(e)}`, "check the path or port and permissions");
    });
    const sockPath = this.address.kind === "unix" ? this.address.path : null;
    return {
      description: desc,
      accept: () => {
        const s = queue.shift();
        if (s) return Promise.resolve(streamConn(s, s, desc, false, () => s.destroy()));
        if (closed) return Promise.resolve(null);
        return new Promise<Conn | null>((resolve) =>
          waiters.push((sock) => resolve(sock ? streamConn(sock, sock, desc, false, () => sock.destroy()) : null)),
        );
      },
      close: async () => {
        if (closed) return;
        closed = true;
        for (const w of waiters.splice(0)) w(null);
        await new Promise<void>((r) => server.close(() => r()));
        if (sockPath) fs.rmSync(sockPath, { force: true });
      },
    };
  }
}

/**
 * Connects with `attempt`, trying again for up to `waitMs` while nobody
 * listens yet (the receiver may still be starting: wait, like a cable) or
 * the listener's queue is full.
 */
export async function connectRetrying<T>(desc: string, waitMs: number, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await attempt();
    } catch (e) {
      const waiting = isErrno(e, "ENOENT", "ECONNREFUSED", "EAGAIN");
      if (waiting && Date.now() < deadline) {
        await Bun.sleep(250);
        continue;
      }
      const hint = `start 'tbbackup receive --stream ${desc}' on the other side first, then retry`;
      if (isErrno(e, "EAGAIN")) throw new TbError("CLOSED", `the receiver on ${desc} takes no more connections (its queue is full)`, "the receiver may be stuck: restart it, then run the command again");
      if (waiting) throw new TbError("CLOSED", `nobody is listening on ${desc}`, hint);
      throw new TbError("CLOSED", `cannot connect to ${desc}: ${errnoText(e)}`, hint);
    }
  }
}

export function inUse(desc: string): TbError {
  return new TbError("BUSY", `${desc} is already in use`, "another receiver may be running; stop it or pick another address");
}

/**
 * A socket file left by a receiver that died is removed; one a live process
 * listens on is in use (read from /proc/net/unix, so that a probe does not
 * count as a session on that receiver).
 */
export function removeStaleSocket(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new TbError("DEST", `${file} exists and is not a socket`, "choose another path for the unix socket");
  if (isListening(file)) throw inUse(`unix:${file}`);
  fs.rmSync(file, { force: true });
}

/**
 * Whether a live process listens on the unix socket file at `file`: the
 * listening sockets of /proc/net/unix, compared with it as files (so that
 * symlinks and relative names do not matter).
 */
function isListening(file: string): boolean {
  let me: fs.Stats;
  let text: string;
  try {
    me = fs.statSync(file);
    text = fs.readFileSync("/proc/net/unix", "utf8");
  } catch {
    return false;
  }
  // Num RefCount Protocol Flags Type St Inode Path (the path may hold spaces);
  // flag 0x10000 is "accepting connections"
  for (const line of text.split("\n").slice(1)) {
    const m = /^\s*\S+\s+\S+\s+\S+\s+([0-9A-Fa-f]+)\s+\S+\s+\S+\s+\S+\s+(\/.*)$/.exec(line);
    if (!m || (parseInt(m[1]!, 16) & 0x10000) === 0) continue;
    try {
      const st = fs.statSync(m[2]!);
      if (st.dev === me.dev && st.ino === me.ino) return true;
    } catch {}
  }
  return false;
}
