// The benchmark's acknowledging sink: a receiver that speaks just enough of
// docs/PROTOCOL.md to take one push (HELLO_ACK, PROGRESS every 256 records,
// DONE), and checks and stores nothing, so that scripts/bench.sh can time the
// sending side alone. DONE echoes what END carried (the SHA-256, an integrity
// root, whatever the sender's version puts there), and HELLO_ACK echoes the
// sender's capabilities, so the sender takes its newest path and accepts the
// answer (BLAKE3 chunk digests to a sender that lists them). --record FILE keeps every byte the sender sent, for
// scripts/bench-replay.ts. Not a receiver to keep backups with.
// usage: bun scripts/bench-sink.ts unix:PATH [--record FILE]
import * as fs from "node:fs";
import { encodeFrame, HEADER_SIZE, MAGIC, MAX_PAYLOAD, TRAILER_SIZE } from "../src/protocol/frame.ts";
import { decodeJson, encodeJson, MsgType, PROTOCOL_NAME, PROTOCOL_VERSION, type Hello } from "../src/protocol/messages.ts";
import { transportFor } from "../src/transport/index.ts";

const args = process.argv.slice(2);
const spec = args[0];
const recordAt = args.indexOf("--record");
const recordTo = recordAt >= 0 ? args[recordAt + 1] : undefined;
if (!spec?.startsWith("unix:") || (recordAt >= 0 && !recordTo)) {
  console.error("usage: bun scripts/bench-sink.ts unix:PATH [--record FILE]");
  process.exit(2);
}

const listener = await transportFor(spec, true).listen();
const conn = (await listener.accept()) ?? process.exit(1);
await listener.close();
const record = recordTo ? fs.openSync(recordTo, "w") : null;
const started = performance.now();

let session = "";
let chunkSize = 1048576;
let size = 0;
let records = 0;
let received = 0;
let done: Uint8Array | null = null;
const send = (type: number, value: unknown) => conn.write(encodeFrame(type, encodeJson(value)));

// Frame parser without checksums: a header, then either a payload to skip
// (DATA, ZERO) or one to keep (control messages, capped by MAX_PAYLOAD).
const header = new Uint8Array(HEADER_SIZE);
let inHeader = 0;
let skip = 0;
let keep: Uint8Array | null = null;
let kept = 0;
let type = 0;

async function control(t: number, payload: Uint8Array): Promise<void> {
  if (t === MsgType.HELLO) {
    const h = decodeJson<Hello>(payload);
    if (h?.role !== "push" || typeof h.session !== "string") {
      await send(MsgType.ERROR, { session: h?.session, code: "REFUSED", message: "bench sink: push only" });
      return;
    }
    session = h.session;
    if (typeof h.chunkSize === "number" && h.chunkSize > 0) chunkSize = h.chunkSize;
    if (typeof h.disk?.size === "number" && h.disk.size >= 0) size = h.disk.size;
    const caps = Array.isArray(h.caps) ? h.caps.filter((c) => typeof c === "string") : [];
    await send(MsgType.HELLO_ACK, { protocol: PROTOCOL_NAME, proto: PROTOCOL_VERSION, tool: "tbbackup-bench-sink", session, host: { hostname: "bench-sink", machineId: null, productUuid: null }, caps, id: "bench-sink/sink/0", ...(caps.includes("blake3") ? { digest: "blake3" } : {}) });
  } else if (t === MsgType.END) {
    const end = decodeJson<Record<string, unknown>>(payload) ?? {};
    // everything END says about the data (sha256, root, ...) comes back as the receiver's own
    const echo = Object.fromEntries(Object.entries(end).filter(([k]) => k !== "chunks" && k !== "files"));
    done = encodeFrame(MsgType.DONE, encodeJson({ ...echo, session, id: "bench-sink/sink/0", path: "/dev/null", storedBytes: received }));
    await conn.write(done);
  } else if (t === MsgType.STATUS && done) {
    await conn.write(done);
  } else if (t === MsgType.ERROR) {
    console.error(`bench sink: the sender stopped: ${new TextDecoder().decode(payload)}`);
  }
}

for (;;) {
  const data = await conn.read();
  if (!data) break;
  if (record !== null) fs.writeSync(record, data);
  received += data.length;
  let at = 0;
  while (at < data.length) {
    if (skip > 0) {
      const n = Math.min(skip, data.length - at);
      skip -= n;
      at += n;
    } else if (keep) {
      const n = Math.min(keep.length - kept, data.length - at);
      keep.set(data.subarray(at, at + n), kept);
      kept += n;
      at += n;
      if (kept === keep.length) {
        const payload = keep.subarray(0, keep.length - TRAILER_SIZE);
        keep = null;
        await control(type, payload);
      }
    } else {
      const n = Math.min(HEADER_SIZE - inHeader, data.length - at);
      header.set(data.subarray(at, at + n), inHeader);
      inHeader += n;
      at += n;
      if (inHeader < HEADER_SIZE) continue;
      inHeader = 0;
      const view = new DataView(header.buffer);
      const length = view.getUint32(8, true);
      if (!MAGIC.every((b, i) => header[i] === b) || length > MAX_PAYLOAD) {
        console.error("bench sink: the stream is out of step (not a frame header); giving up");
        process.exit(1);
      }
      type = header[4]!;
      if (type === MsgType.DATA || type === MsgType.ZERO) {
        skip = length + TRAILER_SIZE;
        // as a receiver would: PROGRESS after every 256 records
        if (++records % 256 === 0) await send(MsgType.PROGRESS, { session, chunks: records, bytes: Math.min(records * chunkSize, size) });
      } else {
        keep = new Uint8Array(length + TRAILER_SIZE);
        kept = 0;
      }
    }
  }
  conn.release?.(data);
}
if (record !== null) fs.closeSync(record);
await conn.close();
const s = (performance.now() - started) / 1000;
console.error(`bench sink: ${records} records, ${received} bytes in ${s.toFixed(2)} s${done ? "" : " (no END: the push did not finish)"}`);
process.exit(done ? 0 : 1);
