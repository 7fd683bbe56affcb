// The ordered pipeline and the integrity root's pieces (docs/FORMAT.md §4a).
import { expect, test } from "bun:test";
import { OrderedPipeline } from "../../src/core/pipeline.ts";
import { RootBuilder, chunkDigest, zeroDigest } from "../../src/store/root.ts";

test("results are handed on in the order the jobs were added, whatever order they finish in, with at most `limit` outstanding", async () => {
  const seen: number[] = [];
  let outstanding = 0;
  let most = 0;
  const p = new OrderedPipeline<number>(3, (n) => {
    seen.push(n);
    outstanding--;
  });
  for (let i = 0; i < 20; i++) {
    outstanding++;
    most = Math.max(most, outstanding);
    // later jobs finish first
    await p.add(Bun.sleep(((20 - i) % 5) * 3).then(() => i));
  }
  await p.drain();
  expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => i));
  expect(most).toBeLessThanOrEqual(4);
});

test("a failed job stops the pipeline there; the jobs behind it are not unhandled rejections", async () => {
  const seen: number[] = [];
  const p = new OrderedPipeline<number>(8, (n) => void seen.push(n));
  await p.add(Promise.resolve(0));
  await p.add(Promise.reject(new Error("chunk 1 is bad")));
  await p.add(Promise.reject(new Error("chunk 2 is bad too")));
  await expect(p.drain()).rejects.toThrow("chunk 1 is bad");
  expect(seen).toEqual([0]);
});

test("the zero digest is the SHA-256 of that many zero bytes (sha256sum of /dev/zero)", () => {
  // head -c 1048576 /dev/zero | sha256sum
  expect(zeroDigest(1048576, "sha256")).toBe("30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58");
  expect(zeroDigest(4096, "sha256")).toBe("ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7");
});

test("BLAKE3 chunk digests are what b3sum prints (its zeros, and the test vector of 'abc')", () => {
  // head -c 1048576 /dev/zero | b3sum --no-names
  expect(zeroDigest(1048576, "blake3")).toBe("488de202f73bd976de4e7048f4e1f39a776d86d582b7348ff53bf432b987fca8");
  expect(zeroDigest(4096, "blake3")).toBe("b6fb73fc46938c981e2b0b4b1ef282adcfc89854d01bfe3972fdc4785b41b2c7");
  expect(chunkDigest(new TextEncoder().encode("abc"), "blake3")).toBe("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  // a view into a larger (shared) buffer is hashed over its own bytes only
  const sab = new Uint8Array(new SharedArrayBuffer(16));
  sab.set(new TextEncoder().encode("xxabcxx"));
  expect(chunkDigest(sab.subarray(2, 5), "blake3")).toBe("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  // the two kinds never agree
  expect(zeroDigest(4096, "blake3")).not.toBe(zeroDigest(4096, "sha256"));
});

test("the root is the SHA-256 of the digest lines, each 64 hex digits and a newline", () => {
  const r = new RootBuilder();
  r.add(zeroDigest(4096, "sha256"));
  r.add(zeroDigest(1048576, "sha256"));
  const lines = `${zeroDigest(4096, "sha256")}\n${zeroDigest(1048576, "sha256")}\n`;
  expect(r.digest()).toBe(new Bun.CryptoHasher("sha256").update(lines).digest("hex"));
  // digest() does not end the running hash
  r.add(zeroDigest(4096, "sha256"));
  expect(r.digest()).toBe(new Bun.CryptoHasher("sha256").update(lines + zeroDigest(4096, "sha256") + "\n").digest("hex"));
});
