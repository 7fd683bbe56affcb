// The benchmark's slow cable: a relay from one unix socket to another that
// holds the direction from whoever connects (a sender) to the far socket (a
// receiver) to N MB/s (10^6 bytes a second) with a token bucket, and passes
// the answers back unthrottled. scripts/bench.sh runs one per push to time
// several sessions into one receiver (README "receive", "Performance").
// The bucket is the relay's, shared by its connections, as one cable would be.
// It forwards bytes as they come and checks nothing; it runs until killed.
// (node:net, not src/transport: built on src/transport's unix: connections,
// whose reads are always pending on the fs thread pool, it moved 0.8 MB/s;
// why was not looked into.)
// usage: bun scripts/bench-relay.ts unix:LISTEN unix:TARGET [MB/s, default 25]
import * as fs from "node:fs";
import * as net from "node:net";
import { once } from "node:events";

const [from, to, rateArg] = process.argv.slice(2);
const mbs = Number(rateArg ?? 25);
if (!from?.startsWith("unix:") || !to?.startsWith("unix:") || !(mbs > 0 && mbs <= 100_000)) {
  console.error("usage: bun scripts/bench-relay.ts unix:LISTEN unix:TARGET [MB/s, default 25]");
  process.exit(2);
}
const listenPath = from.slice(5);
const targetPath = to.slice(5);
const rate = mbs * 1e6; // bytes a second
const burst = Math.max(65536, rate / 50); // 20 ms of the line

// The token bucket: each forwarded read takes its length; the debt is how
// long the sending side must wait before its next read is taken.
let tokens = burst;
let last = performance.now();
function take(n: number): number {
  const now = performance.now();
  tokens = Math.min(burst, tokens + ((now - last) / 1000) * rate) - n;
  last = now;
  return tokens < 0 ? (-tokens / rate) * 1000 : 0;
}

function relay(client: net.Socket): void {
  const started = performance.now();
  let sent = 0;
  const server = net.createConnection(targetPath);
  // sender -> receiver: each read waits for the bucket and for the receiver's
  // backpressure before the next is taken (the iterator pauses the sender)
  void (async () => {
    await once(server, "connect");
    for await (const data of client as AsyncIterable<Buffer>) {
      sent += data.length;
      const wait = take(data.length);
      if (wait > 0) await Bun.sleep(wait);
      if (!server.write(data)) await once(server, "drain");
    }
  })().catch(() => end());
  // receiver -> sender: as it comes, with backpressure only
  server.on("data", (data: Buffer) => {
    if (!client.write(data)) {
      server.pause();
      client.once("drain", () => server.resume());
    }
  });
  // whichever side ends or fails first ends the other
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    client.end();
    server.end();
    const s = (performance.now() - started) / 1000;
    console.error(`bench relay: ${sent} bytes to ${to} in ${s.toFixed(2)} s (${(sent / 1e6 / s).toFixed(1)} MB/s; limit ${mbs} MB/s)`);
  };
  for (const sock of [client, server]) {
    sock.on("end", end);
    sock.on("close", end);
    sock.on("error", (e) => {
      if (!ended) console.error(`bench relay: ${sock === server ? to : from}: ${e.message}`);
      end();
      client.destroy();
      server.destroy();
    });
  }
}

fs.rmSync(listenPath, { force: true });
net.createServer(relay).listen(listenPath);
