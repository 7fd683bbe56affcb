// isAllZero against a plain loop: every length around its edges, a lone
// non-zero byte anywhere, patterns that repeat every 16 bytes (which the
// self-compare must still catch through the first 16), and views at offsets.
import { expect, test } from "bun:test";
import { isAllZero } from "../../src/core/zero.ts";

const plain = (b: Uint8Array) => b.every((x) => x === 0);

test("all zeros, at every length from 0 to 200 and at chunk sizes, in views at odd offsets", () => {
  const big = new Uint8Array((1 << 20) + 64);
  for (let n = 0; n <= 200; n++) for (const at of [0, 1, 7, 16]) expect(isAllZero(big.subarray(at, at + n))).toBe(true);
  for (const n of [4096, 65536, 1 << 20]) expect(isAllZero(big.subarray(3, 3 + n))).toBe(true);
});

test("one non-zero byte anywhere is found, whatever the length and offset", () => {
  for (const n of [1, 15, 16, 17, 31, 32, 63, 64, 65, 100, 4096, 65537]) {
    const buf = new Uint8Array(n + 5);
    const view = buf.subarray(5);
    for (const at of new Set([0, 1, 15, 16, 17, 31, 32, n >> 1, n - 17, n - 16, n - 1].filter((i) => i >= 0 && i < n))) {
      view[at] = 0x80;
      expect(isAllZero(view)).toBe(false);
      buf[4] = 1; // a byte just before the view is not the view's
      view[at] = 0;
      expect(isAllZero(view)).toBe(true);
      buf[4] = 0;
    }
  }
});

test("a pattern that repeats every 16 bytes is not zeros (the first 16 bytes decide it)", () => {
  for (const n of [64, 100, 4096]) {
    for (let k = 0; k < 16; k++) {
      const b = new Uint8Array(n);
      for (let i = k; i < n; i += 16) b[i] = 1;
      expect(isAllZero(b)).toBe(false);
    }
  }
});

test("random buffers with a few set bytes agree with a plain loop", () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) / (1 << 24);
  for (let t = 0; t < 2000; t++) {
    const n = Math.floor(rnd() * 300);
    const b = new Uint8Array(n);
    if (rnd() < 0.5 && n > 0) b[Math.floor(rnd() * n)] = 1 + Math.floor(rnd() * 255);
    expect(isAllZero(b)).toBe(plain(b));
  }
});
