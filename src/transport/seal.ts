// After key authentication (auth.ts), everything on a tcp: connection travels
// in sealed records (docs/PROTOCOL.md §7.2): AES-256-GCM with a key per
// direction derived from the shared key and both nonces, and a counter as the
// nonce, so a changed, dropped, replayed or reordered record stops the
// connection, and what is sent cannot be read on the way.
import { createCipheriv, createDecipheriv, createHmac } from "node:crypto";
import { TbError } from "../errors.ts";
import type { Conn } from "./types.ts";

/** record header: ciphertext length, u32 LE */
const LEN_BYTES = 4;
const TAG_BYTES = 16;
/** the most plaintext one record carries (a frame of the largest payload fits) */
export const MAX_RECORD = 8 * 1024 * 1024;

export interface SealKeys {
  /** initiator -> receiver */
  up: Buffer;
  /** receiver -> initiator */
  down: Buffer;
}

/** The two directions' keys: HMAC-SHA256(key, "tbbackup-seal-1 <direction>\n<conn>\n<Ni>\n<Nr>"). */
export function sealKeys(key: Uint8Array, conn: string, initiatorNonce: string, receiverNonce: string): SealKeys {
  const derive = (direction: string) => createHmac("sha256", key).update(`tbbackup-seal-1 ${direction}\n${conn}\n${initiatorNonce}\n${receiverNonce}`).digest();
  return { up: derive("initiator-to-receiver"), down: derive("receiver-to-initiator") };
}

/** 12-byte GCM nonce: 4 zero bytes, then the record's number (u64 BE). */
function nonce(n: bigint): Buffer {
  const b = Buffer.alloc(12);
  b.writeBigUInt64BE(n, 4);
  return b;
}

/** `conn` with every write sealed under `sendKey` and every read opened under `recvKey`. */
export function sealedConn(conn: Conn, sendKey: Buffer, recvKey: Buffer): Conn {
  let sent = 0n;
  let received = 0n;
  // bytes read and not yet opened, kept as they came: joined once a whole record is there
  let pieces: Uint8Array[] = [];
  let held = 0;
  const ready: Uint8Array[] = [];
  const tampered = (why: string) =>
    new TbError("CORRUPT", `a record from ${conn.description} failed its authentication (${why}): the connection was changed on the way`, "run the command again; if it happens again, something between the machines alters the traffic");

  const seal = (plain: Uint8Array): Uint8Array => {
    const c = createCipheriv("aes-256-gcm", sendKey, nonce(sent++));
    // (GCM's final() gives no bytes, only the tag: no need to join it on)
    const body = c.update(plain);
    c.final();
    const out = new Uint8Array(LEN_BYTES + body.length + TAG_BYTES);
    new DataView(out.buffer).setUint32(0, body.length, true);
    out.set(body, LEN_BYTES);
    out.set(c.getAuthTag(), LEN_BYTES + body.length);
    return out;
  };

  const join = (): Uint8Array => {
    if (pieces.length > 1) {
      const all = new Uint8Array(held);
      let at = 0;
      for (const p of pieces) {
        all.set(p, at);
        at += p.length;
      }
      pieces = [all];
    }
    return pieces[0] ?? new Uint8Array(0);
  };
  // the length of the record whose bytes are arriving, once its header is in
  let recordLength = -1;

  /** Opens the whole records held. */
  const open = (): void => {
    for (;;) {
      if (recordLength < 0) {
        if (held < LEN_BYTES) return;
        const b = join();
        recordLength = new DataView(b.buffer, b.byteOffset, LEN_BYTES).getUint32(0, true);
        if (recordLength > MAX_RECORD + TAG_BYTES) throw tampered(`a record of ${recordLength} bytes`);
      }
      const total = LEN_BYTES + recordLength + TAG_BYTES;
      if (held < total) return;
      const b = join();
      const d = createDecipheriv("aes-256-gcm", recvKey, nonce(received++));
      d.setAuthTag(b.subarray(LEN_BYTES + recordLength, total));
      let plain: Buffer;
      try {
        plain = d.update(b.subarray(LEN_BYTES, LEN_BYTES + recordLength));
        d.final(); // checks the tag: nothing of `plain` is used before it passes
      } catch {
        throw tampered("tag mismatch");
      }
      pieces = total < b.length ? [b.subarray(total)] : [];
      held -= total;
      recordLength = -1;
      if (plain.length > 0) ready.push(new Uint8Array(plain.buffer, plain.byteOffset, plain.length));
    }
  };

  return {
    description: conn.description,
    lossy: conn.lossy,
    async read() {
      while (ready.length === 0) {
        const data = await conn.read();
        if (data === null) {
          if (held > 0) throw tampered("the stream ended inside a record");
          return null;
        }
        // (a transport that reuses its buffers gets this one back only once copied)
        pieces.push(conn.release ? data.slice() : data);
        conn.release?.(data);
        held += data.length;
        open();
      }
      return ready.shift()!;
    },
    // Sealed here, in call order, before any wait: records go out numbered as written.
    async write(data) {
      if (data.length <= MAX_RECORD) return conn.write(seal(data));
      const records: Uint8Array[] = [];
      for (let at = 0; at < data.length; at += MAX_RECORD) records.push(seal(data.subarray(at, at + MAX_RECORD)));
      return conn.write(Buffer.concat(records));
    },
    close: () => conn.close(),
  };
}
