// unix:PATH and tcp:HOST:PORT transports over node:net.
import * as net from "node:net";
import * as fs from "node:fs";
import { TbError, errnoText, isErrno } from "../core/errors.ts";
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
    const deadline = Date.now() + waitMs;
    const attempt = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const opts = this.address.kind === "unix" ? { path: this.address.path } : { host: this.address.host, port: this.address.port };
        const s = net.connect(opts as net.NetConnectOpts);
        s.once("connect", () => resolve(s));
        s.once("error", (e) => reject(e));
      });
    let sock: net.Socket;
    for (;;) {
      try {
        sock = await attempt();
        break;
      } catch (e) {
        // Nobody listening yet: the receiver may still be starting. Wait, like a cable.
        if (isErrno(e, "ENOENT", "ECONNREFUSED") && Date.now() < deadline) {
          await Bun.sleep(250);
          continue;
        }
        const hint = `start 'tbbackup receive --stream ${desc}' on the other side first, then retry`;
        if (isErrno(e, "ENOENT", "ECONNREFUSED")) throw new TbError("CLOSED", `nobody is listening on ${desc}`, hint);
        throw new TbError("CLOSED", `cannot connect to ${desc}: ${errnoText(e)}`, hint);
      }
    }
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
      if (this.address.kind === "unix") server.listen(this.address.path, () => resolve());
      else server.listen(this.address.port, this.address.host, () => resolve());
    }).catch((e: unknown) => {
      if (isErrno(e, "EADDRINUSE")) throw new TbError("BUSY", `${desc} is already in use`, "another receiver may be running; stop it or pick another address");
      throw new TbError("DEST", `cannot listen on ${desc}: ${errnoText(e)}`, "check the path or port and permissions");
    });
    const path = this.address.kind === "unix" ? this.address.path : null;
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
        if (path) fs.rmSync(path, { force: true });
      },
    };
  }
}

/** A socket file left by a receiver that died is removed; a live one is not touched. */
function removeStaleSocket(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new TbError("DEST", `${path} exists and is not a socket`, "choose another path for the unix socket");
  fs.rmSync(path, { force: true });
}
