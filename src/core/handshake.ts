// HELLO exchange: the starting side repeats HELLO until the receiver answers
// (a device can drop what was written before the peer opened it), under a deadline.
import { randomUUID } from "node:crypto";
import { MsgType, PROTOCOL_NAME, PROTOCOL_VERSION, decodeJson, decodeMessage, type Hello, type HelloAck } from "../protocol/messages.ts";
import { Channel } from "./channel.ts";
import { TbError, type ErrorCode, ErrorCodes } from "./errors.ts";
import { TOOL, CAPABILITIES } from "./version.ts";
import { hostIdentity } from "./identity.ts";
import type { Reporter } from "./report.ts";

const RESEND_MS = 1000;

/** The receiver's answer to `hello` (with the id of the backup it will store, for a push). */
export function newHelloAck(hello: Hello, id?: string): HelloAck {
  return { protocol: PROTOCOL_NAME, proto: PROTOCOL_VERSION, tool: TOOL, session: hello.session, host: hostIdentity(), caps: CAPABILITIES, id };
}

export function newHello(role: Hello["role"], extra: Partial<Hello> = {}): Hello {
  return {
    protocol: PROTOCOL_NAME,
    proto: PROTOCOL_VERSION,
    tool: TOOL,
    role,
    session: randomUUID(),
    host: hostIdentity(),
    caps: CAPABILITIES,
    ...extra,
  };
}

/** Whether a peer's HELLO or HELLO_ACK lists capability `cap` (a peer's `caps` is a claim: any non-array lists nothing). */
export function hasCap(msg: { caps?: unknown } | null | undefined, cap: string): boolean {
  return Array.isArray(msg?.caps) && msg.caps.includes(cap);
}

/** Checks that a HELLO or HELLO_ACK speaks our protocol and version, with the fields every side relies on. */
export function checkPeer(msg: { protocol?: unknown; proto?: unknown; tool?: unknown; session?: unknown; host?: unknown } | null): TbError | null {
  if (!msg || msg.protocol !== PROTOCOL_NAME)
    return new TbError("PROTOCOL", "the peer does not speak the tbbackup protocol", "run tbbackup on both machines");
  if (msg.proto !== PROTOCOL_VERSION)
    return new TbError("PROTOCOL", `the peer speaks tbbackup protocol ${String(msg.proto)} (${String(msg.tool)}), this side speaks ${PROTOCOL_VERSION}`, "install the same tbbackup version on both machines");
  const host = msg.host as { hostname?: unknown } | undefined;
  if (typeof msg.session !== "string" || msg.session.length === 0 || msg.session.length > 64 || typeof host !== "object" || host === null || typeof host.hostname !== "string")
    return new TbError("PROTOCOL", "the peer's HELLO lacks a session id or host identity", "install the same tbbackup version on both machines");
  return null;
}

/** Turns a peer's ERROR message into a TbError on this side. */
export function peerError(payload: Uint8Array): TbError {
  const e = decodeMessage(MsgType.ERROR, payload);
  const code = e && typeof e.code === "string" && e.code in ErrorCodes ? (e.code as ErrorCode) : "PEER";
  const message = e && typeof e.message === "string" ? e.message : "unreadable error";
  return new TbError(code, `the other side reports: ${message}`, "");
}

export async function handshake(ch: Channel, hello: Hello, waitMs: number, reporter: Reporter): Promise<HelloAck> {
  const deadline = Date.now() + waitMs;
  let announced = false;
  for (;;) {
    await ch.sendJson(MsgType.HELLO, hello);
    const resendAt = Date.now() + RESEND_MS;
    for (;;) {
      const left = Math.min(resendAt, deadline) - Date.now();
      let f;
      try {
        if (left <= 0) throw new TbError("TIMEOUT", "", "");
        f = await ch.recv(left, "the receiver's answer");
      } catch (e) {
        // on a lossy link (a device) a damaged answer is as good as none: HELLO goes out again
        if (e instanceof TbError && e.code === "CORRUPT" && ch.conn.lossy) continue;
        if (!(e instanceof TbError) || e.code !== "TIMEOUT") throw e;
        if (Date.now() < deadline) {
          if (!announced) reporter.info(`waiting for the receiver on ${ch.conn.description}...`);
          announced = true;
          break; // resend HELLO
        }
        if (ch.garbageBytes > 0)
          throw new TbError("PROTOCOL", `got ${ch.garbageBytes} bytes from ${ch.conn.description} that are not tbbackup frames`, "the other side speaks another protocol: run 'tbbackup receive' there");
        throw new TbError("TIMEOUT", `no answer from a receiver on ${ch.conn.description} within ${Math.round(waitMs / 1000)} s`, "start 'tbbackup receive' on the other machine, check the cable, or raise --wait");
      }
      if (f.type === MsgType.HELLO_ACK) {
        // protocol and version first (their own lines), then every field by the message's validator
        const bad = checkPeer(decodeJson<HelloAck>(f.payload));
        if (bad) throw bad;
        const ack = decodeMessage(MsgType.HELLO_ACK, f.payload);
        if (!ack) throw new TbError("PROTOCOL", "the receiver's HELLO_ACK is malformed (a field of the wrong shape)", "install the same tbbackup version on both machines");
        if (ack.session !== hello.session) continue; // an answer to an earlier session
        return ack;
      }
      if (f.type === MsgType.ERROR) {
        const e = decodeMessage(MsgType.ERROR, f.payload);
        // on a shared device, an ERROR meant for an earlier session may still be in flight
        if (e?.session !== hello.session) continue;
        throw peerError(f.payload);
      }
      // anything else is left over from an earlier session: ignore it
    }
  }
}
