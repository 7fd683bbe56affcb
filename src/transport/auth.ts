// A transport whose connections are authenticated with a shared key before
// anything else goes over them (docs/PROTOCOL.md §7.1): it wraps a tcp:
// transport; connect() and accept() return a Conn only once both sides have
// proved they hold the key; what follows travels sealed (seal.ts).
import { randomBytes } from "node:crypto";
import { FrameDecoder, HEADER_SIZE, TRAILER_SIZE, encodeFrame } from "../protocol/frame.ts";
import { MsgType, decodeJson, encodeJson, typeName, type Hello } from "../protocol/messages.ts";
import { AUTH_METHOD, AUTH_VERSION, MAX_AUTH_PAYLOAD, authMac, isConnId, isNonce, macMatches, type AuthChallenge, type AuthHello, type AuthProof } from "../protocol/auth.ts";
import { TbError } from "../errors.ts";
import type { Conn, Listener, Transport } from "./types.ts";
import { sealKeys, sealedConn } from "./seal.ts";

/** How long each side waits for the other's next key-exchange message. */
export const AUTH_TIMEOUT_MS = 10_000;
/** connections in the key exchange at once, on a receiver */
const MAX_PENDING_AUTH = 8;

interface AuthFrame {
  type: number;
  payload: Uint8Array;
}

/** Reads whole frames off a Conn, keeping what comes after them for the session. */
class FrameReader {
  private buf = new Uint8Array(0);
  constructor(private readonly conn: Conn) {}

  private async more(deadline: number, what: string): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TbError("TIMEOUT", `no ${what} from ${this.conn.description} within ${AUTH_TIMEOUT_MS / 1000} s`, "")), Math.max(0, deadline - Date.now()));
    });
    try {
      const data = await Promise.race([this.conn.read(), timeout]);
      if (data === null) throw new TbError("CLOSED", `${this.conn.description} closed the connection during the key exchange`, "");
      const next = new Uint8Array(this.buf.length + data.length);
      next.set(this.buf);
      next.set(data, this.buf.length);
      this.conn.release?.(data);
      this.buf = next;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The next frame, within the deadline; anything not a small valid frame is an error (no resynchronising here). */
  async next(deadline: number, what: string): Promise<AuthFrame> {
    while (this.buf.length < HEADER_SIZE) await this.more(deadline, what);
    const length = new DataView(this.buf.buffer, this.buf.byteOffset + 8, 4).getUint32(0, true);
    // (a HELLO is larger than an auth message but small: read it whole, to answer it)
    if (length > 64 * 1024) throw new TbError("PROTOCOL", `${this.conn.description} sent a ${length}-byte message where a key exchange was expected`, "");
    const total = HEADER_SIZE + length + TRAILER_SIZE;
    while (this.buf.length < total) await this.more(deadline, what);
    const events = new FrameDecoder(64 * 1024).push(this.buf.slice(0, total));
    this.buf = this.buf.slice(total);
    const ev = events.find((e) => e.kind === "frame");
    if (!ev || ev.kind !== "frame") throw new TbError("PROTOCOL", `${this.conn.description} sent something that is not a tbbackup frame where a key exchange was expected`, "");
    return { type: ev.frame.type, payload: ev.frame.payload };
  }

  /** The bytes read past the last frame: the start of the session. */
  rest(): Uint8Array {
    return this.buf;
  }
}

/** The Conn, with the bytes read during the exchange handed out first. */
function withRest(conn: Conn, rest: Uint8Array): Conn {
  let pending: Uint8Array | null = rest.length > 0 ? rest : null;
  return {
    description: conn.description,
    lossy: conn.lossy,
    read: async () => {
      if (pending) {
        const p = pending;
        pending = null;
        return p;
      }
      return conn.read();
    },
    release: (chunk) => {
      if (chunk !== rest) conn.release?.(chunk);
    },
    write: (data) => conn.write(data),
    close: () => conn.close(),
  };
}

function send(conn: Conn, type: number, value: unknown): Promise<void> {
  return conn.write(encodeFrame(type, encodeJson(value)));
}

function small<T>(f: AuthFrame): T | null {
  return f.payload.length <= MAX_AUTH_PAYLOAD ? decodeJson<T>(f.payload) : null;
}

const WRONG_KEY_HINT = "give both sides the same --key-file (tbbackup keygen makes one; copy it to the other machine)";

/** The initiator's half: prove we hold the key and check that the receiver does. */
export async function authenticateToReceiver(conn: Conn, key: Uint8Array): Promise<Conn> {
  const reader = new FrameReader(conn);
  const connId = randomBytes(16).toString("hex");
  const mine = randomBytes(32).toString("hex");
  const deadline = () => Date.now() + AUTH_TIMEOUT_MS;
  await send(conn, MsgType.AUTH, { auth: AUTH_VERSION, method: AUTH_METHOD, conn: connId, nonce: mine } satisfies AuthHello);
  let f: AuthFrame;
  try {
    f = await reader.next(deadline(), "answer to the key exchange");
  } catch (e) {
    if (e instanceof TbError && e.code === "TIMEOUT")
      throw new TbError("REFUSED", `the receiver on ${conn.description} did not answer the key exchange`, "it runs without --key-file (or is an older tbbackup): start it with the same --key-file");
    throw e;
  }
  if (f.type === MsgType.ERROR) {
    const e = small<{ code?: string; message?: string }>(f);
    throw new TbError("REFUSED", `the receiver refused the connection: ${e?.message ?? "no reason given"}`, WRONG_KEY_HINT);
  }
  const ch = f.type === MsgType.AUTH_CHALLENGE ? small<AuthChallenge>(f) : null;
  if (!ch || ch.conn !== connId || !isNonce(ch.nonce)) throw new TbError("PROTOCOL", `the receiver on ${conn.description} answered the key exchange with ${typeName(f.type)}`, "use the same tbbackup version on both sides");
  if (!macMatches(authMac(key, "receiver", connId, mine, ch.nonce), ch.mac)) {
    // say so, so the receiver's log names it; never send our proof to a side that did not prove itself
    await send(conn, MsgType.ERROR, { code: "REFUSED", message: "wrong key: the initiator's key does not match this receiver's" }).catch(() => {});
    throw new TbError("REFUSED", `the receiver on ${conn.description} does not hold this key (wrong key, or not the receiver you meant)`, WRONG_KEY_HINT);
  }
  await send(conn, MsgType.AUTH_PROOF, { conn: connId, mac: authMac(key, "initiator", connId, mine, ch.nonce) } satisfies AuthProof);
  const ok = await reader.next(deadline(), "confirmation of the key exchange");
  if (ok.type === MsgType.ERROR) {
    const e = small<{ message?: string }>(ok);
    throw new TbError("REFUSED", `the receiver refused the connection: ${e?.message ?? "no reason given"}`, WRONG_KEY_HINT);
  }
  if (ok.type !== MsgType.AUTH_OK || small<{ conn?: string }>(ok)?.conn !== connId) throw new TbError("PROTOCOL", `the receiver on ${conn.description} did not confirm the key exchange`, "use the same tbbackup version on both sides");
  // from here on, every byte travels sealed (§7.2)
  const keys = sealKeys(key, connId, mine, ch.nonce);
  return sealedConn(withRest(conn, reader.rest()), keys.up, keys.down);
}

/** The receiver's half: the connection's Conn once the initiator proved it holds the key; throws (after telling it) otherwise. */
export async function authenticateInitiator(conn: Conn, key: Uint8Array): Promise<Conn> {
  const reader = new FrameReader(conn);
  const refuse = async (message: string, session?: string): Promise<never> => {
    await send(conn, MsgType.ERROR, { ...(session ? { session } : {}), code: "REFUSED", message }).catch(() => {});
    throw new TbError("REFUSED", message, "");
  };
  const first = await reader.next(Date.now() + AUTH_TIMEOUT_MS, "key exchange");
  if (first.type === MsgType.HELLO) {
    // an initiator without a key: its handshake shows our ERROR (with its session)
    const hello = decodeJson<Hello>(first.payload);
    return refuse("this receiver needs a key: give --key-file (the same file as the receiver's)", typeof hello?.session === "string" ? hello.session.slice(0, 64) : undefined);
  }
  const a = first.type === MsgType.AUTH ? small<AuthHello>(first) : null;
  if (!a || a.auth !== AUTH_VERSION || a.method !== AUTH_METHOD || !isConnId(a.conn) || !isNonce(a.nonce)) return refuse(`a key exchange this receiver does not speak (${typeName(first.type)})`);
  const mine = randomBytes(32).toString("hex");
  await send(conn, MsgType.AUTH_CHALLENGE, { conn: a.conn, nonce: mine, mac: authMac(key, "receiver", a.conn, a.nonce, mine) } satisfies AuthChallenge);
  const p = await reader.next(Date.now() + AUTH_TIMEOUT_MS, "proof of the key");
  if (p.type === MsgType.ERROR) throw new TbError("REFUSED", small<{ message?: string }>(p)?.message ?? "the initiator gave up the key exchange", "");
  const proof = p.type === MsgType.AUTH_PROOF ? small<AuthProof>(p) : null;
  if (!proof || proof.conn !== a.conn || !macMatches(authMac(key, "initiator", a.conn, a.nonce, mine), proof.mac)) return refuse("wrong key");
  await send(conn, MsgType.AUTH_OK, { conn: a.conn });
  const keys = sealKeys(key, a.conn, a.nonce, mine);
  return sealedConn(withRest(conn, reader.rest()), keys.down, keys.up);
}

/** `inner` with every connection authenticated; failures on the listening side are logged and the connection dropped. */
export class KeyedTransport implements Transport {
  constructor(
    private readonly inner: Transport,
    private readonly key: Uint8Array,
    private readonly log: (message: string) => void,
  ) {}

  async connect(waitMs?: number): Promise<Conn> {
    const conn = await this.inner.connect(waitMs);
    try {
      return await authenticateToReceiver(conn, this.key);
    } catch (e) {
      await conn.close().catch(() => {});
      throw e;
    }
  }

  /**
   * Connections are authenticated as they come, several at once, and handed
   * out once they pass: one that says nothing holds only itself, not the
   * receiver (at most MAX_PENDING_AUTH at a time; more are closed at once).
   */
  async listen(): Promise<Listener> {
    const l = await this.inner.listen();
    const ready: Conn[] = [];
    const waiters: ((c: Conn | null) => void)[] = [];
    let ended = false;
    let failure: unknown = null;
    let pending = 0;
    const hand = (c: Conn | null) => {
      const w = waiters.shift();
      if (w) w(c);
      else if (c) ready.push(c);
    };
    void (async () => {
      try {
        for (;;) {
          const conn = await l.accept();
          if (!conn) break;
          if (pending >= MAX_PENDING_AUTH) {
            this.log(`refused a connection on ${l.description}: ${MAX_PENDING_AUTH} others are still in the key exchange`);
            void conn.close().catch(() => {});
            continue;
          }
          pending++;
          authenticateInitiator(conn, this.key)
            .then(hand, async (e: unknown) => {
              this.log(`refused a connection on ${l.description}: ${e instanceof TbError ? e.message : String(e)}`);
              await conn.close().catch(() => {});
            })
            .finally(() => pending--);
        }
      } catch (e) {
        failure = e; // (the listener broke: accept() says so)
      }
      ended = true;
      for (const w of waiters.splice(0)) w(null);
    })();
    return {
      description: `${l.description} (key required)`,
      accept: async () => {
        const c = ready.shift();
        if (c) return c;
        const next = ended ? null : await new Promise<Conn | null>((resolve) => waiters.push(resolve));
        if (!next && failure) throw failure;
        return next;
      },
      close: async () => {
        await l.close();
        for (const c of ready.splice(0)) await c.close().catch(() => {});
      },
    };
  }
}
