// Adapts a node Readable/Writable pair (sockets, stdio) to Conn.
import type { Readable, Writable } from "node:stream";
import { TbError, errnoText, outcome } from "../errors.ts";
import type { Conn } from "./types.ts";

export function streamConn(
  input: Readable,
  output: Writable,
  description: string,
  lossy: boolean,
  destroy: () => void,
): Conn {
  const chunks: Uint8Array[] = [];
  let ended = false;
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  let closed = false;
  const notify = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  input.on("data", (c: Buffer) => {
    chunks.push(c);
    if (chunks.length > 64) input.pause();
    notify();
  });
  input.on("end", () => {
    ended = true;
    notify();
  });
  input.on("close", () => {
    ended = true;
    notify();
  });
  const onError = (e: Error) => {
    failure ??= e;
    notify();
  };
  input.on("error", onError);
  if ((output as unknown) !== input) output.on("error", onError);

  const cut = (e: Error) =>
    new TbError("CLOSED", `the stream ${description} was cut (${errnoText(e)})`, "check the connection and run the command again", [], outcome.incomplete("backup"));

  return {
    description,
    lossy,
    async read() {
      for (;;) {
        const c = chunks.shift();
        if (c) {
          if (chunks.length < 16 && input.isPaused()) input.resume();
          return c;
        }
        if (failure) throw cut(failure);
        if (ended || closed) return null;
        await new Promise<void>((r) => (wake = r));
      }
    },
    // Resolves once the stream has taken all of `data` (its write callback):
    // callers reuse the buffer afterwards.
    async write(data) {
      if (failure) throw cut(failure);
      if (closed || output.destroyed || output.writableEnded) throw new TbError("CLOSED", `the stream ${description} is closed`, "run the command again", [], outcome.incomplete("backup"));
      await new Promise<void>((resolve, reject) => {
        const off = () => {
          output.off("close", closed_);
          output.off("error", err);
        };
        const closed_ = () => {
          off();
          reject(new TbError("CLOSED", `the other side closed ${description}`, "check the other side's message and run again", [], outcome.incomplete("backup")));
        };
        const err = (e: Error) => {
          off();
          reject(cut(e));
        };
        output.once("close", closed_);
        output.once("error", err);
        output.write(data, (e) => {
          off();
          if (e) reject(cut(e));
          else resolve();
        });
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      notify();
      await new Promise<void>((r) => {
        if (output.writableEnded || output.destroyed) return r();
        output.end(() => r());
        setTimeout(r, 2000).unref?.();
      });
      destroy();
    },
  };
}
