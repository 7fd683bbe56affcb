// A man in the middle for transport tests: forwards a unix-socket session
// frame by frame and can cut it or damage one frame. It parses only frame
// headers (layout in docs/PROTOCOL.md) so it knows where a payload is.
import * as net from "node:net";
import { crc32 } from "../../src/protocol/frame.ts";

export interface ProxyPlan {
  /** cut both connections after this many bytes from the pusher */
  cutAfterBytes?: number;
  /** damage the payload of the Nth frame of this type from the pusher (or, with `every`, of it and every later one), or drop that frame */
  damage?: { type: number; nth: number; at: number; fixCrc: boolean; drop?: boolean; every?: boolean };
  /**
   * damage the payload of the first frame of this type from the receiver (its
   * CRC then fails), or of every one; or drop that frame instead
   */
  damageBack?: { type: number; every?: boolean; drop?: boolean };
}

/** Calls `each` with every whole frame in the stream fed to the returned function. */
function frameSplitter(each: (frame: Buffer) => void): (d: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 16) {
      const total = 16 + buf.readUInt32LE(8) + 4;
      if (buf.length < total) break;
      const frame = Buffer.from(buf.subarray(0, total));
      buf = buf.subarray(total);
      each(frame);
    }
  };
}

export function startProxy(listenPath: string, targetPath: string, plan: ProxyPlan): Promise<net.Server> {
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPath);
    let damagedBack = false;
    upstream.on(
      "data",
      plan.damageBack
        ? frameSplitter((frame) => {
            const b = plan.damageBack!;
            if ((!damagedBack || b.every) && frame[4] === b.type && frame.length > 20) {
              damagedBack = true;
              if (b.drop) return;
              frame[16]! ^= 0x40;
            }
            client.write(frame);
          })
        : (d) => client.write(d),
    );
    upstream.on("error", () => client.end());
    upstream.on("end", () => client.end()); // pass on what the receiver said last
    client.on("error", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
    let buf = Buffer.alloc(0);
    let forwarded = 0;
    let seen = 0;
    client.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length < 16) break;
        const len = buf.readUInt32LE(8);
        const total = 16 + len + 4;
        if (buf.length < total) break;
        const frame = Buffer.from(buf.subarray(0, total));
        buf = buf.subarray(total);
        const dmg = plan.damage;
        if (dmg && frame[4] === dmg.type && (dmg.every ? seen++ >= dmg.nth : seen++ === dmg.nth)) {
          if (dmg.drop) continue;
          frame[16 + Math.min(dmg.at, len - 1)]! ^= 0x40;
          if (dmg.fixCrc) frame.writeUInt32LE(crc32(frame.subarray(16, 16 + len)), 16 + len);
        }
        if (plan.cutAfterBytes !== undefined && forwarded + total > plan.cutAfterBytes) {
          upstream.write(frame.subarray(0, plan.cutAfterBytes - forwarded), () => {
            upstream.destroy();
            client.destroy();
          });
          forwarded = plan.cutAfterBytes;
          return;
        }
        forwarded += total;
        upstream.write(frame);
      }
    });
  });
  return new Promise((resolve) => server.listen(listenPath, () => resolve(server)));
}
