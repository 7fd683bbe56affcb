// How fast a polled (O_NONBLOCK) fdConn writes into a stream that drains at a
// fixed rate, like a receive writing to a Thunderbolt peer's device (its TX
// ring emptied by the link at ~1.15 GB/s). The device is modelled by one end
// of a unix socketpair (SO_SNDBUF as the ring) whose other end a small C
// reader drains at RATE bytes/s. Prints GB/s and the writer's CPU seconds per GiB.
//   bun scripts/bench-polled-write.ts [SNDBUF_BYTES] [FDCONN_MODULE]   (RATE=1150000000 by default; needs gcc)
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { dlopen, FFIType, ptr } from "bun:ffi";

const sndbuf = Number(process.argv[2] ?? 512 * 1024);
const modPath = path.resolve(process.argv[3] ?? path.join(import.meta.dir, "../src/transport/fd-conn.ts"));
const rate = process.env.RATE ?? "1150000000";
const { fdConn } = await import(modPath);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tbb-bench-pw-"));
const reader = path.join(dir, "paced");
fs.writeFileSync(
  reader + ".c",
  `#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  double rate = atof(argv[1]), total = 0, t0 = now();
  static char buf[16384];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n <= 0) return 0;
    total += n;
    double ahead = total / rate - (now() - t0);
    if (ahead > 0.00005) { struct timespec s = { 0, (long)(ahead * 1e9) }; nanosleep(&s, NULL); }
  }
}
`,
);
if (Bun.spawnSync(["gcc", "-O2", "-o", reader, reader + ".c"]).exitCode !== 0) throw new Error("gcc failed");

const libc = dlopen("libc.so.6", {
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  socketpair: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
});
const sv = new Int32Array(2);
if (libc.symbols.socketpair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0, ptr(sv)) !== 0) throw new Error("socketpair failed");
const [fd, other] = [sv[0]!, sv[1]!];
libc.symbols.setsockopt(fd, 1 /* SOL_SOCKET */, 7 /* SO_SNDBUF */, ptr(new Int32Array([sndbuf])), 4);
const drain = Bun.spawn([reader, rate], { stdin: other, stdout: "ignore" });
fs.closeSync(other);
libc.symbols.fcntl(fd, 4 /* F_SETFL */, libc.symbols.fcntl(fd, 3 /* F_GETFL */, 0) | 0o4000 /* O_NONBLOCK */);
const conn = fdConn(fd, { description: "bench", lossy: true, polled: true, gone: (e: unknown) => new Error(String(e)) });

const buf = new Uint8Array(1 << 20).fill(7);
const total = 2 ** 30;
const c0 = process.cpuUsage();
const t0 = performance.now();
for (let n = 0; n < total; n += buf.length) await conn.write(buf);
const secs = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(c0);
await conn.close();
await drain.exited;
fs.rmSync(dir, { recursive: true, force: true });
console.log(`sndbuf ${sndbuf >> 10} KiB, reader ${(Number(rate) / 1e9).toFixed(2)} GB/s: ${(total / secs / 1e9).toFixed(2)} GB/s, writer CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s per GiB`);
process.exit(0);
