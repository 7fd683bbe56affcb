// The receiver's answers to list and restore requests (only with --allow-restore).
import { MsgType, type Hello, type HelloAck } from "../protocol/messages.ts";
import type { Frame } from "../protocol/frame.ts";
import { Channel } from "./channel.ts";
import { hostIdentity } from "./identity.ts";
import type { Reporter } from "./report.ts";
import { CAPABILITIES, PROTOCOL_VERSION, TOOL } from "./version.ts";
import { listBackups } from "./catalogue.ts";
import type { SessionResult } from "./receive.ts";

export interface ServeOptions {
  out: string;
  allowRestore: boolean;
  idleMs: number;
  reporter: Reporter;
}

export async function serveRequest(ch: Channel, hello: Hello, opts: ServeOptions): Promise<{ result: SessionResult; carried: Frame | null }> {
  if (!opts.allowRestore) {
    const message = `this receiver does not serve ${hello.role} requests`;
    await ch.sendJson(MsgType.ERROR, { session: hello.session, code: "REFUSED", message: `${message}; restart it with --allow-restore` });
    opts.reporter.info(`refused a ${hello.role} request from ${hello.host?.hostname}: started without --allow-restore`);
    return { result: { ok: false, role: hello.role, host: hello.host?.hostname, error: { code: "REFUSED", message } }, carried: null };
  }
  const ack: HelloAck = { protocol: "tbbackup", proto: PROTOCOL_VERSION, tool: TOOL, session: hello.session, host: hostIdentity(), caps: CAPABILITIES };
  await ch.sendJson(MsgType.HELLO_ACK, ack);
  if (hello.role === "list") {
    await ch.sendJson(MsgType.LIST_RESULT, { session: hello.session, backups: listBackups(opts.out).map(({ path: _p, ...rest }) => rest) });
    return { result: { ok: true, role: "list", host: hello.host?.hostname }, carried: null };
  }
  const message = `${hello.role} requests are not supported by this receiver`;
  await ch.sendJson(MsgType.ERROR, { session: hello.session, code: "REFUSED", message });
  return { result: { ok: false, role: hello.role, error: { code: "REFUSED", message } }, carried: null };
}
