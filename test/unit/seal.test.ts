// Key authentication and sealed records (docs/PROTOCOL.md §7.1, §7.2): literal
// vectors (computed independently with Python's hmac and cryptography), a
// round trip fed one byte at a time, and tampering of every kind detected.
import { describe, expect, test } from "bun:test";
import { authMac } from "../../src/protocol/auth.ts";
import { sealKeys, sealedConn } from "../../src/transport/seal.ts";
import type { Conn } from "../../src/transport/types.ts";

const K = Uint8Array.from({ length: 32 }, (_, i) => i);
const C = "00".repeat(16);
const Ni = "11".repeat(32);
const Nr = "22".repeat(32);

/** A Conn whose reads come from `incoming` (as given) and whose writes are collected. */
function memConn(incoming: Uint8Array[] = []): Conn & { written: Uint8Array[] } {
  const written: Uint8Array[] = [];
  return {
    written,
    description: "mem",
    lossy: false,
    read: async () => incoming.shift() ?? null,
    write: async (d) => void written.push(Uint8Array.from(d)),
    close: async () => {},
  };
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

async function readAll(c: Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (let d = await c.read(); d; d = await c.read()) parts.push(d);
  return Buffer.concat(parts);
}

describe("vectors", () => {
  test("the MACs and the direction keys", () => {
    expect(authMac(K, "receiver", C, Ni, Nr)).toBe("dbba8c992be2c15f0b2865ff37f2371bc172a1559dab0f62469dd1c1829ba268");
    expect(authMac(K, "initiator", C, Ni, Nr)).toBe("fe7ad86e9383e71149ac32905c97f3ec7fbeea6122a0c56959e9dd2dce96a3d9");
    const k = sealKeys(K, C, Ni, Nr);
    expect(k.up.toString("hex")).toBe("6e51712ffeceeea902aa91efd4aa3683da18a6ace5321e41fbdaf1549a0e2d39");
    expect(k.down.toString("hex")).toBe("db71394182a792a611fd5cc979e1ac502d1539e7ad645d24568743e98d634175");
  });

  test('records 0 and 1 of "hello" going up', async () => {
    const k = sealKeys(K, C, Ni, Nr);
    const out = memConn();
    const s = sealedConn(out, k.up, k.down);
    await s.write(new TextEncoder().encode("hello"));
    await s.write(new TextEncoder().encode("hello"));
    expect(out.written.map(hex)).toEqual(["0500000099c22c0c3e3e3c6fc23529fe579d65bad810378f3a", "050000007c7d394816dc25718df4e4f2880ae8172d67ef08d6"]);
  });
});

describe("sealed records", () => {
  const k = sealKeys(K, C, Ni, Nr);
  async function sealed(writes: Uint8Array[]): Promise<Uint8Array[]> {
    const out = memConn();
    const s = sealedConn(out, k.up, k.down);
    for (const w of writes) await s.write(w);
    return out.written;
  }
  const payload = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

  test("what is written arrives the same, fed one byte at a time", async () => {
    const writes = [payload(1, 1), payload(1000, 2), payload(70_000, 3)];
    const wire = Buffer.concat(await sealed(writes));
    const bytes = Array.from(wire, (b) => Uint8Array.of(b));
    const got = await readAll(sealedConn(memConn(bytes), k.down, k.up));
    expect(hex(got)).toBe(hex(Buffer.concat(writes)));
  });

  test("any changed byte, a replayed, dropped or swapped record, or a cut record is refused", async () => {
    const records = await sealed([payload(100, 4), payload(100, 5), payload(100, 6)]);
    const open = (parts: Uint8Array[]) => readAll(sealedConn(memConn(parts.map((p) => Uint8Array.from(p))), k.down, k.up));
    const first = records[0]!;
    for (let i = 0; i < first.length; i++) {
      const bad = Uint8Array.from(first);
      bad[i]! ^= 0x80;
      await expect(open([bad, ...records.slice(1)])).rejects.toThrow(/changed on the way|failed its authentication/);
    }
    await expect(open([records[0]!, records[0]!])).rejects.toThrow(/tag mismatch/);
    await expect(open([records[1]!])).rejects.toThrow(/tag mismatch/);
    await expect(open([records[1]!, records[0]!])).rejects.toThrow(/tag mismatch/);
    await expect(open([records[0]!.subarray(0, 50)])).rejects.toThrow(/ended inside a record/);
    // the wrong direction's key: a record reflected back to its sender
    await expect(readAll(sealedConn(memConn([records[0]!]), k.up, k.down))).rejects.toThrow(/tag mismatch/);
    expect(hex(await open(records))).toBe(hex(Buffer.concat([payload(100, 4), payload(100, 5), payload(100, 6)])));
  });

  test("a length over the limit is refused before anything is allocated for it", async () => {
    const huge = Uint8Array.of(0xff, 0xff, 0xff, 0x7f, 1, 2, 3);
    await expect(readAll(sealedConn(memConn([huge]), k.down, k.up))).rejects.toThrow(/a record of \d+ bytes/);
  });
});
