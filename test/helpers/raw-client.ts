// A frame-level client on a unix socket for tests that speak the protocol by
// hand (an older peer, a session held open): send frames, wait for one of a type.
import * as net from "node:net";
import { FrameDecoder, encodeFrame, type Frame } from "../../src/protocol/frame.ts";
import { MsgType, encodeJson, decodeJson } from "../../src/protocol/messages.ts";
import { CHUNK_HEADER_SIZE, writeChunkHeader } from "../../src/protocol/chunk-record.ts";
import { zstd } from "../../src/util/zstd.ts";

/** A DATA payload for chunk `index` at `offset`: its header and one zstd frame (content size and checksum set), as tbbackup sends one. */
export function dataPayload(index: number, offset: number, raw: Uint8Array): Uint8Array {
  const z = zstd();
  const cctx = new z.CCtx();
  cctx.setParameter(z.CParameter.checksumFlag, 1);
  cctx.setParameter(z.CParameter.contentSizeFlag, 1);
  const zbuf = new Uint8Array(z.compressBound(raw.length));
  const n = cctx.compress2(zbuf, raw);
  const payload = new Uint8Array(CHUNK_HEADER_SIZE + n);
  writeChunkHeader(payload, 0, { index, rawLength: raw.length, offset, checksum: Bun.hash.xxHash3(raw) });
  payload.set(zbuf.subarray(0, n), CHUNK_HEADER_SIZE);
  return payload;
}

/** A frame-level client on a unix socket: send frames, wait for one of a type. */
export async function client(sock: string) {
  let conn: net.Socket;
  // the socket file appears just before the receiver listens on it
  for (let tries = 0; ; tries++) {
    const c = net.createConnection(sock);
    const ok = await new Promise<boolean>((resolve) => c.once("connect", () => resolve(true)).once("error", () => resolve(false)));
    if (ok) {
      conn = c;
      break;
    }
    if (tries > 50) throw new Error(`cannot connect to ${sock}`);
    await Bun.sleep(100);
  }
  conn.on("error", () => {});
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  conn.on("data", (d: Buffer) => {
    for (const ev of decoder.push(new Uint8Array(d))) if (ev.kind === "frame") frames.push(ev.frame);
  });
  return {
    send: (type: number, payload: Uint8Array) => new Promise<void>((resolve) => conn.write(encodeFrame(type, payload), () => resolve())),
    /** a whole frame as it is (a test may have damaged it) */
    write: (frame: Uint8Array) => new Promise<void>((resolve) => conn.write(frame, () => resolve())),
    json: (type: number, v: unknown) => new Promise<void>((resolve) => conn.write(encodeFrame(type, encodeJson(v)), () => resolve())),
    async expect(type: number, ms = 15_000): Promise<Record<string, unknown>> {
      for (const until = Date.now() + ms; Date.now() < until; await Bun.sleep(20)) {
        const i = frames.findIndex((f) => f.type === type || f.type === MsgType.ERROR);
        if (i >= 0) {
          const f = frames.splice(i, 1)[0]!;
          const body = decodeJson<Record<string, unknown>>(f.payload)!;
          if (f.type !== type) throw new Error(`expected type ${type}, got ERROR ${JSON.stringify(body)}`);
          return body;
        }
      }
      throw new Error(`no frame of type ${type}`);
    },
    /** the first frame of one of `types`, with its JSON body */
    async next(types: number[], ms = 15_000): Promise<{ type: number; body: Record<string, unknown> }> {
      for (const until = Date.now() + ms; Date.now() < until; await Bun.sleep(20)) {
        const i = frames.findIndex((f) => types.includes(f.type));
        if (i >= 0) {
          const f = frames.splice(i, 1)[0]!;
          return { type: f.type, body: decodeJson<Record<string, unknown>>(f.payload)! };
        }
      }
      throw new Error(`no frame of types ${types}`);
    },
    frames,
    close: () => conn.destroy(),
  };
}

/** The identity a sender's HELLO gives an image file (docs/PROTOCOL.md §5.1). */
export function fileDisk(file: string, name: string, size: number) {
  return { path: file, kind: "file", name, size, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null };
}

/** Sends `data` as DATA records of `chunkSize` bytes, in order, as a push does; returns how many. */
export async function sendImage(c: Awaited<ReturnType<typeof client>>, data: Uint8Array, chunkSize: number): Promise<number> {
  let i = 0;
  for (let offset = 0; offset < data.length; offset += chunkSize, i++) await c.send(MsgType.DATA, dataPayload(i, offset, data.subarray(offset, Math.min(offset + chunkSize, data.length))));
  return i;
}
