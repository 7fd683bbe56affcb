// restore onto a block device that can write zeroes itself (a loop device):
// runs of zero chunks go out as BLKZEROOUT instead of written zeros. Seen from
// outside: the loop's backing file gets unwritten (fallocate ZERO_RANGE)
// extents where the zero chunks are, while every byte still reads back equal
// to the source (restore verifies, and cmp checks again).
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { cleanup, run, sh, storeBackup, tempDir } from "../helpers/cli.ts";

const MiB = 1024 * 1024;
const has = (cmd: string) => Bun.spawnSync(["sh", "-c", `command -v ${cmd}`]).exitCode === 0;
const canLoop = process.getuid?.() === 0 && has("losetup") && has("filefrag");
const dir = tempDir("tbb-zeroout-");
afterAll(() => cleanup(dir));

/** Bytes of `file` in extents that filefrag flags unwritten (allocated, reading as zeros). */
function unwrittenBytes(file: string): number {
  let blocks = 0;
  for (const line of sh(`filefrag -v ${file}`).split("\n")) {
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):.*unwritten/.exec(line);
    if (m) blocks += Number(m[1]);
  }
  return blocks * 4096;
}

describe.skipIf(!canLoop)("restore onto a loop device with write-zeroes (needs root, losetup, filefrag)", () => {
  test("zero chunks become BLKZEROOUT; the target equals the source", async () => {
    // a source with 4 MiB of data and 60 MiB of zeros
    const src = path.join(dir, "src.img");
    sh(`head -c 4M /dev/urandom > ${src} && truncate -s 64M ${src}`);
    const out = path.join(dir, "store");
    await storeBackup(src, out, path.join(dir, "s.sock"));
    const backupDir = path.dirname(path.join(out, (fs.readdirSync(out, { recursive: true }) as string[]).map(String).find((p) => p.endsWith("manifest.json"))!));
    // the target disk holds old data everywhere
    const backing = path.join(dir, "disk.img");
    sh(`head -c 64M /dev/urandom > ${backing} && sync`);
    const tmpFs = sh(`stat -f -c %T ${dir}`).trim();
    const loop = sh(`losetup -f --show ${backing}`).trim();
    try {
      const wz = Number(fs.readFileSync(`/sys/block/${path.basename(loop)}/queue/write_zeroes_max_bytes`, "utf8"));
      if (!(wz > 0)) {
        console.log(`${loop} has no write-zeroes support here: nothing to test`);
        return;
      }
      const r = await run(["restore", loop, "--from", backupDir, "--yes", "--force"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toContain("zero chunks by the disk's write-zeroes");
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(sh(`cmp ${src} ${backing} && echo same`).trim()).toBe("same");
    // ext4 and xfs mark fallocate(ZERO_RANGE) extents unwritten; written zeros would be plain data
    if (tmpFs === "ext2/ext3" || tmpFs === "xfs") expect(unwrittenBytes(backing)).toBeGreaterThanOrEqual(60 * MiB);
    else console.log(`${dir} is on ${tmpFs}: the extent check is left out`);
  });
});
