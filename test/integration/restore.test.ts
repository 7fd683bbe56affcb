// restore with the compiled binary: from a stored image and from a receiver
// over each transport, into a sparse file and onto a loop device; refusals
// and corruption. The restored ext4 image must pass e2fsck -fn.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { startProxy } from "../helpers/proxy.ts";
import { MsgType } from "../../src/protocol/messages.ts";
import { BIN, cleanup, finish, storeBackup, makeExt4Image, run, sha256File, sh, start, tempDir, waitFor, oneLine, ptyPair } from "../helpers/cli.ts";

let dir: string;
let img: string;
let imgSha: string;
let store: string;
let backupDir: string;
let backupId: string;

beforeAll(async () => {
  dir = tempDir();
  img = makeExt4Image(dir, 24);
  imgSha = sha256File(img);
  store = path.join(dir, "store");
  await storeBackup(img, store, path.join(dir, "p.sock"));
  const rows = JSON.parse((await run(["list", "--out", store, "--json"])).stdout);
  backupId = rows[0].id;
  backupDir = path.join(store, backupId);
});
afterAll(() => cleanup(dir));

function fsckClean(file: string): void {
  sh(`e2fsck -fn ${JSON.stringify(file)}`); // throws unless exit 0
}

describe("restore from a stored image (--from)", () => {
  test("into a new sparse file: byte-exact, sparse, fsck clean", async () => {
    const out = path.join(dir, "from-file.img");
    const r = await run(["restore", out, "--from", backupDir, "--yes", "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.verified).toBe(true);
    expect(sha256File(out)).toBe(imgSha);
    // zero chunks were skipped: far fewer blocks allocated than the apparent size
    expect(fs.statSync(out).blocks * 512).toBeLessThan(fs.statSync(out).size / 2);
    fsckClean(out);
  });

  test("from the image.zst path, over an existing file (replaced), --no-verify says so", async () => {
    const out = path.join(dir, "existing.img");
    fs.writeFileSync(out, Buffer.alloc(50 * 1024 * 1024, 0xaa)); // larger and non-zero: must not leak through
    const r = await run(["restore", out, "--from", path.join(backupDir, "image.zst"), "--yes", "--no-verify"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("NOT read back");
    expect(sha256File(out)).toBe(imgSha);
  });

  test("onto a loop device: byte-exact, fsck clean; one that holds data and is another disk needs --force with --yes", async () => {
    const backing = path.join(dir, "loop-backing.img");
    sh(`truncate -s 32M ${backing}`);
    sh(`head -c 32M /dev/urandom > ${backing}`); // old content that zero chunks must overwrite
    const before = sha256File(backing);
    const loop = sh(`losetup -f --show ${backing}`).trim();
    try {
      // a mistyped device name (or disks renamed at boot) is not overwritten unasked
      const refused = await run(["restore", loop, "--from", backupDir, "--yes"]);
      expect(refused.code).toBe(12);
      expect(oneLine(refused.stderr)).toMatch(/holds data and is not the disk backup .* was made from.*add --force/);
      expect(sha256File(backing)).toBe(before);
      const r = await run(["restore", loop, "--from", backupDir, "--yes", "--force"]);
      expect(r.code).toBe(0);
      const size = fs.statSync(img).size;
      expect(sh(`head -c ${size} ${loop} | sha256sum`).split(" ")[0]).toBe(imgSha);
      sh(`head -c ${size} ${loop} > ${dir}/loop-copy.img`);
      fsckClean(`${dir}/loop-copy.img`);
    } finally {
      sh(`losetup -d ${loop}`);
    }
  });
});

test("frames of every size restore byte for byte, from a file and over unix: (tiny ones travel in buffers of their own, the others in slots the workers share)", async () => {
  const d = tempDir();
  try {
    // chunks that compress to a few bytes, incompressible ones, zeros, text, and a short last chunk
    const mixed = path.join(d, "mixed.img");
    const rnd = new Uint8Array(3 << 20);
    for (let i = 0; i < rnd.length; i += 65536) crypto.getRandomValues(rnd.subarray(i, i + 65536));
    fs.writeFileSync(mixed, Buffer.concat([Buffer.alloc(4 << 20, 0xab), rnd, Buffer.alloc(2 << 20), Buffer.from("hello world ".repeat(300000)).subarray(0, (2 << 20) + 12345)]));
    const want = sha256File(mixed);
    const st = path.join(d, "store");
    await storeBackup(mixed, st, path.join(d, "p.sock"));
    const id = JSON.parse((await run(["list", "--out", st, "--json"])).stdout)[0].id;
    const t1 = path.join(d, "t1.img");
    const r1 = await run(["restore", t1, "--from", path.join(st, id), "--yes", "--no-verify"]);
    expect(r1.code).toBe(0);
    expect(sha256File(t1)).toBe(want);
    const sock = path.join(d, "r.sock");
    const recv = start(["receive", "--out", st, "--stream", `unix:${sock}`, "--once", "--allow-restore"]);
    await waitFor(() => fs.existsSync(sock), "receiver socket");
    const t2 = path.join(d, "t2.img");
    const r2 = await run(["restore", t2, "--stream", `unix:${sock}`, "--backup", id, "--yes"]);
    expect(r2.code).toBe(0);
    expect((await finish(recv)).code).toBe(0);
    expect(sha256File(t2)).toBe(want);
  } finally {
    cleanup(d);
  }
});

describe("restore from a receiver (--stream)", () => {
  const transports: { name: string; setup: (d: string) => Promise<[string, string, () => void]> }[] = [
    { name: "unix", setup: async (d) => [`unix:${d}/r.sock`, `unix:${d}/r.sock`, () => {}] },
    { name: "tcp", setup: async () => { const p = 20000 + Math.floor(Math.random() * 20000); return [`tcp:${p}`, `tcp:127.0.0.1:${p}`, () => {}]; } },
    {
      name: "device (pty pair)",
      setup: async (d) => {
        const pty = await ptyPair(d);
        return [pty.a, pty.b, pty.close];
      },
    },
  ];
  for (const t of transports) {
    test(`${t.name}: list, then restore --backup ID byte-exact`, async () => {
      const d = tempDir();
      const [rs, cs, teardown] = await t.setup(d);
      try {
        // a tcp: receiver needs a key (or --insecure): both sides get the same key file
        const key = rs.startsWith("tcp:") ? ["--key-file", path.join(d, "tcp.key")] : [];
        if (key.length) sh(`${JSON.stringify(BIN)} keygen ${JSON.stringify(key[1])}`);
        const recv = start(["receive", "--out", store, "--stream", rs, "--allow-restore", ...key]);
        try {
          const l = await run(["list", "--stream", cs, "--json", ...key]);
          expect(l.code).toBe(0);
          expect(JSON.parse(l.stdout).map((b: { id: string }) => b.id)).toContain(backupId);
          const out = path.join(d, "restored.img");
          const r = await run(["restore", out, "--stream", cs, "--backup", backupId, "--yes", ...key]);
          expect(r.code).toBe(0);
          expect(sha256File(out)).toBe(imgSha);
          fsckClean(out);
        } finally {
          recv.kill();
          await recv.exited;
        }
      } finally {
        teardown();
        cleanup(d);
      }
    });
  }

  test("stdio (-): restore through socat EXEC", async () => {
    const out = path.join(dir, "stdio.img");
    const r = Bun.spawnSync(["socat", `EXEC:${BIN} receive --out ${store} --stream - --once --allow-restore`, `EXEC:${BIN} restore ${out} --stream - --backup ${backupId} --yes`], { stderr: "pipe" });
    expect(r.exitCode).toBe(0);
    expect(sha256File(out)).toBe(imgSha);
  });

  test("without --backup: the newest backup of the matching disk is chosen (same path, this host)", async () => {
    // The backup was made from `img`; restoring onto that same path matches by host + path + size.
    const copy = path.join(dir, "match", path.basename(img));
    fs.mkdirSync(path.dirname(copy));
    const sock = path.join(dir, "m.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore", "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    // target path must equal the original's path for a file: restore onto img itself after moving it aside
    fs.renameSync(img, copy);
    try {
      const r = await run(["restore", img, "--stream", `unix:${sock}`, "--yes", "--json"]);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).id).toBe(backupId);
      expect(sha256File(img)).toBe(imgSha);
    } finally {
      fs.rmSync(img, { force: true });
      fs.renameSync(copy, img);
      await finish(recv);
    }
  });
});

describe("the receiver's last word", () => {
  // RESTORE_END says nothing the offer did not; damaged, or lost as the last
  // frame (a device wakes no reader for it), it must not fail a good restore.
  for (const [what, plan] of [
    ["damaged", { type: MsgType.RESTORE_END }],
    ["lost", { type: MsgType.RESTORE_END, drop: true }],
  ] as const) {
    test(`RESTORE_END ${what} on the way: the restore completes and verifies, exit 0`, async () => {
      const sock = path.join(dir, `end-${what}.sock`);
      const front = path.join(dir, `end-${what}-front.sock`);
      const out = path.join(dir, `end-${what}.img`);
      const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore", "--once"]);
      await waitFor(() => fs.existsSync(sock), "socket");
      const proxy = await startProxy(front, sock, { damageBack: plan });
      try {
        const r = await run(["restore", out, "--stream", `unix:${front}`, "--backup", backupId, "--yes"]);
        expect(r.stderr).not.toMatch(/incomplete/);
        expect(r.code).toBe(0);
        expect(sha256File(out)).toBe(imgSha);
        expect((await finish(recv)).code).toBe(0);
      } finally {
        proxy.close();
      }
    });
  }
});

describe("the receiver's first word", () => {
  // On a lossy link the HELLO_ACK can be lost (and the offer with it: the
  // restorer reads none before its HELLO_ACK); the restorer repeats its HELLO,
  // and the receiver, waiting for the go-ahead, answers it with both again.
  test("HELLO_ACK lost on the way: the repeated HELLO gets the offer again, the restore completes and verifies, both exit 0", async () => {
    const sock = path.join(dir, "ack-lost.sock");
    const front = path.join(dir, "ack-lost-front.sock");
    const out = path.join(dir, "ack-lost.img");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore", "--once", "--idle", "20"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const proxy = await startProxy(front, sock, { damageBack: { type: MsgType.HELLO_ACK, drop: true } });
    try {
      // (--wait 10: without an answer to its repeated HELLO the restorer gives up after 10 s)
      const r = await run(["restore", out, "--stream", `unix:${front}`, "--backup", backupId, "--yes", "--wait", "10"]);
      expect(r.stderr).not.toMatch(/no answer/);
      expect(r.code).toBe(0);
      expect(sha256File(out)).toBe(imgSha);
      const rv = await finish(recv);
      expect(rv.stderr).toMatch(/restore of .* done/);
      expect(rv.code).toBe(0);
    } finally {
      proxy.close();
      recv.kill();
    }
  });
});

// cgroup v1 blkio throttling (this machine's kind has it) slows a loop device's reads
const BLKIO = "/sys/fs/cgroup/blkio";

describe("a slow read-back", () => {
  test.skipIf(!fs.existsSync(`${BLKIO}/blkio.throttle.read_bps_device`))(
    "takes longer than the receiver's --idle: the restorer keeps it informed, both exit 0 (needs cgroup v1 blkio throttling to slow the read-back)",
    async () => {
      const backing = path.join(dir, "slow-backing.img");
      sh(`truncate -s 32M ${backing}`);
      const loop = sh(`losetup -f --show ${backing}`).trim();
      const group = fs.mkdtempSync(`${BLKIO}/tbbackup-test-`);
      const sock = path.join(dir, "slow.sock");
      try {
        // 2 MiB/s: reading 24 MiB back takes about 12 s, the receiver waits 5 s at a time
        fs.writeFileSync(`${group}/blkio.throttle.read_bps_device`, `${sh(`lsblk -dno MAJ:MIN ${loop}`).trim()} 2097152`);
        const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore", "--once", "--idle", "5"]);
        await waitFor(() => fs.existsSync(sock), "socket");
        const r = Bun.spawnSync(["sh", "-c", `echo $$ > ${group}/cgroup.procs && exec ${BIN} restore ${loop} --stream unix:${sock} --backup ${backupId} --yes`], { stderr: "pipe" });
        const rv = await finish(recv);
        expect(r.stderr.toString()).toMatch(/read back and verified/);
        expect(r.exitCode).toBe(0);
        expect(rv.stderr).toMatch(/restore of .* done/);
        expect(rv.code).toBe(0);
      } finally {
        sh(`losetup -d ${loop}`);
        fs.rmdirSync(group);
      }
    },
    60000,
  );
});

describe("the read-back proves the target", () => {
  test.skipIf(!fs.existsSync(`${BLKIO}/blkio.throttle.read_bps_device`))(
    "a target changed under the restore, after it was written and before it was read back: exit 10, the read-back names the mismatch (needs cgroup v1 blkio throttling to slow the read-back)",
    async () => {
      const backing = path.join(dir, "changed-backing.img");
      sh(`truncate -s 32M ${backing}`);
      const loop = sh(`losetup -f --show ${backing}`).trim();
      const group = fs.mkdtempSync(`${BLKIO}/tbbackup-test-`);
      try {
        // 2 MiB/s: the read-back of 24 MiB takes about 12 s, ample time to change its last MiB first
        fs.writeFileSync(`${group}/blkio.throttle.read_bps_device`, `${sh(`lsblk -dno MAJ:MIN ${loop}`).trim()} 2097152`);
        const p = Bun.spawn(["sh", "-c", `echo $$ > ${group}/cgroup.procs && exec ${BIN} restore ${loop} --from ${backupDir} --yes`], { stdout: "ignore", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
        let stderr = "";
        const reader = p.stderr.getReader();
        while (!stderr.includes("reading the target back")) {
          const { value, done } = await reader.read();
          if (done) break;
          stderr += new TextDecoder().decode(value);
        }
        expect(stderr).toContain("reading the target back");
        // what a failing disk or another program could do: the last MiB is not what was written
        sh(`head -c 1048576 /dev/urandom | dd of=${loop} bs=1M seek=23 oflag=direct conv=notrunc status=none`);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          stderr += new TextDecoder().decode(value);
        }
        expect(await p.exited).toBe(10);
        expect(oneLine(stderr)).toMatch(/read-back of .* makes integrity root [0-9a-f]{64}, the backup says [0-9a-f]{64}/);
      } finally {
        sh(`losetup -d ${loop}`);
        fs.rmdirSync(group);
      }
    },
    60000,
  );
});

describe("refusals", () => {
  test("no matching backup: candidates listed, exit 11, nothing created", async () => {
    const sock = path.join(dir, "nm.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore", "--once"]);
    await waitFor(() => fs.existsSync(sock), "socket");
    const out = path.join(dir, "nomatch.img");
    const r = await run(["restore", out, "--stream", `unix:${sock}`, "--yes"]);
    await finish(recv);
    expect(r.code).toBe(11);
    expect(r.stderr).toContain(`  ${backupId}`);
    expect(oneLine(r.stderr)).toMatch(/--backup ID/);
    expect(fs.existsSync(out)).toBe(false);
  });

  test("receiver without --allow-restore refuses list and restore: exit 12", async () => {
    const sock = path.join(dir, "na.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`]);
    try {
      await waitFor(() => fs.existsSync(sock), "socket");
      const l = await run(["list", "--stream", `unix:${sock}`]);
      expect(l.code).toBe(12);
      expect(oneLine(l.stderr)).toMatch(/--allow-restore/);
      const r = await run(["restore", path.join(dir, "na.img"), "--stream", `unix:${sock}`, "--backup", backupId, "--yes"]);
      expect(r.code).toBe(12);
      expect(fs.existsSync(path.join(dir, "na.img"))).toBe(false);
    } finally {
      recv.kill();
      await recv.exited;
    }
  });

  test("a backup ID that tries to leave DIR is refused: exit 11", async () => {
    const sock = path.join(dir, "esc.sock");
    const recv = start(["receive", "--out", store, "--stream", `unix:${sock}`, "--allow-restore"]);
    try {
      await waitFor(() => fs.existsSync(sock), "socket");
      fs.symlinkSync("/etc", path.join(store, backupId.split("/")[0]!, "etc-link"));
      for (const id of ["../../../etc", "/etc/passwd/x", `${backupId}/../../..`, `${backupId.split("/")[0]}/etc-link/x`]) {
        const r = await run(["restore", path.join(dir, "esc.img"), "--stream", `unix:${sock}`, "--backup", id, "--yes"]);
        expect(r.code).toBe(11);
        expect(oneLine(r.stderr)).toMatch(/no backup/);
      }
    } finally {
      recv.kill();
      await recv.exited;
    }
  });

  test("no --yes without a TTY: exit 12, target untouched", async () => {
    const out = path.join(dir, "keep.img");
    fs.writeFileSync(out, "precious");
    const r = await run(["restore", out, "--from", backupDir]);
    expect(r.code).toBe(12);
    expect(oneLine(r.stderr)).toMatch(/--yes.*not changed/);
    expect(fs.readFileSync(out, "utf8")).toBe("precious");
  });

  test("target too small (loop device): exit 13 before anything is written", async () => {
    const backing = path.join(dir, "small-backing.img");
    sh(`head -c 8M /dev/urandom > ${backing}`);
    const before = sha256File(backing);
    const loop = sh(`losetup -f --show ${backing}`).trim();
    try {
      const r = await run(["restore", loop, "--from", backupDir, "--yes"]);
      expect(r.code).toBe(13);
      expect(oneLine(r.stderr)).toMatch(/needs \d+.*at least as large/);
    } finally {
      sh(`losetup -d ${loop}`);
    }
    expect(sha256File(backing)).toBe(before);
  });

  test("a disk path under /dev that does not exist, or is a stray regular file, is refused: exit 13, nothing created", async () => {
    // a mistyped disk, or one whose driver is not loaded yet: never a RAM file that "restored fine"
    const missing = "/dev/tbbackup-test-missing";
    fs.rmSync(missing, { force: true });
    const r = await run(["restore", missing, "--from", backupDir, "--yes"]);
    expect(r.code).toBe(13);
    expect(oneLine(r.stderr)).toContain(`${missing} does not exist`);
    expect(fs.existsSync(missing)).toBe(false);
    const stray = "/dev/tbbackup-test-stray";
    fs.writeFileSync(stray, "left over");
    try {
      const s = await run(["restore", stray, "--from", backupDir, "--yes"]);
      expect(s.code).toBe(13);
      expect(oneLine(s.stderr)).toContain("is a regular file under /dev");
      expect(fs.readFileSync(stray, "utf8")).toBe("left over");
    } finally {
      fs.rmSync(stray, { force: true });
    }
    // /dev/shm is a tmpfs for files: an image there is fine
    const shm = "/dev/shm/tbbackup-test.img";
    try {
      expect((await run(["restore", shm, "--from", backupDir, "--yes"])).code).toBe(0);
      expect(sha256File(shm)).toBe(imgSha);
    } finally {
      fs.rmSync(shm, { force: true });
    }
  });

  test("a disk image given where a backup goes is 'not a backup' (exit 11), not a damaged one", async () => {
    for (const args of [["restore", path.join(dir, "never.img"), "--from", img, "--yes"], ["verify", img]]) {
      const r = await run(args);
      expect(r.code).toBe(11);
      expect(oneLine(r.stderr)).toMatch(/is not a tbbackup backup/);
    }
    expect(fs.existsSync(path.join(dir, "never.img"))).toBe(false);
  });

  test("a file of the backup itself as the target is refused: exit 13, the backup still verifies", async () => {
    const image = path.join(backupDir, "image.zst");
    const before = sha256File(image);
    for (const victim of [image, path.join(backupDir, "chunks.txt")]) {
      const r = await run(["restore", victim, "--from", backupDir, "--yes"]);
      expect(r.code).toBe(13);
      expect(oneLine(r.stderr)).toContain("is a file of the backup being restored");
    }
    expect(sha256File(image)).toBe(before);
    expect((await run(["verify", backupDir])).code).toBe(0);
  });

  test("without --backup, a file at the path of a backed-up disk does not match that disk's backup: exit 11, nothing created", async () => {
    // back up a loop device through a device node of our own, then take the node away
    const d = tempDir();
    const backing = path.join(d, "backing.img");
    sh(`cp ${img} ${backing}`);
    const loop = sh(`losetup -f --show ${backing}`).trim();
    const node = path.join(d, "disk");
    try {
      sh(`mknod ${node} b $(stat -c '%t %T' ${loop} | while read a b; do echo $((0x$a)) $((0x$b)); done)`);
      const blockStore = path.join(d, "store");
      await storeBackup(node, blockStore, path.join(d, "p.sock"));
      fs.rmSync(node);
      const sock = path.join(d, "r.sock");
      const recv = start(["receive", "--out", blockStore, "--stream", `unix:${sock}`, "--allow-restore", "--once"]);
      await waitFor(() => fs.existsSync(sock), "socket");
      const r = await run(["restore", node, "--stream", `unix:${sock}`, "--yes"]);
      await finish(recv);
      expect(r.code).toBe(11);
      expect(oneLine(r.stderr)).toMatch(/no complete backup of this host's disk .*--backup ID/);
      expect(fs.existsSync(node)).toBe(false);
    } finally {
      sh(`losetup -d ${loop}`);
      cleanup(d);
    }
  });

  test("mounted loop device is refused (O_EXCL): exit 13", async () => {
    const backing = path.join(dir, "mounted-backing.img");
    sh(`cp ${img} ${backing} && truncate -s 32M ${backing}`);
    const loop = sh(`losetup -f --show ${backing}`).trim();
    const mnt = path.join(dir, "mnt");
    fs.mkdirSync(mnt, { recursive: true });
    sh(`mount -o ro ${loop} ${mnt}`);
    try {
      const r = await run(["restore", loop, "--from", backupDir, "--yes", "--force"]);
      expect(r.code).toBe(13);
      expect(oneLine(r.stderr)).toMatch(/in use.*unmount/);
    } finally {
      sh(`umount ${mnt}`);
      sh(`losetup -d ${loop}`);
    }
  });
});

describe("a full target", () => {
  test("restore into a file system that fills up: exit 13, the line says the target is incomplete", async () => {
    const mnt = path.join(dir, "tiny");
    fs.mkdirSync(mnt);
    sh(`mount -t tmpfs -o size=2m tmpfs ${mnt}`);
    try {
      const r = await run(["restore", path.join(mnt, "out.img"), "--from", backupDir, "--yes"]);
      expect(r.code).toBe(13);
      // a new file would look complete (full size, sparse): it is removed
      expect(oneLine(r.stderr)).toMatch(/out\.img is full at byte \d+.*the unfinished .*out\.img was removed; free space/);
      expect(fs.existsSync(path.join(mnt, "out.img"))).toBe(false);
      expect(r.stderr).not.toContain("restore complete");
    } finally {
      sh(`umount ${mnt}`);
    }
  });
});

describe("corruption", () => {
  test("a flipped byte in a stored image: verify and restore fail and name the chunk", async () => {
    const bad = path.join(dir, "bad-backup");
    sh(`cp -r ${backupDir} ${bad}`);
    // damage the middle of a frame that holds data, found through the seek table
    const rows = fs.readFileSync(path.join(bad, "chunks.txt"), "utf8").trim().split("\n");
    expect(rows.length).toBeGreaterThan(4);
    const { ImageReader } = await import("../../src/store/image-reader.ts");
    const reader = ImageReader.open(path.join(bad, "image.zst"));
    const victim = reader.entries.findIndex((e, i) => i > 0 && e.compressedSize > 1000);
    const at = reader.offsets[victim]! + Math.floor(reader.entries[victim]!.compressedSize / 2);
    reader.close();
    const fd = fs.openSync(path.join(bad, "image.zst"), "r+");
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x10;
    fs.writeSync(fd, b, 0, 1, at);
    fs.closeSync(fd);

    const v = await run(["verify", bad]);
    expect(v.code).toBe(10);
    expect(oneLine(v.stderr)).toContain(`chunk ${victim} `);
    const out = path.join(dir, "from-bad.img");
    const r = await run(["restore", out, "--from", bad, "--yes"]);
    expect(r.code).toBe(8);
    expect(oneLine(r.stderr)).toMatch(new RegExp(`chunk ${victim} .*is bad.*the unfinished .*from-bad\\.img was removed`));
    expect(fs.existsSync(out)).toBe(false);
    // a file that was there before is left, and said to be incomplete
    fs.writeFileSync(out, "old content");
    const again = await run(["restore", out, "--from", bad, "--yes"]);
    expect(again.code).toBe(8);
    expect(oneLine(again.stderr)).toMatch(new RegExp(`chunk ${victim} .*is bad.*the target .*is now incomplete`));
    expect(fs.existsSync(out)).toBe(true);
  });

  test("a seek table that claims a chunk of 4 GiB: verify and restore --from say it is damaged, without allocating for the claim", async () => {
    const claim = path.join(dir, "claim-backup");
    sh(`cp -r ${backupDir} ${claim}`);
    const image = path.join(claim, "image.zst");
    const fd = fs.openSync(image, "r+");
    const size = fs.fstatSync(fd).size;
    const footer = Buffer.alloc(9);
    fs.readSync(fd, footer, 0, 9, size - 9);
    const frames = footer.readUInt32LE(0);
    const step = footer[4]! & 0x80 ? 12 : 8;
    const table = size - (8 + frames * step + 9);
    const raw = Buffer.alloc(4);
    raw.writeUInt32LE(0xfffffff0);
    fs.writeSync(fd, raw, 0, 4, table + 8 + 4); // entry 0's raw size
    fs.closeSync(fd);
    // and the image alone (no manifest to cross-check its size: its chunk sizes come from its seek table only)
    const bare = path.join(dir, "bare-claim");
    fs.mkdirSync(bare);
    fs.copyFileSync(image, path.join(bare, "image.zst"));
    for (const args of [["verify", claim], ["verify", path.join(bare, "image.zst")], ["restore", path.join(dir, "claim.img"), "--from", claim, "--yes"]]) {
      const r = await run(args);
      // a clear error of its own (not the runtime's: a RangeError, an abort, out of memory)
      expect([8, 10, 11]).toContain(r.code!);
      expect(oneLine(r.stderr)).toMatch(/^tbbackup: .*(chunk 0|damaged|bad|cannot be trusted)/i);
      expect(r.stderr).not.toMatch(/RangeError|out of memory|panic/i);
    }
    expect(fs.existsSync(path.join(dir, "claim.img"))).toBe(false);
    // a manifest whose chunk size is damaged: restore --from says so before sizing anything by it
    const m = path.join(dir, "claim-manifest");
    sh(`cp -r ${backupDir} ${m}`);
    const manifest = JSON.parse(fs.readFileSync(path.join(m, "manifest.json"), "utf8"));
    fs.writeFileSync(path.join(m, "manifest.json"), JSON.stringify({ ...manifest, chunkSize: 2 ** 40 }));
    const r = await run(["restore", path.join(dir, "claim2.img"), "--from", m, "--yes"]);
    expect(r.code).toBe(10);
    expect(oneLine(r.stderr)).toMatch(/is damaged: chunks of 1099511627776 bytes/);
    expect(fs.existsSync(path.join(dir, "claim2.img"))).toBe(false);
  });
});
