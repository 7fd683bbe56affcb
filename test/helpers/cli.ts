// Helpers for integration tests: run dist/tbbackup as a user would, make real
// disk images, wait for things. Nothing here mocks tbbackup itself.
import { mkdtempSync, rmSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { expect } from "bun:test";

export const ROOT = path.resolve(import.meta.dir, "../..");
export const BIN = path.join(ROOT, "dist/tbbackup");

export function tempDir(prefix = "tbb-test-"): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the binary to completion. */
export async function run(args: string[], opts: { cwd?: string; env?: Record<string, string>; stdin?: "ignore" | Uint8Array } = {}): Promise<RunResult> {
  const p = Bun.spawn([BIN, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, NO_COLOR: "1", ...opts.env },
    stdin: opts.stdin instanceof Uint8Array ? new Blob([opts.stdin]) : "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** Starts the binary in the background. */
export function start(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Subprocess<"ignore", "pipe", "pipe"> {
  return Bun.spawn([BIN, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, NO_COLOR: "1", ...opts.env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
}

export async function finish(p: Subprocess<"ignore", "pipe", "pipe">): Promise<RunResult> {
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** Stores one push of `img` under `out` through a receiver on unix:`sock`; throws unless both sides exit 0. */
export async function storeBackup(img: string, out: string, sock: string, pushArgs: string[] = []): Promise<void> {
  const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
  await waitFor(() => existsSync(sock), "receiver socket");
  const p = await run(["push", img, "--stream", `unix:${sock}`, ...pushArgs]);
  const r = await finish(recv);
  if (p.code !== 0 || r.code !== 0) throw new Error(`storing a backup failed: push exit ${p.code} (${p.stderr.trim()}), receive exit ${r.code} (${r.stderr.trim()})`);
}

export async function waitFor(cond: () => boolean, what: string, ms = 15000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

export function sh(cmd: string, cwd?: string): string {
  const r = Bun.spawnSync(["bash", "-c", cmd], { cwd, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd} failed (${r.exitCode}): ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/**
 * A real ext4 image: mkfs.ext4 -d from a directory of known files (text,
 * random data, an empty dir, a symlink), so it has data, metadata and zeros.
 */
export function makeExt4Image(dir: string, sizeMiB = 32, name = "disk.img"): string {
  const tree = path.join(dir, `tree-${name}`);
  mkdirSync(path.join(tree, "docs/empty"), { recursive: true });
  writeFileSync(path.join(tree, "docs/readme.txt"), "tbbackup test file\n".repeat(5000));
  const rnd = new Uint8Array(3 * 1024 * 1024);
  for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, i + 65536));
  writeFileSync(path.join(tree, "random.bin"), rnd);
  sh(`ln -s docs/readme.txt ${JSON.stringify(path.join(tree, "link"))}`);
  const img = path.join(dir, name);
  sh(`truncate -s ${sizeMiB}M ${JSON.stringify(img)} && mkfs.ext4 -q -F -d ${JSON.stringify(tree)} ${JSON.stringify(img)}`);
  return img;
}

export function sha256File(file: string): string {
  return sh(`sha256sum ${JSON.stringify(file)}`).split(" ")[0]!;
}

/** The chunk digest of a root (docs/FORMAT.md §4a): BLAKE3 (what tbbackup writes), or SHA-256 (older peers and backups). */
export type ChunkDigest = "blake3" | "sha256";
/** The stock command that prints one chunk's digest, 64 hex digits. */
const CHUNK_SUM: Record<ChunkDigest, string> = { blake3: "b3sum --no-names", sha256: "sha256sum | cut -c1-64" };

/**
 * The integrity root of a raw file as stock tools compute it (docs/FORMAT.md
 * §4a): the digest of each chunk by split + b3sum (or sha256sum), then the
 * SHA-256 of that list.
 */
export function stockRoot(file: string, chunk = "1M", digest: ChunkDigest = "blake3"): string {
  return sh(`split -b ${chunk} --filter='${CHUNK_SUM[digest]}' ${JSON.stringify(file)} | sha256sum`).split(" ")[0]!;
}

/**
 * The same root computed here, chunk by chunk (split runs a shell per chunk:
 * too slow for the 4 KiB chunks some tests use), with the hash libraries
 * themselves (Bun's SHA-256, the BLAKE3 addon), not tbbackup's code.
 */
export function fileRoot(file: string, chunkSize: number, digest: ChunkDigest = "blake3"): string {
  const data = readFileSync(file);
  const lines = new Bun.CryptoHasher("sha256");
  const b3 = require("@napi-rs/blake-hash") as { blake3(d: Uint8Array): Buffer };
  for (let at = 0; at < data.length; at += chunkSize) {
    const piece = data.subarray(at, Math.min(at + chunkSize, data.length));
    lines.update((digest === "blake3" ? b3.blake3(piece).toString("hex") : new Bun.CryptoHasher("sha256").update(piece).digest("hex")) + "\n");
  }
  return lines.digest("hex");
}

/** stockRoot of what `zstd -dc` makes of a stored image. */
export function zstdRoot(file: string, chunk = "1M", digest: ChunkDigest = "blake3"): string {
  return sh(`zstd -dcq ${JSON.stringify(file)} | split -b ${chunk} --filter='${CHUNK_SUM[digest]}' | sha256sum`).split(" ")[0]!;
}

export function zstdSha(file: string): string {
  return sh(`zstd -dcq ${JSON.stringify(file)} | sha256sum`).split(" ")[0]!;
}

/** An image of `mib` MiB of random bytes: incompressible, so every chunk is a long frame on the wire. */
export function randomImage(dir: string, mib: number, name = `random${mib}.img`): string {
  const file = path.join(dir, name);
  const buf = Buffer.alloc(mib * 1024 * 1024);
  for (let i = 0; i < buf.length; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));
  writeFileSync(file, buf);
  return file;
}

/** The one `tbbackup: ...` error line a failing command must print (asserts there is exactly one). */
export function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n").filter((l) => l.startsWith("tbbackup: "));
  expect(lines.length).toBe(1);
  return lines[0]!;
}

/** What `list --out DIR --json` shows. */
export async function listBackups(out: string): Promise<{ id: string; status: string }[]> {
  const l = await run(["list", "--out", out, "--json"]);
  expect(l.code).toBe(0);
  return JSON.parse(l.stdout);
}

export { existsSync };

/** A virtual cable: two linked ptys DIR/A and DIR/B (socat), as a device pair; `close` ends it. */
export async function ptyPair(dir: string): Promise<{ a: string; b: string; close: () => void }> {
  const socat = Bun.spawn(["socat", "-d", `pty,raw,echo=0,link=${dir}/A`, `pty,raw,echo=0,link=${dir}/B`], { stderr: "ignore" });
  await waitFor(() => existsSync(`${dir}/A`) && existsSync(`${dir}/B`), "socat ptys");
  return { a: `${dir}/A`, b: `${dir}/B`, close: () => socat.kill() };
}
