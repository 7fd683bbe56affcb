// fdConn over a non-blocking descriptor (how receive reads each Thunderbolt
// peer's device): a write the descriptor cannot take after the peer has
// closed fails, as the blocking write would, instead of being retried for ever.
// The device's behaviour (EAGAIN while the TX ring is full, also after the
// peer's CLOSE) is modelled by one end of a unix socketpair whose other end
// shuts down its writing side (our read sees EOF) and never reads.
import { expect, test } from "bun:test";
import * as fs from "node:fs";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { fdConn } from "../../src/transport/fd-conn.ts";
import { TbError } from "../../src/errors.ts";
import { loadLibc } from "../../src/util/libc.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SHUT_WR = 1;

function socketPair(): [number, number] {
  const lib = dlopen("libc.so.6", { socketpair: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 } });
  const sv = new Int32Array(2);
  if (lib.symbols.socketpair(AF_UNIX, SOCK_STREAM, 0, ptr(sv)) !== 0) throw new Error("socketpair failed");
  lib.close();
  return [sv[0]!, sv[1]!];
}

test("polled: after the peer's end of stream, a write that cannot go on fails with CLOSED instead of retrying for ever", async () => {
  const libc = (await loadLibc())!;
  const [ours, theirs] = socketPair();
  expect(libc.makeNonBlocking(ours)).toBe(0);
  const conn = fdConn(ours, { description: "test-peer", lossy: true, polled: true, gone: (e) => new TbError("CLOSED", `test-peer: ${(e as Error).message}`, "") });
  try {
    libc.shutdown(theirs, SHUT_WR); // the peer's CLOSE: our read sees EOF
    expect(await conn.read()).toBeNull();
    // the peer reads nothing: the socket's buffer fills and each write says EAGAIN
    const big = new Uint8Array(64 << 20);
    const outcome = await Promise.race([
      conn.write(big).then(
        () => "written",
        (e: unknown) => e,
      ),
      Bun.sleep(10_000).then(() => "still retrying"),
    ]);
    expect(outcome).toBeInstanceOf(TbError);
    expect((outcome as TbError).code).toBe("CLOSED");
    expect((outcome as TbError).message).toContain("the other side closed the stream");
  } finally {
    await conn.close();
    fs.closeSync(theirs);
  }
});

test("polled: a write the descriptor takes only in parts (its peer reading slowly) completes", async () => {
  const libc = (await loadLibc())!;
  const [ours, theirs] = socketPair();
  expect(libc.makeNonBlocking(ours)).toBe(0);
  const conn = fdConn(ours, { description: "test-peer", lossy: true, polled: true, gone: (e) => new TbError("CLOSED", String(e), "") });
  const data = new Uint8Array(8 << 20).map((_, i) => i & 0xff);
  let got = 0;
  const sum = { n: 0 };
  const reader = (async () => {
    const buf = new Uint8Array(64 << 10);
    while (got < data.length) {
      const n = await new Promise<number>((res, rej) => fs.read(theirs, buf, 0, buf.length, null, (e, k) => (e ? rej(e) : res(k))));
      for (let i = 0; i < n; i++) sum.n = (sum.n + buf[i]!) % 1_000_000_007;
      got += n;
      await Bun.sleep(1); // slower than the writer: its writes meet a full buffer
    }
  })();
  await conn.write(data);
  await reader;
  expect(got).toBe(data.length);
  expect(sum.n).toBe(data.reduce((a, b) => (a + b) % 1_000_000_007, 0));
  await conn.close();
  fs.closeSync(theirs);
});
