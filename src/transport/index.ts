// Chooses a transport by the --stream SPEC's scheme (README "Commands", --stream).
import { TbError } from "../errors.ts";
import { DeviceTransport } from "./device.ts";
import { NetTransport } from "./net.ts";
import { StdioTransport } from "./stdio.ts";
import { UnixTransport, type SocketAccess } from "./unix.ts";
import type { Transport } from "./types.ts";

export type { Conn, Listener, Transport } from "./types.ts";

export interface StreamSpec {
  scheme: "device" | "unix" | "tcp" | "stdio";
  text: string;
}

/**
 * Parses SPEC. `listening` matters for tcp: a listener with no host binds to
 * loopback only; a connector with no host goes to localhost.
 */
export function transportFor(spec: string, listening: boolean, socket: SocketAccess = {}): Transport {
  if (spec === "-") return new StdioTransport();
  if (spec.startsWith("unix:")) {
    const path = spec.slice(5);
    if (!path) throw usage(spec);
    return new UnixTransport(path, socket);
  }
  if (spec.startsWith("tcp:")) {
    const rest = spec.slice(4);
    // tcp:PORT, tcp::PORT, tcp:HOST:PORT, tcp:[v6]:PORT
    const m = /^(?:(?:\[([^\]]+)\]|([^:\[\]]*)):)?(\d+)$/.exec(rest);
    if (!m) throw usage(spec);
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw usage(spec);
    const host = m[1] ?? m[2] ?? "";
    return new NetTransport({ kind: "tcp", host: host || (listening ? "127.0.0.1" : "localhost"), port });
  }
  if (spec.startsWith("/") || spec.startsWith("./") || spec.startsWith("../")) return new DeviceTransport(spec);
  throw usage(spec);
}

function usage(spec: string): TbError {
  return new TbError(
    "USAGE",
    `unknown --stream '${spec}'`,
    "use a device path (/dev/tbstream0), unix:/path, tcp:HOST:PORT or - for stdin/stdout",
  );
}
