// Pins each driver semantic the emulator claims (test/emulator/README.md, the v7.2
// stream.c), so it cannot drift into a driver that forgives what the real one
// does not. Runs only where FUSE works (root, /dev/fuse); skipped otherwise.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cfgDir, fuseAvailable, startEmu, type Emu } from "./harness.ts";

const skip = !fuseAvailable();
let emu: Emu;

const openAsync = (p: string, flags: number | string = "r+") =>
  new Promise<number>((res, rej) => fs.open(p, flags, (e, fd) => (e ? rej(e) : res(fd))));
const readAsync = (fd: number, n: number) =>
  new Promise<Buffer>((res, rej) => {
    const b = Buffer.alloc(n);
    fs.read(fd, b, 0, n, null, (e, got) => (e ? rej(e) : res(b.subarray(0, got))));
  });
const code = (f: () => unknown): string | null => {
  try {
    f();
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
};
async function codeAsync(p: Promise<unknown>): Promise<string | null> {
  try {
    await p;
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}
const attr = (dir: string, name: string) => fs.readFileSync(path.join(dir, name), "utf8").trim();
const put = (dir: string, name: string, v: string | number) => fs.writeFileSync(path.join(dir, name), `${v}\n`);

/** Makes <service>/<name> on host h (service dir first) and returns its path. */
function group(h: "A" | "B", name: string): string {
  const svc = emu.state().hosts[h].stream_service!;
  const s = path.join(cfgDir(emu, h), svc);
  if (!fs.existsSync(s)) fs.mkdirSync(s);
  fs.mkdirSync(path.join(s, name));
  return path.join(s, name);
}
function rmGroup(dir: string) {
  fs.rmdirSync(dir);
  try {
    fs.rmdirSync(path.dirname(dir));
  } catch {}
}
const dev = (h: "A" | "B", g: string) => path.join(emu.host(h), "dev", `tbstream${attr(g, "index")}`);

/** A receiving group on A with HopIDs 10/11 and B adopting it. */
function pair(name: string): [string, string] {
  const a = group("A", name);
  put(a, "in_hopid", 10);
  put(a, "out_hopid", 11);
  const b = group("B", name);
  return [a, b];
}

describe.skipIf(skip)("tbemu: the thunderbolt_stream boundary", () => {
  beforeAll(async () => {
    emu = await startEmu(["--seed", "1"]);
  });
  afterAll(async () => {
    await emu?.stop();
  });

  test("sysfs: peer XDomain with attributes and services; the stream service is named per host", () => {
    const a = path.join(emu.host("A"), "sys/bus/thunderbolt/devices");
    expect(fs.readdirSync(a).sort()).toEqual(["0-0", "0-1", "0-1.0", "domain0"]);
    expect(attr(path.join(a, "0-1"), "uevent")).toBe("DEVTYPE=thunderbolt_xdomain");
    expect(attr(path.join(a, "0-1"), "maxhopid")).toBe("19");
    expect(attr(path.join(a, "0-1.0"), "key")).toBe("stream");
    const b = path.join(emu.host("B"), "sys/bus/thunderbolt/devices");
    // A runs thunderbolt_net too, so B sees A's network service first: stream is .1
    expect(attr(path.join(b, "0-503.0"), "key")).toBe("network");
    expect(attr(path.join(b, "0-503.1"), "key")).toBe("stream");
    expect(code(() => fs.writeFileSync(path.join(a, "0-1/maxhopid"), "3"))).toBe("EACCES");
  });

  test("configfs: mkdir makes the attributes with the driver's defaults; rmdir removes the group and its device", () => {
    const g = group("A", "t1");
    expect(fs.readdirSync(g).sort()).toEqual(["in_hopid", "index", "out_hopid", "ring_size", "throttling"]);
    expect([attr(g, "in_hopid"), attr(g, "out_hopid"), attr(g, "ring_size"), attr(g, "throttling")]).toEqual(["0", "0", "256", "8192"]);
    const d = dev("A", g);
    expect(fs.existsSync(d)).toBe(true);
    rmGroup(g);
    expect(fs.existsSync(g)).toBe(false);
    expect(fs.existsSync(d)).toBe(false);
  });

  test("configfs: validated writes (ENAMETOOLONG, EINVAL, EACCES on index, bad service name)", () => {
    const svc = path.join(cfgDir(emu, "A"), emu.state().hosts.A.stream_service!);
    fs.mkdirSync(svc, { recursive: true });
    expect(code(() => fs.mkdirSync(path.join(svc, "ninechars")))).toBe("ENAMETOOLONG");
    expect(code(() => fs.mkdirSync(path.join(cfgDir(emu, "A"), "not-a-service")))).toBe("EINVAL");
    const g = group("A", "t2");
    expect(code(() => put(g, "ring_size", 31))).toBe("EINVAL");
    expect(code(() => put(g, "ring_size", 4097))).toBe("EINVAL");
    expect(code(() => put(g, "throttling", 16776961))).toBe("EINVAL");
    expect(code(() => put(g, "in_hopid", "ten"))).toBe("EINVAL");
    expect(code(() => put(g, "index", 3))).toBe("EACCES");
    put(g, "ring_size", 4096);
    expect(attr(g, "ring_size")).toBe("4096");
    // HopIDs: 8 is held by thunderbolt_net on A; above the maximum is EINVAL; writing the value it already has is EBUSY
    expect(code(() => put(g, "in_hopid", 8))).toBe("EBUSY");
    expect(code(() => put(g, "in_hopid", 16))).toBe("EINVAL"); // A's own maximum is 15
    expect(code(() => put(g, "out_hopid", 20))).toBe("EINVAL"); // the peer's maxhopid is 19
    put(g, "in_hopid", 12);
    expect(code(() => put(g, "in_hopid", 12))).toBe("EBUSY");
    put(g, "in_hopid", -1);
    expect(attr(g, "in_hopid")).toBe("9"); // automatic: the first free one from 8
    rmGroup(g);
  });

  test("pairing is asymmetric: the adopter takes the announced HopIDs swapped, only at mkdir", () => {
    const late = group("B", "t3"); // made before the announcement: stays 0
    const [a, b] = pair("t4");
    expect([attr(b, "in_hopid"), attr(b, "out_hopid")]).toEqual(["11", "10"]);
    expect(emu.state().hosts.A.announced.t4).toEqual([10, 11]);
    const a3 = group("A", "t3");
    put(a3, "in_hopid", 12);
    put(a3, "out_hopid", 12);
    expect(attr(late, "in_hopid")).toBe("0"); // a later announcement is never re-read
    fs.rmdirSync(late);
    fs.mkdirSync(late); // rmdir + mkdir adopts again
    expect(attr(late, "in_hopid")).toBe("12");
    for (const g of [late, a3, a, b]) fs.rmdirSync(g);
  });

  test("open: EINVAL without HopIDs when the peer is attached; blocks without a peer (O_NONBLOCK: ENXIO)", async () => {
    const g = group("A", "t5");
    expect(await codeAsync(openAsync(dev("A", g)))).toBe("EINVAL");
    emu.ctl("unplug");
    put(g, "in_hopid", 10); // no stream attached: stored as given
    put(g, "out_hopid", 10);
    expect(await codeAsync(openAsync(dev("A", g), fs.constants.O_RDWR | fs.constants.O_NONBLOCK))).toBe("ENXIO");
    let opened = false;
    const p = openAsync(dev("A", g)).then((fd) => ((opened = true), fd));
    await Bun.sleep(300);
    expect(opened).toBe(false);
    emu.ctl("plug");
    const fd = await p;
    expect(opened).toBe(true);
    fs.closeSync(fd);
    fs.rmdirSync(g);
  });

  test("bytes written before the peer opened are lost; then a byte stream in <= 4 KiB frames, short reads lose nothing", async () => {
    const [a, b] = pair("t6");
    for (const g of [a, b]) put(g, "ring_size", 32);
    // Both ends non-blocking: the emulator moves frames as soon as they are
    // written or a slot frees, so a full ring is EAGAIN, and a byte that
    // never comes fails the test instead of hanging it.
    const nb = fs.constants.O_RDWR | fs.constants.O_NONBLOCK;
    const fa = await openAsync(dev("A", a), nb);
    // B has no open path yet: the driver sends the frame anyway and it is gone
    expect(fs.writeSync(fa, Buffer.from("lost"))).toBe(4);
    const fb = await openAsync(dev("B", b), nb);
    expect(await codeAsync(readAsync(fb, 100))).toBe("EAGAIN"); // its ring starts empty: "lost" is not there
    // No period that divides 3, 997 or 4096, so a byte lost, repeated or moved shows
    const data = Buffer.alloc(600000);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    const parts: Buffer[] = [];
    let got = 0;
    let eof = false;
    /** Reads, 3 and 997 bytes in turn (each ends mid-frame), until `upTo` bytes, EOF or EAGAIN. */
    async function drain(upTo: number) {
      while (got < upTo) {
        const r = await readAsync(fb, parts.length % 2 ? 997 : 3).catch((e: NodeJS.ErrnoException) => {
          if (e.code === "EAGAIN") return null; // nothing more will come: the checks below say what is missing
          throw e;
        });
        if (r === null) return;
        if (r.length === 0) return void (eof = true);
        parts.push(r);
        got += r.length;
      }
    }
    // read() cannot show frame boundaries (the driver's read gathers frames
    // up to the buffer), but the rings can: they hold frames, not bytes. With
    // B not reading, one-byte writes fill A's TX ring and B's RX ring after
    // `slots` frames (one page per slot, per direction, 32 slots each)...
    let sent = 0;
    while (sent < 1000 && code(() => fs.writeSync(fa, data, sent, 1)) === null) sent++;
    expect(code(() => fs.writeSync(fa, data, sent, 1))).toBe("EAGAIN");
    const slots = sent;
    expect(slots).toBeGreaterThan(32);
    expect(slots).toBeLessThanOrEqual(2 * 32);
    await drain(sent);
    // ...and large writes fill the same slots with exactly 4096 bytes each
    const bulk = sent;
    let full: string | null = null;
    while (full === null && sent < data.length)
      full = code(() => (sent += fs.writeSync(fa, data, sent, Math.min(65536, data.length - sent))));
    expect(sent - bulk).toBe(slots * 4096);
    expect(full).toBe("EAGAIN");
    await drain(sent);
    fs.closeSync(fa); // CLOSE, after all the data
    await drain(Infinity);
    expect(eof).toBe(true);
    // everything written since the peer opened, once and in order, and nothing
    // else: "lost" arrives neither first nor later
    const all = Buffer.concat(parts);
    expect(all.length).toBe(sent);
    expect(all.equals(data.subarray(0, sent))).toBe(true);
    // the writer never learns the peer left (writes still succeed)
    expect(fs.writeSync(fb, Buffer.from("into the void"))).toBe(13);
    fs.closeSync(fb);
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("attributes are EBUSY while the device is open", async () => {
    const [a, b] = pair("t7");
    const fa = await openAsync(dev("A", a));
    expect(code(() => put(a, "ring_size", 64))).toBe("EBUSY");
    expect(code(() => put(a, "in_hopid", 13))).toBe("EBUSY");
    fs.closeSync(fa);
    put(a, "ring_size", 64);
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("a second opener shares the rings and steals frames", async () => {
    const [a, b] = pair("t8");
    const fb1 = await openAsync(dev("B", b));
    // non-blocking, so a frame it does not get is EAGAIN, not a hang
    const fb2 = await openAsync(dev("B", b), fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    expect(emu.state().hosts.B.devs[attr(b, "index")]!.users).toBe(2);
    const fa = await openAsync(dev("A", a));
    const frames = [0, 1, 2, 3].map((i) => Buffer.alloc(4096, 0x41 + i)); // "AAA…", "BBB…", …
    for (const f of frames) expect(fs.writeSync(fa, f)).toBe(4096);
    // one RX ring for both fds: each read takes frames off it, whoever reads
    const r1 = await readAsync(fb1, 4096);
    const r2 = await readAsync(fb2, 4096).catch((e: NodeJS.ErrnoException) => e.code); // EAGAIN: it got nothing
    const r3 = await readAsync(fb1, 65536);
    expect(String(r2)).toBe(frames[1]!.toString()); // the second opener took a frame the first never sees
    expect(r1.toString()).toBe(frames[0]!.toString());
    expect(r3.toString()).toBe(frames[2]!.toString() + frames[3]!.toString());
    expect(await codeAsync(readAsync(fb2, 100))).toBe("EAGAIN"); // together: every frame exactly once
    // the CLOSE is shared too: whichever fd reads it, both are at EOF
    fs.closeSync(fa);
    expect((await readAsync(fb2, 100)).length).toBe(0);
    expect((await readAsync(fb1, 100)).length).toBe(0);
    for (const fd of [fb1, fb2]) fs.closeSync(fd);
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("a writer that filled its TX ring loses its CLOSE on release: the reader gets the data, then no EOF", async () => {
    const [a, b] = pair("t12");
    for (const g of [a, b]) put(g, "ring_size", 32);
    const fa = await openAsync(dev("A", a), fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    const fb = await openAsync(dev("B", b), fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    // B reads nothing: its RX ring fills, then A's TX ring, until A's writes say EAGAIN
    let frames = 0;
    while (code(() => fs.writeSync(fa, Buffer.alloc(4096, 0x5a))) === null) frames++;
    expect(frames).toBeGreaterThan(32);
    fs.closeSync(fa); // CLOSE needs a free TX slot: there is none (-ENOBUFS, ignored)
    let got = 0;
    for (;;) {
      const r = await readAsync(fb, 65536).catch((e: NodeJS.ErrnoException) => e.code ?? String(e));
      if (typeof r === "string") {
        expect(r).toBe("EAGAIN"); // no CLOSE arrived: never EOF
        break;
      }
      expect(r.length).toBeGreaterThan(0);
      got += r.length;
    }
    expect(got).toBeGreaterThan(0);
    expect(got).toBeLessThanOrEqual(frames * 4096);
    fs.closeSync(fb);
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("unplug: a pending read fails with ENXIO; the announcement is gone", async () => {
    const [a, b] = pair("t9");
    const fa = await openAsync(dev("A", a));
    const fb = await openAsync(dev("B", b));
    const r = codeAsync(readAsync(fb, 100));
    await Bun.sleep(100);
    emu.ctl("unplug");
    expect(await r).toBe("ENXIO");
    expect(emu.state().hosts.A.announced.t9).toBeUndefined();
    fs.closeSync(fa);
    fs.closeSync(fb);
    emu.ctl("plug");
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("flip: one bit of one data frame changes in transit", async () => {
    const [a, b] = pair("t10");
    const fa = await openAsync(dev("A", a));
    const fb = await openAsync(dev("B", b));
    emu.ctl("flip 1 from A");
    const data = Buffer.alloc(4096, 0);
    fs.writeSync(fa, data);
    const got = await readAsync(fb, 8192);
    let bits = 0;
    for (const byte of got) bits += byte.toString(2).split("1").length - 1;
    expect(got.length).toBe(4096);
    expect(bits).toBe(1);
    expect(emu.state().flips_done).toBe(1);
    fs.closeSync(fa);
    fs.closeSync(fb);
    fs.rmdirSync(a);
    fs.rmdirSync(b);
  });

  test("rmdir leaves the announcement (the driver frees HopIDs, not the property directory)", () => {
    const a = group("A", "t11");
    put(a, "in_hopid", 13);
    put(a, "out_hopid", 13);
    fs.rmdirSync(a);
    expect(emu.state().hosts.A.announced.t11).toEqual([13, 13]);
    const b = group("B", "t11"); // a stale announcement is adopted all the same
    expect(attr(b, "in_hopid")).toBe("13");
    fs.rmdirSync(b);
  });
});

describe.skipIf(skip)("tbemu --topology A-K,B-K: a keeper with two peers, one XDomain and one stream per cable", () => {
  let k: Emu;
  beforeAll(async () => {
    k = await startEmu(["--topology", "A-K,B-K"]);
  });
  afterAll(async () => {
    await k?.stop();
  });
  const devices = (h: string) => path.join(k.host(h), "sys/bus/thunderbolt/devices");
  const kgroup = (svc: string) => {
    const s = path.join(cfgDir(k, "K"), svc);
    if (!fs.existsSync(s)) fs.mkdirSync(s);
    fs.mkdirSync(path.join(s, "tbbackup"));
    return path.join(s, "tbbackup");
  };
  const adopt = (h: string) => {
    const s = path.join(cfgDir(k, h), k.state().hosts[h]!.stream_service!);
    fs.mkdirSync(s, { recursive: true });
    fs.mkdirSync(path.join(s, "tbbackup"));
    return path.join(s, "tbbackup");
  };
  const kdev = (g: string) => path.join(k.host("K"), "dev", `tbstream${attr(g, "index")}`);

  test("each peer is its own XDomain with its own services, HopIDs, announcement and device; one unplug leaves the other stream alone", async () => {
    // K sees A on its first port (A runs thunderbolt_net: stream is .1) and B on its second
    expect(fs.readdirSync(devices("K")).sort()).toEqual(["0-0", "0-1", "0-1.0", "0-1.1", "0-3", "0-3.0", "domain0"]);
    expect(attr(path.join(devices("K"), "0-1"), "device_name")).toBe("host-a");
    expect(attr(path.join(devices("K"), "0-3"), "device_name")).toBe("host-b");
    expect(attr(path.join(devices("K"), "0-1.1"), "key")).toBe("stream");
    expect(fs.readdirSync(devices("A")).sort()).toEqual(["0-0", "0-1", "0-1.0", "domain0"]);
    expect(attr(path.join(devices("A"), "0-1"), "device_name")).toBe("host-k");
    expect(fs.readdirSync(devices("B")).sort()).toEqual(["0-0", "0-503", "0-503.0", "domain0"]);
    // the same group name under each peer's service: one device index per host, HopIDs per XDomain
    const ka = kgroup("0-1.1");
    const kb = kgroup("0-3.0");
    expect([attr(ka, "index"), attr(kb, "index")]).toEqual(["0", "1"]);
    for (const g of [ka, kb]) {
      put(g, "in_hopid", 10); // 10 on both: each XDomain has its own IDA
      put(g, "out_hopid", 11);
    }
    expect(k.state().hosts.K!.peers).toMatchObject({ "0-1": { peer: "A", announced: { tbbackup: [10, 11] } }, "0-3": { peer: "B", announced: { tbbackup: [10, 11] } } });
    const a = adopt("A");
    const b = adopt("B");
    expect([attr(a, "in_hopid"), attr(a, "out_hopid"), attr(b, "in_hopid"), attr(b, "out_hopid")]).toEqual(["11", "10", "11", "10"]);
    const fka = await openAsync(kdev(ka));
    const fkb = await openAsync(kdev(kb));
    const fa = await openAsync(path.join(k.host("A"), "dev", `tbstream${attr(a, "index")}`));
    const fb = await openAsync(path.join(k.host("B"), "dev", `tbstream${attr(b, "index")}`));
    // what A sends reaches K's device for A only, and B's K's device for B
    fs.writeSync(fa, "from A");
    fs.writeSync(fb, "from B");
    expect((await readAsync(fka, 100)).toString()).toBe("from A");
    expect((await readAsync(fkb, 100)).toString()).toBe("from B");
    // unplug A's cable: K's stream to A fails, the one to B carries on
    const pending = codeAsync(readAsync(fka, 100));
    await Bun.sleep(100);
    k.ctl("unplug A-K");
    expect(await pending).toBe("ENXIO");
    expect(fs.readdirSync(devices("K")).sort()).toEqual(["0-0", "0-3", "0-3.0", "domain0"]);
    expect(k.state().hosts.K!.peers["0-1"]!.announced).toEqual({});
    expect(k.state().hosts.K!.devs["0"]!.attached).toBe(false);
    fs.writeSync(fb, "still B");
    expect((await readAsync(fkb, 100)).toString()).toBe("still B");
    for (const fd of [fka, fkb, fa, fb]) fs.closeSync(fd);
    // plugged again: the group under 0-1.1 attaches again (the driver finds groups by service name)
    k.ctl("plug A-K");
    expect(k.state().hosts.K!.devs["0"]).toMatchObject({ attached: true, xdomain: "0-1", in_hopid: 10, out_hopid: 11 });
    for (const g of [ka, kb, a, b]) rmGroup(g);
  });
});
