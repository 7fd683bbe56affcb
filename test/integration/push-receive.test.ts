// push -> receive with the compiled binary, over every transport, on a real
// ext4 image; then the stored image is checked with plain zstd and verify.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { holeTest } from "../../src/core/source.ts";
import { BIN, ROOT, cleanup, storeBackup, finish, makeExt4Image, run, sha256File, sh, start, tempDir, waitFor, zstdSha, ptyPair, stockRoot, zstdRoot } from "../helpers/cli.ts";

let dir: string;
let img: string;
let imgSha: string;
let imgRoot: string;

beforeAll(() => {
  dir = tempDir();
  img = makeExt4Image(dir, 24);
  imgSha = sha256File(img);
  imgRoot = stockRoot(img);
});
afterAll(() => cleanup(dir));

interface Case {
  name: string;
  /** returns [receiver spec, pusher spec, teardown] */
  setup(d: string): Promise<[string, string, () => void]>;
}

const cases: Case[] = [
  { name: "unix", setup: async (d) => [`unix:${d}/s.sock`, `unix:${d}/s.sock`, () => {}] },
  {
    name: "tcp",
    setup: async () => {
      const port = 20000 + Math.floor(Math.random() * 20000);
      return [`tcp:${port}`, `tcp:127.0.0.1:${port}`, () => {}];
    },
  },
  {
    name: "device (pty pair via socat)",
    setup: async (d) => {
      const pty = await ptyPair(d);
      return [pty.a, pty.b, pty.close];
    },
  },
];

/** A new key file (tbbackup keygen) in d. */
function keyFile(d: string): string {
  const f = path.join(d, "tcp.key");
  if (!fs.existsSync(f)) sh(`${JSON.stringify(BIN)} keygen ${JSON.stringify(f)}`);
  return f;
}

/** The stored backup checks out: by its integrity root always, and by the whole-image SHA-256 when it was asked for. */
function checkStored(out: string, label: string, withSha = true): string {
  const backups = fs.readdirSync(out, { recursive: true }).map(String).filter((p) => p.endsWith("image.zst"));
  expect(backups.length).toBe(1);
  const image = path.join(out, backups[0]!);
  expect(zstdSha(image)).toBe(imgSha);
  const manifest = JSON.parse(fs.readFileSync(path.join(path.dirname(image), "manifest.json"), "utf8"));
  expect(manifest.status).toBe("complete");
  expect(manifest.root).toBe(imgRoot);
  expect(zstdRoot(image)).toBe(imgRoot);
  if (withSha) expect(manifest.sha256).toBe(imgSha);
  else expect(manifest.sha256).toBeNull();
  expect(manifest.label).toBe(label);
  expect(manifest.disk.size).toBe(fs.statSync(img).size);
  expect(manifest.disk.partitionTable).toBeNull();
  return path.dirname(image);
}

describe("push -> receive over each transport", () => {
  for (const c of cases) {
    test(c.name, async () => {
      const d = tempDir();
      const out = path.join(d, "store");
      const [rspec, pspec, teardown] = await c.setup(d);
      try {
        // a tcp: receiver needs a key (or --insecure): both sides get the same key file
        const key = rspec.startsWith("tcp:") ? ["--key-file", keyFile(d)] : [];
        const recv = start(["receive", "--out", out, "--stream", rspec, "--once", "--json", ...key]);
        if (rspec.startsWith("unix:")) await waitFor(() => fs.existsSync(rspec.slice(5)), "receiver socket");
        else await Bun.sleep(300);
        // the classic whole-image SHA-256 on one transport of two (--sha256); the integrity root on all
        const withSha = c.name !== "tcp";
        const p = await run(["push", img, "--stream", pspec, "--name", `via-${c.name}`, "--json", ...(withSha ? ["--sha256"] : []), ...key]);
        const r = await finish(recv);
        expect(p.code).toBe(0);
        expect(r.code).toBe(0);
        const pj = JSON.parse(p.stdout);
        expect(pj.ok).toBe(true);
        expect(pj.root).toBe(imgRoot);
        expect(pj.sha256).toBe(withSha ? imgSha : null);
        expect(JSON.parse(r.stdout).ok).toBe(true);
        const bdir = checkStored(out, `via-${c.name}`, withSha);
        const v = await run(["verify", bdir]);
        expect(v.code).toBe(0);
        expect(v.stdout).toContain(imgRoot);
        if (withSha) expect(v.stdout).toContain(imgSha);
      } finally {
        teardown();
        cleanup(d);
      }
    });
  }

  test("stdio (-) through socat EXEC", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    try {
      const r = Bun.spawnSync(["socat", `EXEC:${BIN} receive --out ${out} --stream - --once`, `EXEC:${BIN} push ${img} --stream - --name via-stdio`], { stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
      expect(r.exitCode).toBe(0);
      expect(r.stderr.toString()).toContain("backup complete");
      checkStored(out, "via-stdio", false);
    } finally {
      cleanup(d);
    }
  });
});

describe("store, list and verify", () => {
  let out: string;
  let bdir: string;
  beforeAll(async () => {
    out = path.join(dir, "store-lv");
    await storeBackup(img, out, path.join(dir, "lv.sock"), ["--sha256"]);
    bdir = checkStored(out, null as unknown as string);
  });

  test("list shows the backup as complete with size and ratio, in text and JSON", async () => {
    const j = await run(["list", "--out", out, "--json"]);
    expect(j.code).toBe(0);
    const rows = JSON.parse(j.stdout);
    expect(rows.length).toBe(1);
    expect(rows[0].status).toBe("complete");
    expect(rows[0].size).toBe(fs.statSync(img).size);
    expect(rows[0].ratio).toBeGreaterThan(1);
    expect(rows[0].id).toBe(path.relative(out, bdir));
    const t = await run(["list", "--out", out]);
    expect(t.stdout).toContain(rows[0].id);
    expect(t.stdout).toContain("complete");
  });

  test("verify names the first bad chunk after a flipped byte, and zstd agrees it is damaged", async () => {
    const copy = path.join(dir, "damaged");
    sh(`cp -r ${bdir} ${copy}`);
    const image = path.join(copy, "image.zst");
    const fd = fs.openSync(image, "r+");
    // Flip a byte inside the first frame's compressed data (after its header).
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 40);
    b[0]! ^= 0xff;
    fs.writeSync(fd, b, 0, 1, 40);
    fs.closeSync(fd);
    const v = await run(["verify", copy]);
    expect(v.code).toBe(10);
    expect(v.stderr).toMatch(/chunk 0 \(raw offset 0\) is bad/);
    expect(v.stderr.trim().split("\n").length).toBe(1);
  });

  test("a label with control characters cannot paint the terminal or add rows to list", async () => {
    const st = path.join(dir, "label-store");
    const sock = path.join(dir, "label.sock");
    const recv = start(["receive", "--out", st, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const p = await run(["push", img, "--stream", `unix:${sock}`, "--name", "evil\x1b[2J\nfake complete"]);
    expect(p.code).toBe(0);
    expect((await finish(recv)).code).toBe(0);
    const l = await run(["list", "--out", st]);
    expect(l.stdout).not.toContain("\x1b");
    expect(l.stdout.trim().split("\n").length).toBe(3); // the header, one row and the total
    expect(l.stdout).toContain("evil?[2J?fake complete");
  });

  test("verify --out checks a whole store: a backup whose image is gone is BAD (exit 10); an empty store is not 'all fine' (exit 11)", async () => {
    const st = path.join(dir, "verify-store");
    await storeBackup(img, st, path.join(dir, "vs.sock"));
    await storeBackup(img, st, path.join(dir, "vs.sock"));
    const good = await run(["verify", "--out", st]);
    expect(good.code).toBe(0);
    expect(good.stdout.trim().split("\n").filter((l) => l.startsWith("ok: ")).length).toBe(2);
    const victim = fs.readdirSync(st, { recursive: true }).map(String).find((p) => p.endsWith("image.zst"))!;
    fs.renameSync(path.join(st, victim), path.join(dir, "moved-away.zst"));
    const bad = await run(["verify", "--out", st, "--json"]);
    expect(bad.code).toBe(10);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, checked: 2, bad: 1 });
    fs.mkdirSync(path.join(dir, "empty-store"));
    for (const where of [path.join(dir, "empty-store"), "/etc"]) {
      const none = await run(["verify", "--out", where]);
      expect(none.code).toBe(11);
      expect(none.stderr).toMatch(/no backups found/);
    }
  });

  test("verify refuses a truncated image", async () => {
    const copy = path.join(dir, "truncated");
    sh(`cp -r ${bdir} ${copy}`);
    const image = path.join(copy, "image.zst");
    fs.truncateSync(image, fs.statSync(image).size - 100);
    const v = await run(["verify", copy]);
    expect(v.code).toBe(10);
    expect(v.stderr).toMatch(/damaged/);
  });

  test("a malformed chunk list: verify and restore name the chunk in one line (exit 10), no stack trace", async () => {
    const copy = path.join(dir, "badlist");
    sh(`cp -r ${bdir} ${copy}`);
    const list = path.join(copy, "chunks.txt");
    const lines = fs.readFileSync(list, "latin1").split("\n");
    lines[1] = "this is not a chunk line";
    fs.writeFileSync(list, lines.join("\n"));
    const v = await run(["verify", copy]);
    expect(v.code).toBe(10);
    expect(v.stderr.trim().split("\n").length).toBe(1);
    expect(v.stderr).toMatch(/^tbbackup: chunk 1 .*is bad: malformed line in chunk list/);
    const r = await run(["restore", path.join(dir, "badlist.img"), "--from", copy, "--yes"]);
    expect(r.code).toBe(10);
    expect(r.stderr.trim().split("\n").filter((l) => l.startsWith("tbbackup: ")).length).toBe(1);
    expect(r.stderr).toMatch(/tbbackup: chunk 1 of .* is damaged: malformed line in chunk list.*the unfinished .*badlist\.img was removed/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe("a sparse image file", () => {
  test("its holes are told apart from data (push skips reading them), and every byte around them arrives", async () => {
    const d = tempDir();
    const out = path.join(d, "store");
    const sock = path.join(d, "s.sock");
    const MiB = 1024 * 1024;
    const file = path.join(d, "sparse.img");
    try {
      // 10 chunks of 1 MiB (the last one 100 bytes): data in chunk 0, across
      // the chunk 2/3 boundary and at the very end; chunk 5 is written zeros
      // (allocated, not a hole); the rest are holes.
      fs.writeFileSync(file, "");
      fs.truncateSync(file, 9 * MiB + 100);
      const fd = fs.openSync(file, "r+");
      const put = (at: number, n: number) => fs.writeSync(fd, crypto.getRandomValues(new Uint8Array(n)), 0, n, at);
      put(MiB / 2, 10);
      put(3 * MiB - 5, 10);
      put(9 * MiB + 90, 10);
      fs.writeSync(fd, new Uint8Array(MiB), 0, MiB, 5 * MiB);
      fs.closeSync(fd);
      const want = sha256File(file);
      // the test push uses: holes are the chunks with no data at all (not the written zeros of chunk 5)
      const rfd = fs.openSync(file, "r");
      try {
        const size = 9 * MiB + 100;
        const isHole = await holeTest(rfd, size, file);
        expect(isHole).not.toBeNull();
        const map = Array.from({ length: 10 }, (_, c) => (isHole!(c * MiB, Math.min(MiB, size - c * MiB)) ? "H" : "d")).join("");
        expect(map).toBe("dHddHdHHHd");
      } finally {
        fs.closeSync(rfd);
      }
      const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
      await waitFor(() => fs.existsSync(sock), "receiver socket");
      const p = await run(["push", file, "--stream", `unix:${sock}`, "--json", "--sha256"]);
      expect((await finish(recv)).code).toBe(0);
      expect(p.code).toBe(0);
      expect(JSON.parse(p.stdout).sha256).toBe(want);
      expect(JSON.parse(p.stdout).root).toBe(stockRoot(file));
      const image = fs.readdirSync(out, { recursive: true }).map(String).find((f) => f.endsWith("image.zst"))!;
      expect(zstdSha(path.join(out, image))).toBe(want);
      const manifest = JSON.parse(fs.readFileSync(path.join(out, path.dirname(image), "manifest.json"), "utf8"));
      expect(manifest.chunks.count).toBe(10);
      expect(manifest.chunks.zero).toBe(6); // 1, 4, 5, 6, 7, 8
    } finally {
      cleanup(d);
    }
  });
});

describe("the binary alone", () => {
  // The build machine keeps src/ and node_modules/; a rescue system has only the
  // binary. A private mount namespace hides both, so a worker or addon that is
  // still looked up on disk (not embedded) fails here instead of in the field.
  test("push -> receive works with src/ and node_modules/ out of sight", async () => {
    const d = path.join(dir, "alone");
    fs.mkdirSync(d);
    const script = [
      `set -e`,
      `mount -t tmpfs none '${path.join(ROOT, "src")}'`,
      `mount -t tmpfs none '${path.join(ROOT, "node_modules")}'`,
      `test ! -e '${path.join(ROOT, "src/core/chunk-worker.ts")}'`,
      `'${BIN}' receive --out '${d}/store' --stream 'unix:${d}/s.sock' --once 2>'${d}/recv.err' & r=$!`,
      `for _ in $(seq 500); do [ -S '${d}/s.sock' ] && break; sleep 0.02; done`,
      `'${BIN}' push '${img}' --stream 'unix:${d}/s.sock'`,
      `wait $r`,
    ].join("\n");
    const p = Bun.spawn(["unshare", "-m", "--propagation", "private", "bash", "-c", script], { stdout: "pipe", stderr: "pipe" });
    const [code, err] = [await p.exited, await new Response(p.stderr).text()];
    expect({ code, lastLine: code === 0 ? "" : err.trim().split("\n").pop() }).toEqual({ code: 0, lastLine: "" });
    const stored = sh(`find '${d}/store' -name image.zst`).trim();
    expect(zstdSha(stored)).toBe(imgSha);
  });
});
