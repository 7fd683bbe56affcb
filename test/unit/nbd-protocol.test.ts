// The NBD codec (src/nbd/protocol.ts) against literal byte vectors written
// from the NBD protocol document, split at every byte boundary, and with
// garbage and oversized claims.
import { describe, expect, test } from "bun:test";
import { ClientDecoder, blockStatusReply, metaContext, parseMetaContext, greeting, optionReply, parseGo, simpleReply, structuredError, infoExport, infoBlockSize, exportNameReply, offsetDataHeader, type ClientEvent } from "../../src/nbd/protocol.ts";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

// What nbdinfo sends: client flags (fixed newstyle + no zeroes), NBD_OPT_GO for
// export "" asking for NBD_INFO_BLOCK_SIZE, then a read of 512 bytes at 4096
// (handle 1), then NBD_CMD_DISC (handle 2).
const SESSION = hex(
  "00000003" +
    "49484156454f5054 00000007 00000008 00000000 0001 0003" +
    "25609513 0000 0000 0000000000000001 0000000000001000 00000200" +
    "25609513 0000 0002 0000000000000002 0000000000000000 00000000",
);

function drain(d: ClientDecoder, onGo = true): ClientEvent[] {
  const out: ClientEvent[] = [];
  for (let ev = d.next(); ev; ev = d.next()) {
    out.push(ev);
    if (onGo && ev.kind === "option" && ev.option === 7) d.transmission();
  }
  return out;
}

describe("NBD encoders", () => {
  test("greeting: NBDMAGIC, IHAVEOPT, fixed newstyle + no zeroes", () => {
    expect(toHex(greeting())).toBe("4e42444d41474943" + "49484156454f5054" + "0003");
  });
  test("option reply, info export, block size, simple and structured replies", () => {
    expect(toHex(optionReply(7, 1))).toBe("0003e889045565a9" + "00000007" + "00000001" + "00000000");
    expect(toHex(infoExport(33554432, 0x0107))).toBe("0000" + "0000000002000000" + "0107");
    expect(toHex(infoBlockSize(1, 4096, 33554432))).toBe("0003" + "00000001" + "00001000" + "02000000");
    expect(toHex(simpleReply(5, 0x0102030405060708n))).toBe("67446698" + "00000005" + "0102030405060708");
    expect(toHex(structuredError(9n, 22, "no"))).toBe("668e33ef" + "0001" + "8001" + "0000000000000009" + "00000008" + "00000016" + "0002" + "6e6f");
    expect(toHex(offsetDataHeader(9n, 4096, 512, true))).toBe("668e33ef" + "0001" + "0001" + "0000000000000009" + "00000208" + "0000000000001000");
    expect(exportNameReply(1, 3, true).length).toBe(10);
    expect(exportNameReply(1, 3, false).length).toBe(134);
  });
  test("meta contexts: parse a SET query, encode the context and a block status reply", () => {
    const q = hex("00000000 00000001 0000000f") ;
    const data = new Uint8Array([...q, ...new TextEncoder().encode("base:allocation")]);
    expect(parseMetaContext(data)).toEqual({ name: "", queries: ["base:allocation"] });
    expect(parseMetaContext(data.subarray(0, data.length - 1))).toBeNull(); // a query cut short
    expect(parseMetaContext(hex("00000000 ffffffff"))).toBeNull(); // 4 billion queries in 8 bytes
    expect(parseMetaContext(hex("00000000 00000000 00"))).toBeNull(); // a byte left over
    expect(toHex(metaContext(1, "base:allocation"))).toBe("00000001" + Buffer.from("base:allocation").toString("hex"));
    expect(toHex(blockStatusReply(3n, 1, [{ length: 2097152, flags: 0 }, { length: 1048576, flags: 3 }]))).toBe(
      "668e33ef" + "0001" + "0005" + "0000000000000003" + "00000014" + "00000001" + "00200000" + "00000000" + "00100000" + "00000003",
    );
  });

  test("parseGo: name and info requests; malformed data is null", () => {
    expect(parseGo(hex("00000003 616263 0002 0003 0001"))).toEqual({ name: "abc", infos: [3, 1] });
    expect(parseGo(hex("00000000 0000"))).toEqual({ name: "", infos: [] });
    expect(parseGo(hex("ffffffff 0000"))).toBeNull(); // name longer than the data
    expect(parseGo(hex("00000000 0005 0001"))).toBeNull(); // fewer info requests than claimed
    expect(parseGo(hex("0000"))).toBeNull();
  });
});

describe("ClientDecoder", () => {
  const expected = (evs: ClientEvent[]) => {
    expect(evs.map((e) => e.kind)).toEqual(["flags", "option", "request", "request"]);
    expect(evs[0]).toEqual({ kind: "flags", flags: 3 });
    const go = evs[1] as Extract<ClientEvent, { kind: "option" }>;
    expect(go.option).toBe(7);
    expect(parseGo(go.data)).toEqual({ name: "", infos: [3] });
    expect((evs[2] as Extract<ClientEvent, { kind: "request" }>).request).toEqual({ flags: 0, type: 0, handle: 1n, offset: 4096n, length: 512 });
    expect((evs[3] as Extract<ClientEvent, { kind: "request" }>).request.type).toBe(2);
  };

  test("a whole session in one piece", () => {
    const d = new ClientDecoder();
    d.push(SESSION);
    expected(drain(d));
    expect(d.pending).toBe(0);
  });

  test("split at every byte boundary, and one byte at a time", () => {
    for (let cut = 1; cut < SESSION.length; cut++) {
      const d = new ClientDecoder();
      const evs: ClientEvent[] = [];
      d.push(SESSION.subarray(0, cut));
      evs.push(...drain(d));
      d.push(SESSION.subarray(cut));
      evs.push(...drain(d));
      expected(evs);
    }
    const d = new ClientDecoder();
    const evs: ClientEvent[] = [];
    for (const b of SESSION) {
      d.push(Uint8Array.of(b));
      evs.push(...drain(d));
    }
    expected(evs);
  });

  test("a write's payload is skipped, wherever it is split", () => {
    const req = hex("25609513 0000 0001 0000000000000007 0000000000000000 00000010");
    const payload = new Uint8Array(16).fill(0xee);
    const next = hex("25609513 0000 0003 0000000000000008 0000000000000000 00000000");
    const all = new Uint8Array([...req, ...payload, ...next]);
    for (let cut = 1; cut < all.length; cut++) {
      const d = new ClientDecoder();
      d.transmission();
      d.push(all.subarray(0, cut));
      const evs = drain(d, false);
      d.push(all.subarray(cut));
      evs.push(...drain(d, false));
      expect(evs.map((e) => e.kind)).toEqual(["payloadSkipped", "request"]);
      expect((evs[1] as Extract<ClientEvent, { kind: "request" }>).request.handle).toBe(8n);
    }
  });

  test("an option length over the cap is refused from its header alone, before its data arrives", () => {
    const d = new ClientDecoder();
    d.push(hex("00000001 49484156454f5054 00000007 7fffffff"));
    expect(drain(d).map((e) => e.kind)).toEqual(["flags", "optionTooLong"]);
    d.push(new Uint8Array(1000));
    expect(d.next()).toBeNull();
  });

  test("garbage instead of IHAVEOPT or the request magic ends the decoding", () => {
    const d = new ClientDecoder();
    d.push(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example\r\n\r\n"));
    const evs = drain(d);
    expect(evs.map((e) => e.kind)).toEqual(["flags", "garbage"]);
    d.push(SESSION);
    expect(d.next()).toBeNull();
    const t = new ClientDecoder();
    t.transmission();
    t.push(new Uint8Array(28).fill(0x41));
    expect(t.next()?.kind).toBe("garbage");
  });

  test("a write claiming more than 32 MiB is garbage (its payload is not waited for)", () => {
    const d = new ClientDecoder();
    d.transmission();
    d.push(hex("25609513 0000 0001 0000000000000001 0000000000000000 ffffffff"));
    expect(d.next()?.kind).toBe("garbage");
  });
});
