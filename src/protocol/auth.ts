// Key authentication on tcp: (docs/PROTOCOL.md §7.1): both sides prove they
// hold the same 32-byte key with HMAC-SHA256 over both sides' nonces and the
// connection id, before any HELLO; the key itself never travels. Pure: the
// messages, their checks and the MACs; src/transport/auth.ts runs the exchange.
import { createHmac, timingSafeEqual } from "node:crypto";

export const AUTH_VERSION = 1;
export const AUTH_METHOD = "hmac-sha256";
/** the capability string (in HELLO caps) of a side that can authenticate with a key */
export const KEY_AUTH_CAP = "key-auth";
export const KEY_BYTES = 32;
/** an auth payload is a small JSON object: anything larger is not one */
export const MAX_AUTH_PAYLOAD = 1024;

/** AUTH (initiator → receiver): the initiator's nonce and the connection id. */
export interface AuthHello {
  auth: number;
  method: string;
  conn: string;
  nonce: string;
}

/** AUTH_CHALLENGE (receiver → initiator): the receiver's nonce and its proof. */
export interface AuthChallenge {
  conn: string;
  nonce: string;
  mac: string;
}

/** AUTH_PROOF (initiator → receiver): the initiator's proof. AUTH_OK: {conn}. */
export interface AuthProof {
  conn: string;
  mac: string;
}

const HEX64 = /^[0-9a-f]{64}$/;
const CONN_ID = /^[0-9a-f]{32}$/;

export function isNonce(v: unknown): v is string {
  return typeof v === "string" && HEX64.test(v);
}

export function isConnId(v: unknown): v is string {
  return typeof v === "string" && CONN_ID.test(v);
}

export function isMac(v: unknown): v is string {
  return typeof v === "string" && HEX64.test(v);
}

/**
 * The MAC a side sends: HMAC-SHA256(key, "tbbackup-auth-1 <side>\n<conn>\n<initiator nonce>\n<receiver nonce>"),
 * as 64 hex digits. The side's name keeps one side's MAC from serving as the other's.
 */
export function authMac(key: Uint8Array, side: "receiver" | "initiator", conn: string, initiatorNonce: string, receiverNonce: string): string {
  return createHmac("sha256", key).update(`tbbackup-auth-${AUTH_VERSION} ${side}\n${conn}\n${initiatorNonce}\n${receiverNonce}`).digest("hex");
}

/** Compares a MAC from the peer with the expected one in constant time. */
export function macMatches(expected: string, got: unknown): boolean {
  if (!isMac(got)) return false;
  return timingSafeEqual(Buffer.from(expected, "hex"), Buffer.from(got, "hex"));
}
