// A frame-level client on a unix socket for tests that speak the protocol by
// hand (an older peer, a session held open): send frames, wait for one of a type.
import * as net from "node:net";
import { FrameDecoder, encodeFrame, type Frame } from "../../src/protocol/frame.ts";
import { MsgType, encodeJson, decodeJson } from "../../src/protocol/messages.ts";

/** A frame-level client on a unix socket: send frames, wait for one of a type. */
export async function client(sock: string) {
  const conn = net.createConnection(sock);
  await new Promise<void>((resolve, reject) => conn.once("connect", resolve).once("error", reject));
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  conn.on("data", (d: Buffer) => {
    for (const ev of decoder.push(new Uint8Array(d))) if (ev.kind === "frame") frames.push(ev.frame);
  });
  return {
    send: (type: number, payload: Uint8Array) => new Promise<void>((resolve) => conn.write(encodeFrame(type, payload), () => resolve())),
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
    frames,
    close: () => conn.destroy(),
  };
}

