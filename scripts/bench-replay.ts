// The benchmark's canned sender: replays the bytes of a push session that
// scripts/bench-sink.ts recorded (--record) into a real `tbbackup receive`,
// so that scripts/bench.sh can time the receiving side alone, with a sender
// that costs next to nothing (reading a cached file, writing a socket). It
// reads the receiver's answers and waits for DONE (exit 0) or ERROR (exit 1).
// The receiver must have a fresh store: an offer to resume an earlier partial
// would need an answer the recording does not hold.
// usage: bun scripts/bench-replay.ts RECORDING unix:PATH
import * as fs from "node:fs";
import { FrameDecoder } from "../src/protocol/frame.ts";
import { MsgType } from "../src/protocol/messages.ts";
import { transportFor } from "../src/transport/index.ts";

const [recording, spec] = process.argv.slice(2);
if (!recording || !spec?.startsWith("unix:")) {
  console.error("usage: bun scripts/bench-replay.ts RECORDING unix:PATH");
  process.exit(2);
}
const fd = fs.openSync(recording, "r");
const conn = await transportFor(spec, false).connect(30_000);
const started = performance.now();

// The receiver's answers: PROGRESS along the way, then DONE or ERROR.
const answer = (async (): Promise<{ ok: boolean; text: string }> => {
  const decoder = new FrameDecoder();
  for (;;) {
    const data = await conn.read().catch(() => null);
    if (!data) return { ok: false, text: "the receiver closed the connection without DONE" };
    for (const ev of decoder.push(data)) {
      if (ev.kind !== "frame") continue;
      const text = new TextDecoder().decode(ev.frame.payload);
      if (ev.frame.type === MsgType.DONE) return { ok: true, text };
      if (ev.frame.type === MsgType.ERROR) return { ok: false, text };
    }
    conn.release?.(data);
  }
})();

const buf = new Uint8Array(1 << 20);
let sent = 0;
let stopped = false;
void answer.then(() => (stopped = true));
for (;;) {
  const n = fs.readSync(fd, buf, 0, buf.length, null);
  if (n === 0 || stopped) break;
  await conn.write(buf.subarray(0, n)).catch(() => (stopped = true));
  sent += n;
}
fs.closeSync(fd);
const result = await answer;
await conn.close();
const s = (performance.now() - started) / 1000;
console.error(`bench replay: ${sent} bytes in ${s.toFixed(2)} s; receiver: ${result.ok ? "DONE" : "failed"} ${result.text}`);
process.exit(result.ok ? 0 : 1);
