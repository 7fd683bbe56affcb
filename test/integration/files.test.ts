// File-level backups with the compiled binary: push --files -> receive over a
// unix socket, restore --files from the stored backup and from a receiver, a
// plain `zstd -dc | tar -x` of files.tar.zst, unreadable files (push as an
// unprivileged user), --strict, --overwrite, and hostile archives that try to
// write outside DEST.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { BIN, cleanup, finish, run, sh, start, tempDir, waitFor, oneLine, zstdRoot } from "../helpers/cli.ts";
import { ImageWriter } from "../../src/store/image-writer.ts";
import { writeManifest, type Manifest } from "../../src/store/manifest.ts";
import { FILES_FILE } from "../../src/store/layout.ts";
import { zstd } from "../../src/util/zstd.ts";

const q = JSON.stringify;
const NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
const LONG = "long-" + "x".repeat(140); // > 100 bytes: needs a pax path
const UTF8 = "héllo wörld ✓ 日本.txt";
const RANDOM_SIZE = 6 * 1024 * 1024;

let dir: string;
let src: string; // the tree: src/tree
let store: string;
let backupDir: string;
let backupId: string;
let pushOut: { code: number; stderr: string };

/** Every kind of entry the issue lists, with odd modes, owners and times. */
function makeTree(root: string): void {
  const t = (p: string) => q(path.join(root, p));
  fs.mkdirSync(path.join(root, "sub/deeper/empty"), { recursive: true });
  fs.mkdirSync(path.join(root, "ro-dir"));
  fs.mkdirSync(path.join(root, "sticky"));
  fs.writeFileSync(path.join(root, "plain.txt"), "plain text\n".repeat(1000));
  fs.writeFileSync(path.join(root, LONG), "long name\n");
  fs.writeFileSync(path.join(root, "sub", UTF8), "utf-8 name\n");
  const rnd = new Uint8Array(RANDOM_SIZE);
  for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, i + 65536));
  fs.writeFileSync(path.join(root, "random.bin"), rnd);
  fs.writeFileSync(path.join(root, "empty-file"), "");
  fs.writeFileSync(path.join(root, "ro-dir/inside"), "in a read-only directory\n");
  sh(`truncate -s 200M ${t("sparse.img")} && printf middle | dd of=${t("sparse.img")} bs=1 seek=100000000 conv=notrunc status=none`);
  sh(`ln -s random.bin ${t("link-rel")} && ln -s /nonexistent/absolute/target ${t("link-dangling")}`);
  sh(`ln -s ${"../".repeat(3) + "t".repeat(120)} ${t("link-long")}`);
  fs.writeFileSync(path.join(root, "hard-a"), "hard linked\n");
  sh(`ln ${t("hard-a")} ${t("sub/hard-b")} && ln ${t("hard-a")} ${t("sub/deeper/hard-c")}`);
  sh(`mkfifo ${t("fifo")} && mknod ${t("null-like")} c 1 3 && mknod ${t("nvme-like")} b 259 300`);
  fs.writeFileSync(path.join(root, "setuid"), "#!/bin/sh\n");
  fs.writeFileSync(path.join(root, "odd-mode"), "odd\n");
  fs.writeFileSync(path.join(root, "no-perms"), "root reads this anyway\n");
  fs.writeFileSync(path.join(root, "owned"), "owned by 1234:5678\n");
  fs.writeFileSync(path.join(root, "big-ids"), "owned by ids that do not fit ustar\n");
  fs.writeFileSync(path.join(root, "old"), "before 1970\n");
  sh(
    [
      `chmod 4755 ${t("setuid")}`,
      `chmod 0531 ${t("odd-mode")}`,
      `chmod 000 ${t("no-perms")}`,
      `chmod 2750 ${t("sub/deeper")}`,
      `chmod 1777 ${t("sticky")}`,
      `chown 1234:5678 ${t("owned")} ${t("sub")}`,
      `chown -h 1234:5678 ${t("link-rel")}`,
      `chown 3000000000:300000 ${t("big-ids")}`,
      `touch -d '2020-01-02 03:04:05.123456789' ${t("random.bin")}`,
      `touch -d '2021-06-07 08:09:10.000000001' ${t(LONG)}`,
      `touch -d '2001-02-03 04:05:06.5' ${t("sub/" + UTF8)}`,
      `touch -d '1960-06-01 12:00:00.25' ${t("old")}`,
      `touch -h -d '2018-01-01 00:00:00.75' ${t("link-rel")}`,
      `touch -d '2019-05-05 01:01:01.987654321' ${t("sub/deeper/empty")} ${t("sub/deeper")} ${t("sub")}`,
      `chmod 555 ${t("ro-dir")}`,
    ].join(" && "),
  );
}

interface Node {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  rdev: number;
  ino: bigint;
  content: string | null; // sha256 of a regular file
  target: string | null; // symlink target
}

/** Every entry under root (root itself as "."), by relative path. */
function snapshot(root: string): Map<string, Node> {
  const out = new Map<string, Node>();
  const visit = (rel: string) => {
    const abs = path.join(root, rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : st.isFIFO() ? "fifo" : st.isCharacterDevice() ? "chr" : st.isBlockDevice() ? "blk" : "other";
    out.set(rel, {
      type,
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: type === "file" || type === "symlink" ? Number(st.size) : 0,
      mtimeNs: st.mtimeNs,
      rdev: Number(st.rdev),
      ino: st.ino,
      content: type === "file" ? new Bun.CryptoHasher("sha256").update(fs.readFileSync(abs)).digest("hex") : null,
      target: type === "symlink" ? fs.readlinkSync(abs) : null,
    });
    if (type === "dir") for (const c of fs.readdirSync(abs).sort()) visit(rel === "." ? c : `${rel}/${c}`);
  };
  visit(".");
  return out;
}

/** Groups of paths that share an inode (hard links), as sorted lists. */
function linkGroups(s: Map<string, Node>): string[][] {
  const by = new Map<bigint, string[]>();
  for (const [p, n] of s) if (n.type !== "dir") by.set(n.ino, [...(by.get(n.ino) ?? []), p]);
  return [...by.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
}

/** Compares a restored tree with the source; mtimes must agree within toleranceNs. */
function expectSameTree(source: string, restored: string, toleranceNs: bigint): void {
  const a = snapshot(source);
  const b = snapshot(restored);
  expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
  for (const [p, n] of a) {
    const m = b.get(p)!;
    const { ino: _a, mtimeNs: ta, ...want } = n;
    const { ino: _b, mtimeNs: tb, ...got } = m;
    expect({ p, ...got }).toEqual({ p, ...want });
    const d = ta > tb ? ta - tb : tb - ta;
    if (d > toleranceNs) throw new Error(`${p}: mtime ${tb} differs from the source's ${ta} by ${d} ns (allowed ${toleranceNs})`);
  }
  expect(linkGroups(b)).toEqual(linkGroups(a));
  expect(linkGroups(a)).toEqual([["hard-a", "sub/deeper/hard-c", "sub/hard-b"]]);
}

/** Starts a receiver on a fresh unix socket that anyone may connect to. */
async function receiver(name: string, out: string, extra: string[] = ["--once"]) {
  const sock = path.join(dir, `${name}.sock`);
  const p = start(["receive", "--out", out, "--stream", `unix:${sock}`, ...extra]);
  await waitFor(() => fs.existsSync(sock), "socket");
  fs.chmodSync(sock, 0o777);
  return { sock: `unix:${sock}`, p };
}

async function listJson(out: string): Promise<{ id: string; kind: string; status: string; path: string; unreadableFiles?: number }[]> {
  const l = await run(["list", "--out", out, "--json"]);
  expect(l.code).toBe(0);
  return JSON.parse(l.stdout);
}

beforeAll(async () => {
  dir = tempDir("tbb-files-");
  fs.chmodSync(dir, 0o755); // the unprivileged pusher must reach its tree and the sockets
  src = path.join(dir, "src");
  fs.mkdirSync(path.join(src, "tree"), { recursive: true });
  makeTree(path.join(src, "tree"));
  store = path.join(dir, "store");
  const r = await receiver("main", store);
  pushOut = await run(["push", "--files", path.join(src, "tree"), "--name", "tree", "--stream", r.sock, "--sha256"]);
  expect((await finish(r.p)).code).toBe(0);
  const rows = await listJson(store);
  expect(rows.length).toBe(1);
  backupId = rows[0]!.id;
  backupDir = path.join(store, backupId);
});
afterAll(() => {
  if (dir) {
    sh(`chmod -R u+rwx ${q(dir)} 2>/dev/null || true`);
    cleanup(dir);
  }
});

describe("push --files -> receive, restore --files", () => {
  test("push succeeds, list shows kind files, manifest lists roots, count and bytes", async () => {
    expect(pushOut.code).toBe(0);
    expect(pushOut.stderr).toMatch(/backup complete: .* \(\d+ entries, /);
    const rows = await listJson(store);
    expect(rows[0]!.kind).toBe("files");
    expect(rows[0]!.status).toBe("complete");
    const text = await run(["list", "--out", store]);
    expect(text.stdout).toMatch(new RegExp(`${backupId}\\s+files\\s+complete`));
    const m = JSON.parse(fs.readFileSync(path.join(backupDir, "manifest.json"), "utf8")) as Manifest;
    expect(m.kind).toBe("files");
    expect(m.data).toBe(FILES_FILE);
    expect(fs.existsSync(path.join(backupDir, FILES_FILE))).toBe(true);
    expect(m.files!.roots).toEqual([path.join(src, "tree")]);
    // every entry, the root directory "tree" included
    expect(m.files!.count).toBe(snapshot(path.join(src, "tree")).size);
    expect(m.files!.unreadable).toEqual([]);
    expect(m.files!.changed).toEqual([]);
    const fileBytes = [...snapshot(path.join(src, "tree")).values()].filter((n) => n.type === "file").reduce((s, n) => s + n.size, 0);
    // hard links are counted once
    expect(m.files!.bytes).toBe(fileBytes - 2 * "hard linked\n".length);
    expect(m.sha256).toBe(sh(`zstd -dcq ${q(path.join(backupDir, FILES_FILE))} | sha256sum`).split(" ")[0]!);
    expect(m.root).toBe(zstdRoot(path.join(backupDir, FILES_FILE)));
  });

  test("the sparse file did not balloon in files.tar.zst", () => {
    const stored = fs.statSync(path.join(backupDir, FILES_FILE)).size;
    // 200 MiB of mostly holes plus 6 MiB of random data: the store holds little more than the random data
    expect(stored).toBeLessThan(RANDOM_SIZE + 1024 * 1024);
  });

  test("restore --files --from: same tree (contents, modes, owners, mtimes, links, specials), sparse stays sparse", async () => {
    const dest = path.join(dir, "restored");
    const r = await run(["restore", "--files", dest, "--from", backupDir]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("not created");
    // times go through a double: sub-microsecond precision survives
    expectSameTree(path.join(src, "tree"), path.join(dest, "tree"), 1000n);
    const sparse = fs.statSync(path.join(dest, "tree/sparse.img"));
    expect(sparse.size).toBe(200 * 1024 * 1024);
    expect(sparse.blocks * 512).toBeLessThan(1024 * 1024);
  });

  test("plain `zstd -dc files.tar.zst | tar -x` gives the same tree, mtimes to the nanosecond", () => {
    const x = path.join(dir, "tar-x");
    fs.mkdirSync(x);
    const r = Bun.spawnSync(["bash", "-c", `zstd -dcq ${q(path.join(backupDir, FILES_FILE))} | tar -x --numeric-owner -C ${q(x)}`], { stderr: "pipe" });
    expect(r.exitCode).toBe(0);
    // GNU tar's only remarks may be about the deliberately odd time stamps
    const remarks = r.stderr.toString().trim().split("\n").filter((l) => l && !/implausibly old time stamp/.test(l));
    expect(remarks).toEqual([]);
    expectSameTree(path.join(src, "tree"), path.join(x, "tree"), 0n);
  });

  test("restore --files over a stream (receive --allow-restore, --backup ID)", async () => {
    const r = await receiver("restore", store, ["--once", "--allow-restore"]);
    const dest = path.join(dir, "over-stream");
    const res = await run(["restore", "--files", dest, "--stream", r.sock, "--backup", backupId, "--json"]);
    const served = await finish(r.p);
    expect({ code: res.code, stderr: res.stderr }).toEqual({ code: 0, stderr: expect.any(String) });
    expect(served.code).toBe(0);
    const j = JSON.parse(res.stdout);
    expect(j.id).toBe(backupId);
    expect(j.extracted.entries).toBe(snapshot(path.join(src, "tree")).size);
    expectSameTree(path.join(src, "tree"), path.join(dest, "tree"), 1000n);
  });

  test("restoring a files backup as an image is refused: exit 2, no target created", async () => {
    const img = path.join(dir, "not-an-image.img");
    const r = await run(["restore", img, "--from", backupDir, "--yes"]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/file-level backup.*restore --files/);
    expect(fs.existsSync(img)).toBe(false);
  });
});

describe("names that are not UTF-8 (an old disk's Latin-1 names)", () => {
  // names are bytes: every one must come back as the same bytes, none may merge with another
  const B = (s: string) => Buffer.from(s, "latin1");
  /** name (bytes) -> what it is, for every entry under root */
  function inventory(root: string): Map<string, string> {
    const out = new Map<string, string>();
    const walk = (rel: Buffer) => {
      const abs = Buffer.concat([B(root), rel.length ? Buffer.concat([B("/"), rel]) : Buffer.alloc(0)]);
      for (const c of fs.readdirSync(abs, { encoding: "buffer" })) {
        const r = rel.length ? Buffer.concat([rel, B("/"), c]) : c;
        const a = Buffer.concat([abs, B("/"), c]);
        const st = fs.lstatSync(a);
        const key = r.toString("hex");
        if (st.isSymbolicLink()) out.set(key, "link->" + fs.readlinkSync(a, { encoding: "buffer" }).toString("hex"));
        else if (st.isDirectory()) (out.set(key, "dir"), walk(r));
        else out.set(key, `file:${fs.readFileSync(a).toString("hex")}:nlink=${st.nlink}`);
      }
    };
    walk(Buffer.alloc(0));
    return out;
  }

  test("push --files stores them as they are; restore --files and plain tar -x give back the same bytes", async () => {
    const tree = path.join(dir, "latin1");
    fs.mkdirSync(B(`${tree}/Fotos_f\xe9rias`), { recursive: true });
    fs.writeFileSync(B(`${tree}/Fotos_f\xe9rias/img1.jpg`), "one\n");
    fs.writeFileSync(B(`${tree}/caf\xe9.txt`), "latin-1 name\n");
    fs.symlinkSync(B(`caf\xe9.txt`), B(`${tree}/link_latin1`));
    fs.linkSync(B(`${tree}/caf\xe9.txt`), B(`${tree}/Fotos_f\xe9rias/hard\xe9`));
    // three names that U+FFFD would make one
    fs.writeFileSync(B(`${tree}/bad\xff`), "ff\n");
    fs.writeFileSync(B(`${tree}/bad\xfe`), "fe\n");
    fs.writeFileSync(`${tree}/bad\ufffd`, "valid utf-8\n");
    fs.writeFileSync(`${tree}/${UTF8}`, "utf-8 name\n");
    const want = inventory(tree);
    expect(want.size).toBe(9);

    const out = path.join(dir, "store-latin1");
    const r = await receiver("latin1", out);
    const p = await run(["push", "--files", tree, "--stream", r.sock]);
    expect((await finish(r.p)).code).toBe(0);
    expect(p.stderr).not.toMatch(/unreadable/);
    expect(p.code).toBe(0);
    const rows = await listJson(out);

    const dest = path.join(dir, "latin1-restored");
    const res = await run(["restore", "--files", dest, "--from", rows[0]!.path]);
    expect(res.code).toBe(0);
    expect(inventory(path.join(dest, "latin1"))).toEqual(want);

    const untarred = path.join(dir, "latin1-untarred");
    fs.mkdirSync(untarred);
    sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -x -C ${q(untarred)} 2>/dev/null`);
    expect(inventory(path.join(untarred, "latin1"))).toEqual(want);
  });
});

describe("no receiver", () => {
  test("push --files with nobody listening: exit 7 and the usual line, not an internal error", async () => {
    const r = await run(["push", "--files", path.join(src, "tree"), "--stream", `unix:${path.join(dir, "nobody.sock")}`, "--wait", "1"]);
    expect(r.code).toBe(7);
    expect(oneLine(r.stderr)).toMatch(/nobody is listening/);
  });
});

describe("existing files under DEST", () => {
  test("without --overwrite: exit 13 and the file is kept; with --overwrite: replaced", async () => {
    const dest = path.join(dir, "existing");
    fs.mkdirSync(path.join(dest, "tree"), { recursive: true });
    fs.writeFileSync(path.join(dest, "tree/plain.txt"), "precious\n");
    const r = await run(["restore", "--files", dest, "--from", backupDir]);
    expect(r.code).toBe(13);
    expect(oneLine(r.stderr)).toMatch(/plain\.txt already exists.*--overwrite/);
    expect(fs.readFileSync(path.join(dest, "tree/plain.txt"), "utf8")).toBe("precious\n");

    const o = await run(["restore", "--files", dest, "--from", backupDir, "--overwrite"]);
    expect(o.code).toBe(0);
    expectSameTree(path.join(src, "tree"), path.join(dest, "tree"), 1000n);
  });

  test("--overwrite replaces a symlink in the way instead of writing through it", async () => {
    const dest = path.join(dir, "symlink-in-way");
    const victim = path.join(dir, "victim.txt");
    fs.writeFileSync(victim, "must stay\n");
    fs.mkdirSync(path.join(dest, "tree"), { recursive: true });
    fs.symlinkSync(victim, path.join(dest, "tree/plain.txt"));
    const o = await run(["restore", "--files", dest, "--from", backupDir, "--overwrite"]);
    expect(o.code).toBe(0);
    expect(fs.readFileSync(victim, "utf8")).toBe("must stay\n");
    expect(fs.lstatSync(path.join(dest, "tree/plain.txt")).isFile()).toBe(true);
    expect(fs.readFileSync(path.join(dest, "tree/plain.txt"), "utf8")).toBe("plain text\n".repeat(1000));
  });
});

describe("unreadable files (push as an unprivileged user)", () => {
  let tree: string;
  beforeAll(() => {
    tree = path.join(dir, "partly");
    fs.mkdirSync(path.join(tree, "d"), { recursive: true });
    fs.writeFileSync(path.join(tree, "a.txt"), "readable a\n");
    fs.writeFileSync(path.join(tree, "d/z.txt"), "readable z\n");
    fs.writeFileSync(path.join(tree, "secret"), "nobody may read this\n");
    // a hard-linked file that cannot be read: its first name is skipped, so the
    // second must not become a link to a name that is not in the archive
    fs.writeFileSync(path.join(tree, "locked"), "locked, two names\n");
    fs.linkSync(path.join(tree, "locked"), path.join(tree, "d/locked-too"));
    // a readable hard-linked pair stays a pair
    fs.writeFileSync(path.join(tree, "pair-1"), "pair\n");
    fs.linkSync(path.join(tree, "pair-1"), path.join(tree, "d/pair-2"));
    fs.chmodSync(path.join(tree, "secret"), 0o000);
    fs.chmodSync(path.join(tree, "locked"), 0o000);
  });

  test("skipped and listed, exit 17, the rest arrives and restores", async () => {
    const out = path.join(dir, "store-partly");
    fs.mkdirSync(out);
    const r = await receiver("partly", out);
    const p = Bun.spawnSync([...NOBODY, BIN, "push", "--files", tree, "--stream", r.sock], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
    expect((await finish(r.p)).code).toBe(0);
    const stderr = p.stderr.toString();
    expect(p.exitCode).toBe(17);
    expect(oneLine(stderr)).toMatch(/completed with 3 unreadable files/);
    for (const f of ["secret", "locked", "d/locked-too"]) expect(stderr).toContain(`unreadable, skipped: ${path.join(tree, f)}: EACCES`);
    expect(stderr).not.toContain("a.txt: ");

    const rows = await listJson(out);
    expect(rows.map((x) => [x.kind, x.status, x.unreadableFiles])).toEqual([["files", "complete", 3]]);
    expect((await run(["list", "--out", out])).stdout).toMatch(/files\s+complete \(3 unreadable\)/);
    const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
    expect(m.files!.unreadable.sort()).toEqual(["d/locked-too", "locked", "secret"].map((f) => `${path.join(tree, f)}: EACCES`).sort());
    const names = sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -t`).trim().split("\n").map((n) => n.replace(/\/$/, "")).sort();
    expect(names).toEqual(["partly", "partly/a.txt", "partly/d", "partly/d/pair-2", "partly/d/z.txt", "partly/pair-1"]);

    const dest = path.join(dir, "partly-restored");
    const res = await run(["restore", "--files", dest, "--from", rows[0]!.path]);
    expect(res.code).toBe(0);
    expect(fs.readFileSync(path.join(dest, "partly/a.txt"), "utf8")).toBe("readable a\n");
    expect(fs.readFileSync(path.join(dest, "partly/d/z.txt"), "utf8")).toBe("readable z\n");
    expect(fs.statSync(path.join(dest, "partly/d/pair-2")).ino).toBe(fs.statSync(path.join(dest, "partly/pair-1")).ino);
    for (const f of ["secret", "locked", "d/locked-too"]) expect(fs.existsSync(path.join(dest, "partly", f))).toBe(false);
  });

  test("--strict: exit 3 at the first one, nothing complete is stored", async () => {
    const out = path.join(dir, "store-strict");
    fs.mkdirSync(out);
    const r = await receiver("strict", out);
    const p = Bun.spawnSync([...NOBODY, BIN, "push", "--strict", "--files", tree, "--stream", r.sock], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
    await finish(r.p);
    expect(p.exitCode).toBe(3);
    // walk order is sorted: d/locked-too comes first
    expect(oneLine(p.stderr.toString())).toMatch(new RegExp(`cannot read ${path.join(tree, "d/locked-too")}: EACCES`));
    const rows = await listJson(out);
    expect(rows.filter((x) => x.status === "complete")).toEqual([]);
    expect(sh(`find ${q(out)} -name ${FILES_FILE}`).trim()).toBe("");
  });
});

describe("a read error in the middle of a file (ext4 with a damaged extent-tree leaf)", () => {
  // frag.bin: 12 MiB, data in every other 4 KiB block, so 1536 extents in a
  // two-level extent tree whose leaves each map 680 blocks. The second leaf is
  // overwritten, and the image mounted read-only: reads of blocks 680..1359
  // fail with EIO, the blocks before and after still read.
  const BLOCK = 4096;
  let mnt: string;
  let orig: Uint8Array;
  let bad: { from: number; to: number }; // file blocks that cannot be read
  beforeAll(() => {
    const img = path.join(dir, "eio.img");
    mnt = path.join(dir, "eio-mnt");
    fs.mkdirSync(mnt);
    sh(`truncate -s 64M ${q(img)} && mkfs.ext4 -q -F -b 4096 ${q(img)} && mount -o loop ${q(img)} ${q(mnt)}`);
    orig = new Uint8Array(3072 * BLOCK);
    for (let b = 0; b < 3072; b += 2) crypto.getRandomValues(orig.subarray(b * BLOCK, (b + 1) * BLOCK));
    const fd = fs.openSync(path.join(mnt, "frag.bin"), "w");
    for (let b = 0; b < 3072; b += 2) fs.writeSync(fd, orig, b * BLOCK, BLOCK, b * BLOCK);
    fs.ftruncateSync(fd, orig.length);
    fs.closeSync(fd);
    fs.writeFileSync(path.join(mnt, "z-after.txt"), "after the damaged file\n");
    sh(`umount ${q(mnt)}`);
    // the index (level 0) and leaves (level 1): "1/ 2   2/  5   680 -  1359  4114   680"
    const leaves = sh(`debugfs -R 'dump_extents -n /frag.bin' ${q(img)} 2>/dev/null`)
      .split("\n")
      .map((l) => /^\s*1\/\s*2\s+\d+\/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)/.exec(l))
      .filter((m) => m !== null)
      .map((m) => ({ from: Number(m[1]), to: Number(m[2]) + 1, block: Number(m[3]) }));
    expect(leaves.length).toBeGreaterThanOrEqual(3);
    const leaf = leaves[1]!;
    bad = { from: leaf.from, to: leaf.to };
    // a fixed pattern rather than random bytes: never a valid extent header by chance
    fs.writeFileSync(path.join(dir, "garbage"), new Uint8Array(BLOCK).fill(0xa5));
    sh(`dd if=${q(path.join(dir, "garbage"))} of=${q(img)} bs=${BLOCK} seek=${leaf.block} count=1 conv=notrunc status=none`);
    sh(`mount -o loop,ro,errors=continue ${q(img)} ${q(mnt)}`);
  });
  afterAll(() => {
    if (mnt) sh(`umount ${q(mnt)} 2>/dev/null || true`);
  });

  test("the readable parts after the bad spot are stored; only the failed pieces are zeros; exit 17", async () => {
    // the set-up really fails where it should, and only there
    const fd = fs.openSync(path.join(mnt, "frag.bin"), "r");
    expect(() => fs.readSync(fd, new Uint8Array(BLOCK), 0, BLOCK, (bad.from + 1) * BLOCK)).toThrow(/EIO/);
    expect(fs.readSync(fd, new Uint8Array(BLOCK), 0, BLOCK, (bad.to + 2) * BLOCK)).toBe(BLOCK);
    fs.closeSync(fd);

    const out = path.join(dir, "store-eio");
    const r = await receiver("eio", out);
    const p = await run(["push", "--files", mnt, "--stream", r.sock]);
    expect((await finish(r.p)).code).toBe(0);
    const rows = await listJson(out);
    expect(rows.map((x) => [x.kind, x.status])).toEqual([["files", "complete"]]);

    const x = path.join(dir, "eio-extracted");
    fs.mkdirSync(x);
    sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -x -C ${q(x)}`);
    const got = new Uint8Array(fs.readFileSync(path.join(x, "eio-mnt/frag.bin")));
    expect(got.length).toBe(orig.length);
    const want = orig.slice();
    want.fill(0, bad.from * BLOCK, bad.to * BLOCK);
    // compare block by block so a failure names the first wrong block, not 12 MiB of bytes
    const wrong: number[] = [];
    for (let b = 0; b < orig.length / BLOCK; b++) if (Buffer.compare(got.subarray(b * BLOCK, (b + 1) * BLOCK), want.subarray(b * BLOCK, (b + 1) * BLOCK)) !== 0) wrong.push(b);
    expect({ wrong: wrong.slice(0, 5), count: wrong.length }).toEqual({ wrong: [], count: 0 });
    expect(fs.readFileSync(path.join(x, "eio-mnt/z-after.txt"), "utf8")).toBe("after the damaged file\n");

    const zeroed = (bad.to - bad.from) * BLOCK;
    expect(p.stderr).toContain(`unreadable in part: ${path.join(mnt, "frag.bin")}: stored with ${zeroed} bytes zeroed (EIO)`);
    expect(p.code).toBe(17);
    expect(oneLine(p.stderr)).toMatch(/completed with 1 unreadable file/);
    const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
    expect(m.files!.unreadable).toEqual([`${path.join(mnt, "frag.bin")}: stored with ${zeroed} bytes zeroed (EIO)`]);
  });
});

describe("a file that changes while being read", () => {
  test("is reported on stderr and in the manifest; the push still completes", async () => {
    const tree = path.join(dir, "busy");
    fs.mkdirSync(tree);
    fs.writeFileSync(path.join(tree, "calm.txt"), "calm\n");
    const growing = path.join(tree, "growing.log");
    sh(`truncate -s 64M ${q(growing)}`); // big enough that reading it takes a while
    const writer = Bun.spawn(["bash", "-c", `while :; do echo more >> ${q(growing)}; sleep 0.002; done`]);
    try {
      const out = path.join(dir, "store-busy");
      const r = await receiver("busy", out);
      const p = await run(["push", "--files", tree, "--stream", r.sock]);
      expect((await finish(r.p)).code).toBe(0);
      expect(p.code).toBe(0);
      expect(p.stderr).toContain("changed while being read: busy/growing.log");
      expect(p.stderr).not.toContain("calm.txt");
      const rows = await listJson(out);
      const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
      expect(m.files!.changed).toEqual(["busy/growing.log"]);
    } finally {
      writer.kill();
      await writer.exited;
    }
  });
});

describe("a file that ends before its size", () => {
  test("a sysfs file (4096 bytes by stat, 'supported\\n' by read) is stored padded with zeros and reported as changed", async () => {
    const root = "/sys/fs/ext4/features"; // present wherever ext4 is, which the test above needs too
    const attrs = fs.readdirSync(root).sort();
    expect(attrs.length).toBeGreaterThan(0);
    expect(fs.statSync(path.join(root, attrs[0]!)).size).toBe(4096);
    const content = fs.readFileSync(path.join(root, attrs[0]!), "utf8");
    expect(content.length).toBeLessThan(4096);
    const out = path.join(dir, "store-sysfs");
    const r = await receiver("sysfs", out);
    const p = await run(["push", "--files", root, "--stream", r.sock]);
    expect((await finish(r.p)).code).toBe(0);
    expect(p.code).toBe(0);
    for (const a of attrs) expect(p.stderr).toContain(`changed while being read: features/${a}\n`);
    const rows = await listJson(out);
    const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
    expect(m.files!.changed).toEqual(attrs.map((a) => `features/${a}`));
    const x = path.join(dir, "sysfs-extracted");
    fs.mkdirSync(x);
    sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -x -C ${q(x)}`);
    const got = fs.readFileSync(path.join(x, "features", attrs[0]!));
    expect(got.length).toBe(4096);
    expect(got.subarray(0, content.length).toString()).toBe(content);
    expect(got.subarray(content.length).every((b) => b === 0)).toBe(true);
  });
});

describe("file systems mounted inside a tree", () => {
  let tree: string;
  beforeAll(() => {
    tree = path.join(dir, "mounted");
    fs.mkdirSync(path.join(tree, "mnt"), { recursive: true });
    fs.writeFileSync(path.join(tree, "own.txt"), "on the tree's file system\n");
    sh(`mount -t tmpfs -o size=4m,mode=0750 tbb-test ${q(path.join(tree, "mnt"))}`);
    fs.writeFileSync(path.join(tree, "mnt/inside.txt"), "on the tmpfs\n");
  });
  afterAll(() => {
    if (tree) sh(`umount ${q(path.join(tree, "mnt"))} 2>/dev/null || true`);
  });

  const pushTree = async (name: string, extra: string[]) => {
    const out = path.join(dir, `store-${name}`);
    const r = await receiver(name, out);
    const p = await run(["push", "--files", tree, ...extra, "--stream", r.sock]);
    if (p.code !== 0) r.p.kill(); // a refused command line never reaches the receiver
    expect({ code: p.code, stderr: p.code === 0 ? "" : p.stderr }).toEqual({ code: 0, stderr: "" });
    expect((await finish(r.p)).code).toBe(0);
    const rows = await listJson(out);
    const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
    const names = sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -t`).trim().split("\n").map((n) => n.replace(/\/$/, "")).sort();
    return { p, m, names };
  };

  test("are not walked into: the mount point is stored empty and listed on stderr and in the manifest", async () => {
    const { p, m, names } = await pushTree("mounts", []);
    expect(p.stderr).toContain(`another file system, not walked into (--cross-mounts does): ${path.join(tree, "mnt")}\n`);
    expect(names).toEqual(["mounted", "mounted/mnt", "mounted/own.txt"]);
    expect(m.files!.mounts).toEqual([path.join(tree, "mnt")]);
    expect(m.files!.count).toBe(3);
  });

  test("--cross-mounts walks into them", async () => {
    const { p, m, names } = await pushTree("cross", ["--cross-mounts"]);
    expect(p.stderr).not.toContain("not walked into");
    expect(names).toEqual(["mounted", "mounted/mnt", "mounted/mnt/inside.txt", "mounted/own.txt"]);
    expect(m.files!.mounts).toEqual([]);
  });
});

describe("roots", () => {
  test("/ with another root named like one of /'s children (/ and DIR/etc): exit 2, one line, nothing sent", async () => {
    const etc = path.join(dir, "other/etc");
    fs.mkdirSync(etc, { recursive: true });
    fs.writeFileSync(path.join(etc, "hosts"), "not /etc/hosts\n");
    const sock = path.join(dir, "never.sock");
    for (const roots of [["/", etc], [etc, "/"]]) {
      const p = await run(["push", "--files", ...roots, "--wait", "1", "--stream", `unix:${sock}`]);
      expect(p.code).toBe(2);
      expect(p.stderr.trim().split("\n")).toEqual([`tbbackup: / and ${etc} would both store 'etc' in the archive; push them separately`]);
    }
  });

  test("a root that is a symlink to a directory is stored under the symlink's name, with the directory's contents", async () => {
    const target = path.join(dir, "link-target");
    fs.mkdirSync(path.join(target, "d"), { recursive: true });
    fs.writeFileSync(path.join(target, "d/f.txt"), "through the link\n");
    const link = path.join(dir, "via-link");
    fs.symlinkSync(target, link);
    const out = path.join(dir, "store-link");
    const r = await receiver("link", out);
    const p = await run(["push", "--files", link, "--stream", r.sock]);
    if (p.code !== 0) r.p.kill();
    expect({ code: p.code, stderr: p.code === 0 ? "" : p.stderr }).toEqual({ code: 0, stderr: "" });
    expect((await finish(r.p)).code).toBe(0);
    const rows = await listJson(out);
    const names = sh(`zstd -dcq ${q(path.join(rows[0]!.path, FILES_FILE))} | tar -t`).trim().split("\n").map((n) => n.replace(/\/$/, "")).sort();
    expect(names).toEqual(["via-link", "via-link/d", "via-link/d/f.txt"]);
    const m = JSON.parse(fs.readFileSync(path.join(rows[0]!.path, "manifest.json"), "utf8")) as Manifest;
    expect(m.files!.roots).toEqual([target]);
  });
});

/** A stored backup directory (as receive writes it) holding an arbitrary tar stream. */
function storeTar(name: string, tar: Uint8Array): string {
  const chunkSize = 1024 * 1024;
  const d = path.join(dir, "hostile-store", name);
  fs.mkdirSync(d, { recursive: true });
  const w = new ImageWriter(d, FILES_FILE);
  const z = zstd();
  const cctx = new z.CCtx();
  cctx.setParameter(z.CParameter.compressionLevel, 1);
  cctx.setParameter(z.CParameter.checksumFlag, 1);
  cctx.setParameter(z.CParameter.contentSizeFlag, 1);
  for (let off = 0; off < tar.length; off += chunkSize) {
    const raw = tar.subarray(off, Math.min(tar.length, off + chunkSize));
    const out = new Uint8Array(z.compressBound(raw.length));
    const frame = out.slice(0, cctx.compress2(out, raw));
    w.append(frame, raw.length, off, Bun.hash.xxHash3(raw));
  }
  const storedBytes = w.finish();
  const now = new Date().toISOString();
  const m: Manifest = {
    format: 1,
    id: `test/${name}/20250101T000000Z`,
    kind: "files",
    status: "complete",
    label: name,
    host: { hostname: "test", machineId: null, productUuid: null },
    disk: { path: "/hostile", kind: "files", name, size: 0, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null },
    tool: { name: "tbbackup", version: "0.1.0", protocol: 1 },
    receiver: { hostname: "test", tool: "tbbackup/0.1.0" },
    session: "00000000-0000-0000-0000-000000000000",
    chunkSize,
    compression: { algorithm: "zstd", level: 1, format: "zstd-seekable" },
    chunks: { count: w.chunks, zero: 0, checksum: "xxh3-64", file: "chunks.txt" },
    size: tar.length,
    storedBytes,
    sha256: new Bun.CryptoHasher("sha256").update(tar).digest("hex"),
    data: FILES_FILE,
    timings: { started: now, finished: now, seconds: 0 },
    files: { roots: ["/hostile"], count: 0, bytes: 0, unreadable: [], changed: [] },
  };
  writeManifest(d, m);
  return d;
}

/** A tar stream built by python3's tarfile: entries are [name, type, linkname?, mode?] (tarfile's defaults unless given). */
function craftTar(entries: [string, "file" | "dir" | "symlink" | "hardlink", string?, number?][]): Uint8Array {
  const script = `
import io, sys, tarfile, json
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name, kind, link, mode in json.loads(sys.argv[1]):
        i = tarfile.TarInfo(name)
        i.mtime = 1700000000
        i.mode = mode if mode is not None else 0o644 if kind == "file" else 0o755
        if kind == "file":
            data = b"written by a hostile archive\\n"
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))
        else:
            i.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            i.linkname = link or ""
            t.addfile(i)
sys.stdout.buffer.write(buf.getvalue())
`;
  const r = Bun.spawnSync(["python3", "-c", script, JSON.stringify(entries.map(([n, k, l, m]) => [n, k, l ?? null, m ?? null]))], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`python3 tarfile failed: ${r.stderr.toString()}`);
  return new Uint8Array(r.stdout);
}

describe("hostile archives are refused without writing outside DEST", () => {
  // Each archive starts with a harmless entry, so extraction has begun when the bad one comes.
  const cases: { name: string; entries: (outside: string) => [string, "file" | "dir" | "symlink" | "hardlink", string?][]; escaped: (outside: string, dest: string) => string[] }[] = [
    { name: "dotdot", entries: () => [["ok.txt", "file"], ["../evil", "file"]], escaped: (_o, dest) => [path.join(dest, "../evil")] },
    { name: "dotdot-deep", entries: () => [["ok.txt", "file"], ["a/b/../../../evil2", "file"]], escaped: (_o, dest) => [path.join(dest, "../evil2")] },
    { name: "absolute", entries: (o) => [["ok.txt", "file"], [`${o}/abs-evil`, "file"]], escaped: (o) => [`${o}/abs-evil`] },
    { name: "symlink-then-file", entries: (o) => [["ok.txt", "file"], ["link", "symlink", o], ["link/evil", "file"]], escaped: (o) => [`${o}/evil`] },
    { name: "relative-symlink-then-dir", entries: () => [["ok.txt", "file"], ["up", "symlink", ".."], ["up/escaped-dir", "dir"], ["up/escaped-dir/f", "file"]], escaped: (_o, dest) => [path.join(dest, "../escaped-dir")] },
    { name: "hardlink-out", entries: (o) => [["ok.txt", "file"], ["hl", "hardlink", `${o}/target`], ["hl2", "hardlink", "../outside/target"]], escaped: () => [] },
  ];
  for (const c of cases) {
    test(`${c.name}: exit 12, REFUSED, nothing outside DEST`, async () => {
      const base = path.join(dir, "hostile", c.name);
      const outside = path.join(base, "outside");
      const dest = path.join(base, "dest");
      fs.mkdirSync(outside, { recursive: true });
      fs.writeFileSync(path.join(outside, "target"), "outside file\n");
      const b = storeTar(c.name, craftTar(c.entries(outside)));
      const before = sh(`find ${q(base)} -path ${q(dest)} -prune -o -print | sort`);
      const r = await run(["restore", "--files", dest, "--from", b, "--overwrite"]);
      expect(r.code).toBe(12);
      expect(oneLine(r.stderr)).toMatch(/refused archive entry .*nothing was written outside/);
      for (const p of c.escaped(outside, dest)) expect(fs.existsSync(p)).toBe(false);
      // nothing appeared or changed next to DEST either
      expect(sh(`find ${q(base)} -path ${q(dest)} -prune -o -print | sort`)).toBe(before);
      expect(fs.readFileSync(path.join(outside, "target"), "utf8")).toBe("outside file\n");
      expect(fs.statSync(path.join(outside, "target")).nlink).toBe(1);
      // the harmless first entry shows extraction really ran
      expect(fs.readFileSync(path.join(dest, "ok.txt"), "utf8")).toBe("written by a hostile archive\n");
    });
  }

  test("the same crafted archive's harmless form restores (the helper makes valid backups)", async () => {
    const b = storeTar("benign", craftTar([["ok.txt", "file"], ["d", "dir"], ["d/link", "symlink", "/etc/passwd"], ["d/f", "file"], ["d/hl", "hardlink", "d/f"]]));
    const dest = path.join(dir, "benign");
    const r = await run(["restore", "--files", dest, "--from", b]);
    expect(r.code).toBe(0);
    expect(fs.readlinkSync(path.join(dest, "d/link"))).toBe("/etc/passwd");
    expect(fs.statSync(path.join(dest, "d/hl")).ino).toBe(fs.statSync(path.join(dest, "d/f")).ino);
  });

  test("a stored stream that is not a tar archive: exit 8, the archive is damaged (not an internal error)", async () => {
    const junk = new Uint8Array(8192);
    for (let i = 0; i < junk.length; i++) junk[i] = (i * 7919 + 13) & 0xff;
    const b = storeTar("junk", junk);
    const r = await run(["restore", "--files", path.join(dir, "junk-dest"), "--from", b]);
    expect(r.code).toBe(8);
    expect(oneLine(r.stderr)).toMatch(/tar stream is damaged.*nothing was written under .*junk-dest/);
  });
});

describe("links that point outside DEST are never followed when setting attributes", () => {
  test("--overwrite replaces a directory with a symlink: modes and times saved for what was under it stay in DEST", async () => {
    const base = path.join(dir, "hostile", "dir-then-symlink");
    const outside = path.join(base, "outside");
    const victim = path.join(outside, "victimdir");
    fs.mkdirSync(victim, { recursive: true });
    fs.chmodSync(victim, 0o700);
    sh(`touch -d 2001-01-01 ${q(victim)} ${q(outside)}`);
    const before = [fs.statSync(victim), fs.statSync(outside)].map((st) => [st.mode, st.mtimeMs]);
    // The symlink may point anywhere (a symlink is restored as it was); what it must not
    // do is carry the mode and time of a/victimdir, set once the extraction ends, outside DEST.
    const b = storeTar("dir-then-symlink", craftTar([["a", "dir"], ["a/victimdir", "dir", undefined, 0o777], ["a", "symlink", outside]]));
    const dest = path.join(base, "dest");
    const r = await run(["restore", "--files", dest, "--from", b, "--overwrite"]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.any(String) });
    expect(fs.readlinkSync(path.join(dest, "a"))).toBe(outside);
    expect([fs.statSync(victim), fs.statSync(outside)].map((st) => [st.mode, st.mtimeMs])).toEqual(before);
  });

  test("--overwrite replaces a directory and makes it again: the later entries' modes win", async () => {
    const b = storeTar("dir-replaced", craftTar([["a", "dir"], ["a/v", "dir", undefined, 0o777], ["a", "file"], ["a", "dir", undefined, 0o750], ["a/v", "dir", undefined, 0o700]]));
    const dest = path.join(dir, "dir-replaced");
    const r = await run(["restore", "--files", dest, "--from", b, "--overwrite"]);
    expect(r.code).toBe(0);
    expect(fs.statSync(path.join(dest, "a")).mode & 0o7777).toBe(0o750);
    expect(fs.statSync(path.join(dest, "a/v")).mode & 0o7777).toBe(0o700);
  });

  test("a hard link to a symlink: the symlink's target outside DEST keeps its mode and mtime", async () => {
    const d = tempDir();
    try {
      const outside = path.join(d, "outside.txt");
      fs.writeFileSync(outside, "secret\n");
      fs.chmodSync(outside, 0o600);
      sh(`touch -d 2001-01-01 ${q(outside)}`);
      const before = fs.statSync(outside);
      const tree = path.join(d, "tree");
      fs.mkdirSync(tree);
      fs.symlinkSync(outside, path.join(tree, "a"));
      fs.linkSync(path.join(tree, "a"), path.join(tree, "b")); // link() does not follow: a second name for the symlink
      const out = path.join(d, "store");
      const recv = await receiver("hl", out);
      expect((await run(["push", "--files", tree, "--stream", recv.sock])).code).toBe(0);
      await finish(recv.p);
      const rows = await listJson(out);
      expect(rows.length).toBe(1);
      const r = await run(["restore", "--files", path.join(d, "dest"), "--from", path.join(out, rows[0]!.id)]);
      expect(r.code).toBe(0);
      const after = fs.statSync(outside);
      expect(after.mode & 0o7777).toBe(before.mode & 0o7777);
      expect(after.mtimeMs).toBe(before.mtimeMs);
      expect(fs.readlinkSync(path.join(d, "dest/tree/b"))).toBe(outside);
    } finally {
      cleanup(d);
    }
  });
});

describe("errors while creating entries under DEST are TARGET errors (exit 13, one line)", () => {
  test("a name longer than the system allows: exit 13, says the extraction is incomplete", async () => {
    const deep = Array.from({ length: 24 }, (_, i) => `${i}-${"n".repeat(200)}`).join("/");
    const b = storeTar("too-long", craftTar([["ok.txt", "file"], [`${deep}/f`, "file"]]));
    const dest = path.join(dir, "too-long");
    const r = await run(["restore", "--files", dest, "--from", b]);
    expect(r.code).toBe(13);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/ENAMETOOLONG.*the extraction is incomplete/);
    // the name is shortened: one line a serial console can show
    expect(line.length).toBeLessThan(400);
    expect(fs.readFileSync(path.join(dest, "ok.txt"), "utf8")).toBe("written by a hostile archive\n");
  });

  test("a destination out of inodes: exit 13, the destination is full, as when out of space", async () => {
    const mnt = path.join(dir, "few-inodes");
    fs.mkdirSync(mnt);
    sh(`mount -t tmpfs -o size=8m,nr_inodes=12 tmpfs ${q(mnt)}`);
    try {
      // directories only: the inodes run out in mkdir, not in creating a file
      const entries: [string, "dir" | "file"][] = [["ok.txt", "file"]];
      for (let i = 0; i < 20; i++) entries.push([`d${i}`, "dir"]);
      const b = storeTar("few-inodes", craftTar(entries));
      const r = await run(["restore", "--files", path.join(mnt, "dest"), "--from", b]);
      expect(r.code).toBe(13);
      expect(oneLine(r.stderr)).toMatch(/the destination is full while creating .*d\d+; the extraction is incomplete; free space/);
    } finally {
      sh(`umount ${q(mnt)}`);
    }
  });
});
