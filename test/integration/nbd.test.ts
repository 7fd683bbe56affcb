// tbbackup nbd / mount / umount with the compiled binary, against NBD clients
// nobody here wrote (nbdinfo, nbdcopy, nbdsh, qemu-img, nbdfuse through mount)
// and a raw socket client for what those clients would never send.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { cleanup, finish, makeExt4Image, run, sh, sha256File, start, storeBackup, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";

const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
// nbdsh runs `python3` from PATH, which must be the one with libnbd's module
const SYS_PATH = `/usr/bin:/bin:${process.env.PATH}`;
const haveNbdsh = has("nbdsh") && Bun.spawnSync(["nbdsh", "-c", "pass"], { env: { ...process.env, PATH: SYS_PATH } }).exitCode === 0;
const haveLibnbd = has("nbdinfo") && has("nbdcopy");
const isRoot = process.getuid?.() === 0;
const canMount = isRoot && has("nbdfuse") && has("losetup") && has("sfdisk") && has("mkfs.vfat") && has("mcopy") && fs.existsSync("/dev/fuse");

let dir: string;
let img: string;
let backupDir: string;

/** A running `tbbackup nbd` on a unix socket. */
interface Served {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  sock: string;
  uri: string;
  stderr: () => string;
  stop: () => Promise<{ code: number; stderr: string }>;
}

async function serve(backup: string, extra: string[] = [], env: Record<string, string> = {}): Promise<Served> {
  const sock = path.join(dir, `s${Math.random().toString(36).slice(2, 8)}.sock`);
  const proc = start(["nbd", backup, "--listen", `unix:${sock}`, ...extra], { env });
  let err = "";
  const reader = (async () => {
    const dec = new TextDecoder();
    for await (const c of proc.stderr) err += dec.decode(c);
  })();
  await waitFor(() => err.includes("serving ") || proc.exitCode !== null, "the nbd server", 20000);
  if (!err.includes("serving ")) throw new Error(`nbd did not start: ${err}`);
  let stopped: { code: number; stderr: string } | null = null;
  return {
    proc,
    sock,
    uri: `nbd+unix:///?socket=${sock}`,
    stderr: () => err,
    stop: async () => {
      if (stopped) return stopped;
      proc.kill("SIGTERM");
      const code = await proc.exited;
      await reader;
      stopped = { code, stderr: err };
      return stopped;
    },
  };
}

function nbdsh(uri: string, code: string): { code: number; stdout: string; stderr: string } {
  const r = Bun.spawnSync(["nbdsh", "-u", uri, "-c", code], { env: { ...process.env, PATH: SYS_PATH }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A bare NBD client on a socket, for what real clients never send. */
class RawClient {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;
  private constructor(private readonly s: net.Socket) {
    s.on("data", (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
      this.waiter?.();
    });
    const end = () => {
      this.closed = true;
      this.waiter?.();
    };
    s.on("close", end);
    s.on("error", end);
  }
  /** Connects; a full listen queue (EAGAIN, a busy machine) is tried again. */
  static async connect(sock: string): Promise<RawClient> {
    for (let tries = 0; ; tries++) {
      try {
        return await new Promise<RawClient>((resolve, reject) => {
          const s = net.connect(sock, () => resolve(new RawClient(s)));
          s.once("error", reject);
        });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EAGAIN" || tries > 100) throw e;
        await Bun.sleep(20);
      }
    }
  }
  send(b: Uint8Array): void {
    this.s.write(b);
  }
  /** n bytes, or null once the server has closed the connection. */
  async read(n: number): Promise<Buffer | null> {
    const end = Date.now() + 20000;
    while (this.buf.length < n) {
      if (this.closed) return null;
      if (Date.now() > end) throw new Error("raw client: no answer");
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 200);
      });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Reads the greeting, sends client flags (no zeroes, fixed newstyle). */
  async hello(): Promise<void> {
    const g = await this.read(18);
    expect(g!.subarray(0, 8).toString()).toBe("NBDMAGIC");
    expect(g!.subarray(8, 16).toString()).toBe("IHAVEOPT");
    this.send(u32(3));
  }
  option(opt: number, data: Uint8Array = new Uint8Array(0)): void {
    const h = Buffer.alloc(16);
    h.write("IHAVEOPT", 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.send(Buffer.concat([h, data]));
  }
  /** One option reply: its type and data. */
  async optionReply(): Promise<{ opt: number; type: number; data: Buffer } | null> {
    const h = await this.read(20);
    if (!h) return null;
    expect(h.readBigUInt64BE(0)).toBe(0x3e889045565a9n);
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? (await this.read(len))! : Buffer.alloc(0) };
  }
  /** NBD_OPT_GO on the default export: returns the export size. */
  async go(): Promise<bigint> {
    const d = Buffer.alloc(6); // name length 0, no info requests
    this.option(7, d);
    let size = -1n;
    for (;;) {
      const r = await this.optionReply();
      if (!r) throw new Error("closed during GO");
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) size = r.data.readBigUInt64BE(2);
      if (r.type === 1) return size;
      if (r.type & 0x80000000) throw new Error(`GO failed: ${r.type.toString(16)}`);
    }
  }
  request(type: number, handle: bigint, offset: bigint, length: number, payload?: Uint8Array): void {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(0x25609513, 0);
    b.writeUInt16BE(0, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(handle, 8);
    b.writeBigUInt64BE(offset, 16);
    b.writeUInt32BE(length, 24);
    this.send(payload ? Buffer.concat([b, payload]) : b);
  }
  /** A simple reply: error and (on success of a read of `length`) the data. */
  async reply(length: number): Promise<{ error: number; handle: bigint; data: Buffer | null } | null> {
    const h = await this.read(16);
    if (!h) return null;
    expect(h.readUInt32BE(0)).toBe(0x67446698);
    const error = h.readUInt32BE(4);
    return { error, handle: h.readBigUInt64BE(8), data: error === 0 && length > 0 ? await this.read(length) : null };
  }
  /** Half-closes: nothing more will be sent. */
  end(): void {
    this.s.end();
  }
  close(): void {
    this.s.destroy();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Bytes of a file at an offset. */
function slice(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, "r");
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

beforeAll(async () => {
  dir = tempDir("tbb-nbd-");
  img = makeExt4Image(dir, 32);
  const store = path.join(dir, "store");
  await storeBackup(img, store, path.join(dir, "r.sock"));
  const rows = JSON.parse((await run(["list", "--out", store, "--json"])).stdout);
  backupDir = path.join(store, rows[0].id);
});
afterAll(() => cleanup(dir));

describe.skipIf(!haveLibnbd)("tbbackup nbd: real clients (needs libnbd-bin: nbdinfo, nbdcopy)", () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(backupDir);
  });
  afterAll(async () => {
    await s.stop();
  });

  test("the socket is 0600; nbdinfo --json: size, read-only", async () => {
    expect(fs.statSync(s.sock).mode & 0o777).toBe(0o600);
    const r = sh(`nbdinfo --json '${s.uri}'`);
    const j = JSON.parse(r);
    expect(j.exports[0]["export-size"]).toBe(fs.statSync(img).size);
    expect(j.exports[0].is_read_only).toBe(true);
    expect(j.exports[0].can_multi_conn).toBe(true);
  });

  test("nbdcopy of the whole export equals zstd -dc image.zst and the source, and is sparse where the chunks are zero", () => {
    const out = path.join(dir, "copy.raw");
    sh(`nbdcopy '${s.uri}' ${out}`);
    expect(sha256File(out)).toBe(zstdSha(path.join(backupDir, "image.zst")));
    expect(sha256File(out)).toBe(sha256File(img));
    expect(fs.statSync(out).blocks * 512).toBeLessThan(fs.statSync(out).size / 2);
    fs.rmSync(out);
  });

  test("nbdinfo --map (base:allocation): the zero chunks are holes that read as zeros, the rest is data", () => {
    const map = JSON.parse(sh(`nbdinfo --map --json '${s.uri}'`)) as { offset: number; length: number; type: number }[];
    expect(map.reduce((a, e) => a + e.length, 0)).toBe(fs.statSync(img).size);
    const zeros = map.filter((e) => e.type === 3);
    expect(zeros.length).toBeGreaterThan(0);
    for (const e of zeros) {
      expect(e.offset % 1048576).toBe(0);
      expect(slice(img, e.offset, e.length).every((b) => b === 0)).toBe(true);
    }
    // each data extent starts with a chunk that is not all zeros
    for (const e of map.filter((e) => e.type === 0)) expect(slice(img, e.offset, 1048576).some((b) => b !== 0)).toBe(true);
  });

  test.skipIf(!has("qemu-img"))("qemu-img convert from the export gives the same disk (needs qemu-utils)", () => {
    const out = path.join(dir, "conv.qcow2");
    sh(`qemu-img convert -f raw -O qcow2 '${s.uri}' ${out}`);
    sh(`qemu-img compare -f qcow2 -F raw ${out} ${img}`); // throws unless identical
    fs.rmSync(out);
  });

  test.skipIf(!haveNbdsh)("(needs nbdsh from python3-libnbd) random reads at odd offsets and lengths (nbdsh) equal the source, across chunk boundaries", () => {
    const size = fs.statSync(img).size;
    // the same pseudo-random reads in python (through libnbd) and here (from the source file)
    const reads: [number, number][] = [[0, 1], [size - 1, 1], [1048576 - 3, 7], [2 * 1048576 - 100000, 3 * 1048576 + 1], [size - 5000, 5000]];
    let x = 12345;
    const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648);
    for (let i = 0; i < 150; i++) {
      const len = 1 + (rnd() % 300000);
      reads.push([rnd() % (size - len), len]);
    }
    const code = `import hashlib\nfor (o, n) in ${JSON.stringify(reads)}:\n    print(hashlib.sha256(h.pread(n, o)).hexdigest())\n`;
    const r = nbdsh(s.uri, code);
    expect(r.stderr).toBe("");
    const got = r.stdout.trim().split("\n");
    expect(got.length).toBe(reads.length);
    reads.forEach(([o, n], i) => expect(got[i]).toBe(new Bun.CryptoHasher("sha256").update(slice(img, o, n)).digest("hex")));
  });

  test.skipIf(!has("qemu-io"))("qemu-io -r reads the bytes at an odd offset (needs qemu-utils)", () => {
    const want = slice(img, 1048570, 12);
    const out = sh(`qemu-io -r -f raw -c 'read -v 1048570 12' '${s.uri}'`);
    const hex = [...want].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    expect(out).toContain(hex.slice(0, 23)); // (qemu-io prints 16 bytes per line, grouped)
  });
});

describe.skipIf(!haveLibnbd)("tbbackup nbd: a cache smaller than the data (chunk buffers evicted and reused)", () => {
  test.each(["2", "0"])("TBBACKUP_NBD_WORKERS=%s: nbdcopy over 4 connections and random reads still equal the source", async (workers) => {
    const s = await serve(backupDir, ["--cache-size", "1M"], { TBBACKUP_NBD_WORKERS: workers });
    try {
      const out = path.join(dir, "copy-small-cache.raw");
      for (let i = 0; i < 2; i++) {
        sh(`nbdcopy --connections=4 --requests=16 --request-size=65536 '${s.uri}' ${out}`);
        expect(sha256File(out)).toBe(sha256File(img));
      }
      fs.rmSync(out);
      if (haveNbdsh) {
        const size = fs.statSync(img).size;
        const reads: [number, number][] = [];
        let x = 777;
        const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648);
        for (let i = 0; i < 100; i++) {
          const len = 1 + (rnd() % 2500000);
          reads.push([rnd() % (size - len), len]);
        }
        const r = nbdsh(s.uri, `import hashlib\nfor (o, n) in ${JSON.stringify(reads)}:\n    print(hashlib.sha256(h.pread(n, o)).hexdigest())\n`);
        const got = r.stdout.trim().split("\n");
        reads.forEach(([o, n], i) => expect(got[i]).toBe(new Bun.CryptoHasher("sha256").update(slice(img, o, n)).digest("hex")));
      }
    } finally {
      const st = await s.stop();
      expect(st.stderr).toMatch(/[1-9]\d* evictions/);
    }
  });
});

describe.skipIf(!haveLibnbd)("tbbackup nbd: hostile and odd clients (needs nbdinfo as the good client)", () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(backupDir);
  });
  afterAll(async () => {
    await s.stop();
  });

  const good = () => {
    const j = JSON.parse(sh(`nbdinfo --json '${s.uri}'`));
    expect(j.exports[0]["export-size"]).toBe(fs.statSync(img).size);
  };

  test("garbage before the handshake ends only that connection", async () => {
    const c = await RawClient.connect(s.sock);
    c.send(crypto.getRandomValues(new Uint8Array(4)).map(() => 0xff)); // unknown client flags
    c.send(crypto.getRandomValues(new Uint8Array(60000)));
    await waitFor(() => c.closed, "the server to close the garbage connection");
    const d = await RawClient.connect(s.sock);
    await d.hello();
    d.send(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    await waitFor(() => d.closed, "the server to close the HTTP connection");
    good();
  });

  test("an unknown option gets NBD_REP_ERR_UNSUP, a huge option length is refused before allocating, the connection goes on after UNSUP", async () => {
    const c = await RawClient.connect(s.sock);
    await c.hello();
    c.option(4242, Buffer.from("whatever"));
    const r = await c.optionReply();
    expect(r!.opt).toBe(4242);
    expect(r!.type).toBe(0x80000001);
    c.option(3); // NBD_OPT_LIST still answered
    expect((await c.optionReply())!.type).toBe(2);
    expect((await c.optionReply())!.type).toBe(1);
    expect(await c.go()).toBe(BigInt(fs.statSync(img).size));
    c.close();
    const d = await RawClient.connect(s.sock);
    await d.hello();
    const h = Buffer.alloc(16);
    h.write("IHAVEOPT", 0);
    h.writeUInt32BE(7, 8);
    h.writeUInt32BE(0xfffffff0, 12); // claims 4 GiB of option data
    d.send(h);
    const t = await d.optionReply();
    expect(t!.type).toBe(0x80000009); // NBD_REP_ERR_TOO_BIG
    await waitFor(() => d.closed, "the server to close");
    good();
  });

  test("reads past the end or over 32 MiB get EINVAL and the connection stays usable; writes, trim, write-zeroes get EPERM; flush succeeds", async () => {
    const size = fs.statSync(img).size;
    const c = await RawClient.connect(s.sock);
    await c.hello();
    await c.go();
    c.request(0, 1n, BigInt(size - 10), 11);
    expect((await c.reply(11))!.error).toBe(22);
    c.request(0, 2n, 0xffffffffffffff00n, 4096);
    expect((await c.reply(4096))!.error).toBe(22);
    c.request(0, 3n, 0n, 64 * 1024 * 1024);
    expect((await c.reply(64 * 1024 * 1024))!.error).toBe(22);
    c.request(1, 4n, 0n, 4096, new Uint8Array(4096)); // write: its payload is skipped
    expect((await c.reply(0))!.error).toBe(1);
    c.request(4, 5n, 0n, 4096); // trim
    expect((await c.reply(0))!.error).toBe(1);
    c.request(6, 6n, 0n, 4096); // write zeroes
    expect((await c.reply(0))!.error).toBe(1);
    c.request(7, 10n, 0n, 4096); // block status without structured replies and base:allocation
    expect((await c.reply(0))!.error).toBe(22);
    c.request(3, 7n, 0n, 0); // flush
    expect((await c.reply(0))!.error).toBe(0);
    c.request(0, 8n, 1048570n, 20);
    const ok = await c.reply(20);
    expect(ok!.error).toBe(0);
    expect(ok!.handle).toBe(8n);
    expect(ok!.data!.equals(slice(img, 1048570, 20))).toBe(true);
    c.request(2, 9n, 0n, 0); // disconnect
    await waitFor(() => c.closed, "the server to close after NBD_CMD_DISC");
    // (nothing written reached the backup)
    expect(zstdSha(path.join(backupDir, "image.zst"))).toBe(sha256File(img));
  });

  test("a client that sends its requests and half-closes still gets every answer", async () => {
    const c = await RawClient.connect(s.sock);
    await c.hello();
    await c.go();
    for (let i = 0; i < 8; i++) c.request(0, BigInt(i), BigInt(i * 1048576 + 7), 65536);
    c.end();
    for (let i = 0; i < 8; i++) {
      const r = await c.reply(65536);
      expect(r!.handle).toBe(BigInt(i));
      expect(r!.data!.equals(slice(img, i * 1048576 + 7, 65536))).toBe(true);
    }
    await waitFor(() => c.closed, "the server to close after answering");
  });

  test("1000 connections opened and dropped (some mid-handshake): the server stays up, its memory bounded", async () => {
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${s.proc.pid}/status`, "utf8"))![1]) * 1024;
    const before = rss();
    for (let i = 0; i < 1000; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, async (_, k) => {
          const c = await RawClient.connect(s.sock);
          if ((i + k) % 3 === 1) c.send(u32(3));
          if ((i + k) % 3 === 2) {
            await c.hello();
            c.option(7, Buffer.alloc(6));
          }
          c.close();
        }),
      );
    }
    good();
    console.log(`nbd server RSS: ${(before / 1048576).toFixed(0)} MiB before 1000 connections, ${(rss() / 1048576).toFixed(0)} MiB after`);
    expect(rss() - before).toBeLessThan(64 * 1024 * 1024);
  });

  test("more than 128 clients at once: the extra ones are turned away, the others and later ones are served", async () => {
    // one after the other: 140 at once can overflow the listen queue (EAGAIN) on a busy machine
    const held: RawClient[] = [];
    try {
      // a connection the server turns away at once can also fail its connect (ECONNRESET): it counts as turned away
      let refused = 0;
      for (let i = 0; i < 140; i++) {
        try {
          held.push(await RawClient.connect(s.sock));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "ECONNRESET") throw e;
          refused++;
        }
      }
      // (at least 12: connections of the test before may not all be gone yet on a busy machine)
      await waitFor(() => refused + held.filter((c) => c.closed).length >= 12, "the extra connections to be closed");
      await Bun.sleep(200);
      expect(held.filter((c) => !c.closed).length).toBeGreaterThan(100);
      const open = held.find((c) => !c.closed)!;
      await open.hello();
      expect(await open.go()).toBe(BigInt(fs.statSync(img).size));
    } finally {
      for (const c of held) c.close();
    }
    await Bun.sleep(300);
    good();
  });

  test("a client that stops reading does not hold up another one", async () => {
    const stall = await RawClient.connect(s.sock);
    await stall.hello();
    await stall.go();
    // 64 reads of 1 MiB that are never read back
    for (let i = 0; i < 64; i++) stall.request(0, BigInt(i), BigInt((i % 16) * 1048576), 1048576);
    await Bun.sleep(300);
    good();
    const r = nbdsh(s.uri, "print(len(h.pread(1048576, 0)))");
    if (haveNbdsh) expect(r.stdout.trim()).toBe("1048576");
    stall.close();
  });
});

describe.skipIf(!haveLibnbd)("tbbackup nbd: damage, refusals, stopping (needs nbdinfo)", () => {
  test.each(["2", "0"])("TBBACKUP_NBD_WORKERS=%s: a flipped byte in one frame: reads of that chunk fail with EIO (the server names it), reads elsewhere succeed", async (workers) => {
    const bad = path.join(dir, `bad-backup-${workers}`);
    fs.cpSync(backupDir, bad, { recursive: true });
    // the largest frame is one of random.bin's chunks
    const { ImageReader } = await import("../../src/store/image-reader.ts");
    const r = ImageReader.open(path.join(bad, "image.zst"));
    let k = 0;
    for (let i = 0; i < r.entries.length; i++) if (r.entries[i]!.compressedSize > r.entries[k]!.compressedSize) k = i;
    const at = r.offsets[k]! + Math.floor(r.entries[k]!.compressedSize / 2);
    r.close();
    const fd = fs.openSync(path.join(bad, "image.zst"), "r+");
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x40;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);
    const s = await serve(bad, [], { TBBACKUP_NBD_WORKERS: workers });
    try {
      const c = await RawClient.connect(s.sock);
      await c.hello();
      await c.go();
      c.request(0, 1n, BigInt(k * 1048576 + 100), 10);
      expect((await c.reply(10))!.error).toBe(5); // EIO, and no bytes
      c.request(0, 2n, BigInt((k - 1) * 1048576 + 1048000), 2000); // spans into the bad chunk
      expect((await c.reply(2000))!.error).toBe(5);
      c.request(0, 3n, BigInt((k - 1) * 1048576), 1000); // the chunk before it is fine
      const ok = await c.reply(1000);
      expect(ok!.error).toBe(0);
      expect(ok!.data!.equals(slice(img, (k - 1) * 1048576, 1000))).toBe(true);
      c.close();
      if (haveNbdsh) {
        const e = nbdsh(s.uri, `try:\n    h.pread(4096, ${k * 1048576})\n    print("read")\nexcept nbd.Error as e:\n    print("errno", e.errno)\nprint(len(h.pread(4096, 0)))`);
        expect(e.stdout.trim().split("\n")).toEqual(["errno EIO", "4096"]);
      }
      const st = await s.stop();
      expect(st.code).toBe(0);
      expect(st.stderr).toContain(`chunk ${k} (raw offset ${k * 1048576}) is damaged`);
    } finally {
      await s.stop();
    }
  });

  test("--listen tcp:PORT listens on loopback only", async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const p = start(["nbd", backupDir, "--listen", `tcp:${port}`]);
    try {
      await waitFor(() => Bun.spawnSync(["nbdinfo", "--size", `nbd://127.0.0.1:${port}`]).exitCode === 0, "the tcp listener");
      expect(sh(`nbdinfo --size nbd://127.0.0.1:${port}`).trim()).toBe(String(fs.statSync(img).size));
      // (a connection to 127.0.0.1 would also reach a wildcard bind: the socket's own address is what tells)
      const listening = sh(`ss -ltnH 'sport = :${port}'`);
      expect(listening).toContain(`127.0.0.1:${port}`);
    } finally {
      p.kill("SIGTERM");
      expect(await p.exited).toBe(0);
    }
  });

  test.each(["2", "0"])("TBBACKUP_NBD_WORKERS=%s: a frame that decompresses fine but whose XXH3-64 is not the one in chunks.txt gives EIO", async (workers) => {
    const bad = path.join(dir, `bad-list-${workers}`);
    fs.cpSync(backupDir, bad, { recursive: true });
    const lines = fs.readFileSync(path.join(bad, "chunks.txt"), "utf8").split("\n");
    lines[0] = lines[0]!.replace(/[0-9a-f]{16}$/, "0123456789abcdef");
    fs.writeFileSync(path.join(bad, "chunks.txt"), lines.join("\n"));
    const s = await serve(bad, [], { TBBACKUP_NBD_WORKERS: workers });
    try {
      const c = await RawClient.connect(s.sock);
      await c.hello();
      await c.go();
      c.request(0, 1n, 0n, 512);
      expect((await c.reply(512))!.error).toBe(5);
      c.request(0, 2n, 1048576n, 512);
      expect((await c.reply(512))!.error).toBe(0);
      c.close();
    } finally {
      const st = await s.stop();
      expect(st.stderr).toContain("chunk 0 (raw offset 0) is damaged: its XXH3-64 does not match chunks.txt");
    }
  });

  test("an image.zst on its own (no manifest, no chunks.txt) is served, checked by zstd's own checksums", async () => {
    const alone = path.join(dir, "alone");
    fs.mkdirSync(alone);
    fs.copyFileSync(path.join(backupDir, "image.zst"), path.join(alone, "image.zst"));
    const s = await serve(path.join(alone, "image.zst"));
    try {
      const out = path.join(dir, "alone.raw");
      sh(`nbdcopy '${s.uri}' ${out}`);
      expect(sha256File(out)).toBe(sha256File(img));
      fs.rmSync(out);
    } finally {
      expect((await s.stop()).code).toBe(0);
    }
  });

  test("a seek table that claims a frame far larger than its chunk could compress to is refused before anything is allocated for it", async () => {
    const { encodeSeekTable } = await import("../../src/store/seekable.ts");
    const junk = new Uint8Array(300000);
    junk.set([0x28, 0xb5, 0x2f, 0xfd]); // (zstd's magic: it looks like an image)
    const file = path.join(dir, "claims.zst");
    fs.writeFileSync(file, Buffer.concat([junk, encodeSeekTable([{ compressedSize: junk.length, rawSize: 4096, checksum: 0 }])]));
    const r = await run(["nbd", file, "--listen", `unix:${dir}/claims.sock`]);
    expect(r.code).toBe(10);
    expect(r.stderr).toContain("a frame of 300000 bytes for a chunk of 4096");
  });

  test("SIGTERM: exit 0, the socket removed, cache figures printed; a second server on a live socket is refused (exit 16)", async () => {
    const s = await serve(backupDir);
    const second = await run(["nbd", backupDir, "--listen", `unix:${s.sock}`]);
    expect(second.code).toBe(16);
    expect(second.stderr).toContain("already in use");
    sh(`nbdinfo '${s.uri}' >/dev/null`);
    const st = await s.stop();
    expect(st.code).toBe(0);
    expect(fs.existsSync(s.sock)).toBe(false);
    expect(st.stderr).toMatch(/cache \d+ hits, \d+ misses/);
  });

  test("by ID with --out; an ID that leaves the store, a partial, a file-level backup and a plain file are refused with one line", async () => {
    const store = path.dirname(path.dirname(path.dirname(backupDir)));
    const id = path.relative(store, backupDir);
    const s = await serve(id, ["--out", store]);
    sh(`nbdinfo '${s.uri}' >/dev/null`);
    await s.stop();
    const esc = await run(["nbd", "../../etc", "--out", store, "--listen", `unix:${dir}/x.sock`]);
    expect(esc.code).toBe(11);
    const partial = path.join(dir, "partial-copy");
    fs.cpSync(backupDir, partial, { recursive: true });
    const m = JSON.parse(fs.readFileSync(path.join(partial, "manifest.json"), "utf8"));
    fs.writeFileSync(path.join(partial, "manifest.json"), JSON.stringify({ ...m, status: "partial", reason: "cut" }));
    const p = await run(["nbd", partial, "--listen", `unix:${dir}/x.sock`]);
    expect(p.code).toBe(10);
    expect(p.stderr).toContain("marked partial");
    // a real file-level backup
    const tree = path.join(dir, "ftree");
    fs.mkdirSync(tree);
    fs.writeFileSync(path.join(tree, "a.txt"), "a\n");
    const fstore = path.join(dir, "fstore");
    const recv = start(["receive", "--out", fstore, "--stream", `unix:${dir}/f.sock`, "--once"]);
    await waitFor(() => fs.existsSync(`${dir}/f.sock`), "receiver");
    expect((await run(["push", "--files", tree, "--stream", `unix:${dir}/f.sock`])).code).toBe(0);
    await finish(recv);
    const frow = JSON.parse((await run(["list", "--out", fstore, "--json"])).stdout)[0];
    const f = await run(["nbd", path.join(fstore, frow.id), "--listen", `unix:${dir}/x.sock`]);
    expect(f.code).toBe(2);
    expect(f.stderr).toContain("file-level backup");
    const plain = await run(["nbd", img, "--listen", `unix:${dir}/x.sock`]);
    expect(plain.code).toBe(11);
    expect(fs.existsSync(`${dir}/x.sock`)).toBe(false);
  });
});

describe.skipIf(!canMount)("tbbackup mount / umount (needs root, nbdfuse, /dev/fuse, loop devices)", () => {
  let gptBackup: string;
  let p2tree: string;
  beforeAll(async () => {
    // a GPT disk: p1 vfat (filled with mtools), p2 ext4 (mkfs -d) whose superblock says it needs journal recovery
    const disk = path.join(dir, "gpt.img");
    sh(`truncate -s 40M ${disk}`);
    sh(`printf 'label: gpt\\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\nstart=18432, size=61440, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n' | sfdisk -q ${disk}`);
    sh(`mkfs.vfat -C ${dir}/p1.img 8192 >/dev/null && echo hello > ${dir}/hello.txt && mcopy -i ${dir}/p1.img ${dir}/hello.txt ::/HELLO.TXT`);
    p2tree = path.join(dir, "p2tree");
    fs.mkdirSync(path.join(p2tree, "etc"), { recursive: true });
    fs.writeFileSync(path.join(p2tree, "etc/fstab"), "UUID=1234 / ext4 defaults 0 1\n");
    fs.writeFileSync(path.join(p2tree, "random.bin"), crypto.getRandomValues(new Uint8Array(60000)));
    sh(`truncate -s ${61440 * 512} ${dir}/p2.img && mkfs.ext4 -q -F -d ${p2tree} ${dir}/p2.img && debugfs -w -R 'feature needs_recovery' ${dir}/p2.img >/dev/null 2>&1`);
    expect(sh(`dumpe2fs -h ${dir}/p2.img 2>/dev/null`)).toContain("needs_recovery");
    sh(`dd if=${dir}/p1.img of=${disk} bs=512 seek=2048 conv=notrunc status=none && dd if=${dir}/p2.img of=${disk} bs=512 seek=18432 conv=notrunc status=none`);
    const store = path.join(dir, "gstore");
    await storeBackup(disk, store, path.join(dir, "g.sock"));
    const rows = JSON.parse((await run(["list", "--out", store, "--json"])).stdout);
    gptBackup = path.join(store, rows[0].id);
  });

  test("mount: the ext4 partition's files read back equal, vfat mounted or listed with a reason; umount undoes everything; image.zst unchanged", async () => {
    const before = sha256File(path.join(gptBackup, "image.zst"));
    const mnt = path.join(dir, "mnt");
    const m = await run(["mount", gptBackup, mnt, "--json"]);
    try {
      expect(m.code).toBe(0);
      const j = JSON.parse(m.stdout);
      const p2 = j.parts.find((p: { name: string }) => p.name === "p2");
      expect(p2.fstype).toBe("ext4");
      expect(p2.dir).toBe(path.join(mnt, "p2"));
      expect(fs.readFileSync(path.join(mnt, "p2/etc/fstab"), "utf8")).toBe(fs.readFileSync(path.join(p2tree, "etc/fstab"), "utf8"));
      expect(sha256File(path.join(mnt, "p2/random.bin"))).toBe(sha256File(path.join(p2tree, "random.bin")));
      const p1 = j.parts.find((p: { name: string }) => p.name === "p1");
      expect(p1.fstype).toBe("vfat");
      if (p1.dir) expect(fs.readFileSync(path.join(mnt, "p1/HELLO.TXT"), "utf8")).toBe("hello\n");
      else expect(p1.reason).toMatch(/vfat/);
      // read-only all the way down
      expect(() => fs.writeFileSync(path.join(mnt, "p2/new.txt"), "x")).toThrow();
      // a second mount on the same DIR is refused
      expect((await run(["mount", gptBackup, mnt])).code).toBe(16);
    } finally {
      const u = await run(["umount", mnt]);
      expect(u.code).toBe(0);
    }
    expect(fs.readdirSync(mnt)).toEqual([]);
    expect(sh("losetup -l -n -O BACK-FILE")).not.toContain(mnt);
    expect(fs.readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(mnt);
    expect(sha256File(path.join(gptBackup, "image.zst"))).toBe(before);
    // nothing of ours left running
    const ours = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes(`${mnt}/`);
      } catch {
        return false;
      }
    });
    expect(ours).toEqual([]);
    const again = await run(["umount", mnt]);
    expect(again.code).toBe(11);
    expect(again.stderr).toContain("not a backup mounted by 'tbbackup mount'");
  });

  test("umount while a process uses a mounted file system: exit 16, everything kept; again once it is gone: done", async () => {
    const mnt = path.join(dir, "mnt-busy");
    expect((await run(["mount", gptBackup, mnt])).code).toBe(0);
    const user = Bun.spawn(["sleep", "60"], { cwd: path.join(mnt, "p2") });
    try {
      const u = await run(["umount", mnt]);
      expect(u.code).toBe(16);
      expect(u.stderr).toContain(`cannot unmount ${mnt}/p2`);
      expect(fs.readFileSync(path.join(mnt, "p2/etc/fstab"), "utf8")).toContain("UUID=1234");
    } finally {
      user.kill();
      await user.exited;
    }
    const again = await run(["umount", mnt]);
    expect(again.code).toBe(0);
    expect(fs.readdirSync(mnt)).toEqual([]);
  });

  test("a damaged backup (image cut short) is refused before anything is set up; a non-empty DIR too", async () => {
    const bad = path.join(dir, "cut-backup");
    fs.cpSync(gptBackup, bad, { recursive: true });
    fs.truncateSync(path.join(bad, "image.zst"), fs.statSync(path.join(bad, "image.zst")).size - 5);
    const mnt = path.join(dir, "mnt-cut");
    const m = await run(["mount", bad, mnt]);
    expect(m.code).toBe(10);
    expect(m.stderr).toContain("image.zst is damaged");
    expect(fs.existsSync(mnt)).toBe(false); // (not even created)
    expect(sh("losetup -l -n -O BACK-FILE")).not.toContain(mnt);
    fs.mkdirSync(mnt);
    fs.writeFileSync(path.join(mnt, "mine.txt"), "x");
    const full = await run(["mount", gptBackup, mnt]);
    expect(full.code).toBe(2);
    expect(full.stderr).toContain("is not empty");
  });

  const xfsOk = has("mkfs.xfs") && has("xfs_io") && (fs.readFileSync("/proc/filesystems", "utf8").includes("\txfs") || Bun.spawnSync(["modprobe", "xfs"]).exitCode === 0);
  test.skipIf(!xfsOk)("an xfs left with a dirty log (shut down while mounted) is mounted with norecovery (needs xfsprogs and the xfs driver)", async () => {
    const x = path.join(dir, "xfs.img");
    const xm = path.join(dir, "xfs-mnt");
    sh(`truncate -s 320M ${x} && mkfs.xfs -q -K ${x}`);
    fs.mkdirSync(xm);
    const loop = sh(`losetup -f --show ${x}`).trim();
    try {
      sh(`mount ${loop} ${xm} && mkdir ${xm}/etc && echo hi > ${xm}/etc/hello && sync && xfs_io -x -c 'shutdown -f' ${xm}`);
    } finally {
      sh(`umount ${xm} || true; losetup -d ${loop}`);
    }
    expect(sh(`xfs_logprint -t ${x} 2>/dev/null || true`)).toContain("DIRTY");
    const store = path.join(dir, "xstore");
    await storeBackup(x, store, path.join(dir, "x.sock"));
    const b = path.join(store, JSON.parse((await run(["list", "--out", store, "--json"])).stdout)[0].id);
    const before = sha256File(path.join(b, "image.zst"));
    const mnt = path.join(dir, "mnt-xfs");
    const m = await run(["mount", b, mnt]);
    try {
      expect(m.code).toBe(0);
      expect(m.stdout).toContain(`${mnt}/p1 (xfs): mounted read-only`);
      expect(fs.readdirSync(path.join(mnt, "p1"))).toBeInstanceOf(Array);
    } finally {
      expect((await run(["umount", mnt])).code).toBe(0);
    }
    expect(sha256File(path.join(b, "image.zst"))).toBe(before);
  });

  const btrfsOk = has("mkfs.btrfs") && (fs.readFileSync("/proc/filesystems", "utf8").includes("\tbtrfs") || Bun.spawnSync(["modprobe", "btrfs"]).exitCode === 0);
  test.skipIf(!btrfsOk || !has("mkfs.ntfs") || !has("ntfs-3g"))("btrfs (ro,rescue=nologreplay) and ntfs (ntfs-3g, ro) are mounted too (needs btrfs-progs, the btrfs driver, ntfs-3g)", async () => {
    const tree = path.join(dir, "btree");
    fs.mkdirSync(path.join(tree, "etc"), { recursive: true });
    fs.writeFileSync(path.join(tree, "etc/hello"), "from btrfs\n");
    const bt = path.join(dir, "bt.img");
    const nt = path.join(dir, "nt.img");
    sh(`truncate -s 200M ${bt} && mkfs.btrfs -q -r ${tree} ${bt} 2>/dev/null`);
    sh(`truncate -s 64M ${nt} && mkfs.ntfs -q -F -Q -L old ${nt} >/dev/null 2>&1`);
    for (const [img, fstype] of [[bt, "btrfs"], [nt, "ntfs"]] as const) {
      const store = path.join(dir, `${fstype}-store`);
      await storeBackup(img, store, path.join(dir, `${fstype}.sock`));
      const b = path.join(store, JSON.parse((await run(["list", "--out", store, "--json"])).stdout)[0].id);
      const mnt = path.join(dir, `mnt-${fstype}`);
      const m = await run(["mount", b, mnt]);
      try {
        expect(m.code).toBe(0);
        expect(m.stdout).toContain(`${mnt}/p1 (${fstype}): mounted read-only`);
        if (fstype === "btrfs") expect(fs.readFileSync(path.join(mnt, "p1/etc/hello"), "utf8")).toBe("from btrfs\n");
        expect(() => fs.writeFileSync(path.join(mnt, "p1/new"), "x")).toThrow();
      } finally {
        expect((await run(["umount", mnt])).code).toBe(0);
      }
    }
  });

  test("a disk with no partition table (a bare ext4) is mounted at DIR/p1", async () => {
    const mnt = path.join(dir, "mnt-bare");
    const m = await run(["mount", backupDir, mnt]);
    try {
      expect(m.code).toBe(0);
      expect(m.stdout).toContain(`${mnt}/p1 (ext4): mounted read-only`);
      expect(fs.readFileSync(path.join(mnt, "p1/docs/readme.txt"), "utf8")).toBe("tbbackup test file\n".repeat(5000));
    } finally {
      expect((await run(["umount", mnt])).code).toBe(0);
    }
  });
});
