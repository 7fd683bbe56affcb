// The machine that keeps backups: store access (0700/0600, the socket's mode),
// delete and prune, list's sizes and filters, the default store, SIGTERM.
// The compiled binary on real files; access is checked as the user nobody.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { BIN, ROOT, cleanup, existsSync, finish, listBackups, makeExt4Image, oneLine, randomImage, run, sh, sha256File, start, storeBackup, tempDir, waitFor, zstdSha } from "../helpers/cli.ts";

let dir: string;
let img: string;
beforeAll(() => {
  dir = tempDir("tbb-keeper-");
  // others may look into the test directory: what they cannot reach must be the store's own doing
  fs.chmodSync(dir, 0o755);
  img = makeExt4Image(dir, 8, "small.img");
});
afterAll(() => cleanup(dir));

const hasSetpriv = Bun.which("setpriv") !== null && Bun.which("socat") !== null && process.getuid?.() === 0;

/** Runs a command as the user nobody (group nogroup, no other groups). */
function asNobody(cmd: string[]): { code: number; stderr: string } {
  const r = Bun.spawnSync(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", ...cmd], { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stderr: r.stderr.toString() };
}

/** A store with one real backup; returns its root and the backup's ID. */
async function storeWithOne(name: string): Promise<{ out: string; id: string }> {
  const out = path.join(dir, name);
  await storeBackup(img, out, path.join(dir, `${name}.sock`));
  const rows = JSON.parse((await run(["list", "--out", out, "--json"])).stdout) as { id: string }[];
  expect(rows.length).toBe(1);
  return { out, id: rows[0]!.id };
}

/** Copies a stored backup to another timestamp (a backup of the same disk made then). */
function copyAs(out: string, id: string, name: string, disk?: string): string {
  const [host, d] = id.split("/");
  const to = path.join(out, host!, disk ?? d!, name);
  fs.mkdirSync(path.dirname(to), { recursive: true });
  sh(`cp -a ${JSON.stringify(path.join(out, id))} ${JSON.stringify(to)}`);
  return `${host}/${disk ?? d}/${name}`;
}

/** A partial backup as a receiver leaves one: manifest and a temporary image of `bytes`, last written `ageMs` ago. */
function makePartial(out: string, id: string, name: string, status: "partial" | "failed", ageMs: number, bytes = 1 << 20): string {
  const [host, d] = id.split("/");
  const p = path.join(out, host!, d!, name);
  fs.mkdirSync(p);
  const m = JSON.parse(fs.readFileSync(path.join(out, id, "manifest.json"), "utf8"));
  fs.writeFileSync(path.join(p, "manifest.json"), JSON.stringify({ ...m, status, storedBytes: 0, sha256: null, ...(status === "failed" ? { reason: "not resumable: test" } : {}) }));
  fs.writeFileSync(path.join(p, "image.zst.tmp"), Buffer.alloc(bytes, 7));
  const when = new Date(Date.now() - ageMs);
  for (const f of fs.readdirSync(p)) fs.utimesSync(path.join(p, f), when, when);
  fs.utimesSync(p, when, when);
  return `${host}/${d}/${name}`;
}

const DAY = 86400_000;

describe("access to the store", () => {
  let access: { out: string; id: string };
  test("backups are 0700 directories of 0600 files", async () => {
    access = await storeWithOne("access-store");
    const { out, id } = access;
    const [host, disk] = id.split("/");
    for (const d of [path.join(out, host!), path.join(out, host!, disk!), path.join(out, id)]) expect(fs.statSync(d).mode & 0o777).toBe(0o700);
    for (const f of fs.readdirSync(path.join(out, id))) expect(fs.statSync(path.join(out, id, f)).mode & 0o777).toBe(0o600);
  });

  test.skipIf(!hasSetpriv)("the user nobody cannot read a stored image or manifest (needs root, setpriv and socat)", () => {
    const { out, id } = access;
    // (an existing store's root keeps its own mode: made 0755 here, so only the backup's own modes stop nobody;
    // a store receive makes itself is 0700)
    fs.chmodSync(out, 0o755);
    expect(fs.statSync(out).mode & 0o005).toBe(0o005);
    const r = asNobody(["cat", path.join(out, id, "image.zst")]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Permission denied/);
    expect(asNobody(["cat", path.join(out, id, "manifest.json")]).code).not.toBe(0);
  });

  test.skipIf(!hasSetpriv)("a unix: socket is 0600: nobody cannot connect; with --group nogroup it is 0660 and nogroup can (needs root, setpriv and socat)", async () => {
    for (const group of [null, "nogroup"]) {
      const sock = path.join(dir, `access-${group ?? "own"}.sock`);
      const recv = start(["receive", "--out", path.join(dir, "access-sock-store"), "--stream", `unix:${sock}`, ...(group ? ["--group", group] : [])]);
      try {
        await waitFor(() => existsSync(sock), "receiver socket");
        const st = fs.statSync(sock);
        const c = asNobody(["socat", "-u", "/dev/null", `UNIX-CONNECT:${sock}`]);
        if (group) {
          expect(st.mode & 0o777).toBe(0o660);
          expect(st.gid).toBe(65534);
          expect(c.code).toBe(0);
        } else {
          expect(st.mode & 0o777).toBe(0o600);
          expect(c.code).not.toBe(0);
          expect(c.stderr).toMatch(/Permission denied/);
        }
      } finally {
        recv.kill("SIGINT");
        await finish(recv);
      }
    }
  });

  test("--group names a group that exists, and only with a unix: socket", async () => {
    const a = await run(["receive", "--out", path.join(dir, "g"), "--stream", `unix:${dir}/g.sock`, "--group", "no-such-group-here"]);
    expect(a.code).toBe(2);
    expect(oneLine(a.stderr)).toMatch(/no group named "no-such-group-here"/);
    const b = await run(["receive", "--out", path.join(dir, "g"), "--stream", "tcp:0", "--group", "nogroup"]);
    expect(b.code).toBe(2);
    expect(oneLine(b.stderr)).toMatch(/--group applies to a unix: socket only/);
  });
});

describe("prune and delete", () => {
  test("prune keeps what any rule keeps and says which; removes the rest, old and not-resumable partials and unfinished deletions", async () => {
    const { out, id } = await storeWithOne("prune-store");
    const [host, disk] = id.split("/");
    const names = ["20261206T100000Z", "20261206T080000Z", "20261205T230000Z", "20261204T120000Z", "20261115T120000Z", "20261001T120000Z"];
    const ids = names.map((n) => copyAs(out, id, n));
    fs.rmSync(path.join(out, id), { recursive: true });
    // another disk of the same host: its one backup is old, and is its newest
    const other = copyAs(out, ids[0]!, "20250101T000000Z", "other-disk");
    const oldPartial = makePartial(out, ids[0]!, "20261101T000000Z.partial", "partial", 10 * DAY);
    const failed = makePartial(out, ids[0]!, "20261203T000000Z.partial", "failed", 2 * DAY);
    const resumable = makePartial(out, ids[0]!, "20261202T000000Z.partial", "partial", 2 * DAY);
    const active = makePartial(out, ids[0]!, "20261206T110000Z.partial", "partial", 0);
    // a deletion that a crash cut short: out of every listing, finished by prune
    const leftover = path.join(out, host!, disk!, "20261130T000000Z.deleting");
    fs.mkdirSync(leftover);
    fs.writeFileSync(path.join(leftover, "image.zst"), "half");

    const listed = JSON.parse((await run(["list", "--out", out, "--json"])).stdout) as { id: string; status: string; storedBytes: number }[];
    expect(listed.map((r) => r.id)).not.toContain(`${host}/${disk}/20261130T000000Z.deleting`);
    expect(listed.find((r) => r.id === resumable)!.storedBytes).toBeGreaterThanOrEqual(1 << 20);

    const policy = ["--keep-last", "1", "--keep-daily", "2", "--keep-monthly", "2"];
    const dry = await run(["prune", "--out", out, ...policy, "--dry-run", "--json"]);
    expect(dry.code).toBe(0);
    const plan = JSON.parse(dry.stdout) as { dryRun: boolean; backups: { id: string; action: string; reasons: string[] }[] };
    const byId = new Map(plan.backups.map((b) => [b.id, b]));
    const action = (i: string) => byId.get(i)?.action;
    expect(byId.get(ids[0]!)!.reasons).toEqual(["newest", "last 1", "daily 2026-12-06", "monthly 2026-12"]);
    expect(action(ids[1]!)).toBe("remove");
    expect(byId.get(ids[2]!)!.reasons).toEqual(["daily 2026-12-05"]);
    expect(action(ids[3]!)).toBe("remove");
    expect(byId.get(ids[4]!)!.reasons).toEqual(["monthly 2026-11"]);
    expect(action(ids[5]!)).toBe("remove");
    expect(byId.get(other)!.reasons).toEqual(["newest", "last 1", "daily 2025-01-01", "monthly 2025-01"]);
    expect(action(oldPartial)).toBe("remove");
    expect(byId.get(failed)!.reasons[0]).toMatch(/not resumable/);
    expect(action(failed)).toBe("remove");
    expect(action(resumable)).toBe("keep");
    expect(byId.get(active)!.reasons[0]).toMatch(/under a minute ago/);
    expect(action(active)).toBe("keep");
    // a dry run changes nothing
    for (const i of [...ids, oldPartial, failed]) expect(existsSync(path.join(out, i))).toBe(true);
    expect(existsSync(leftover)).toBe(true);

    const real = await run(["prune", "--out", out, ...policy]);
    expect(real.code).toBe(0);
    expect(real.stdout).toMatch(/^removed 5 backups \(.*\), kept 6$/m);
    expect(real.stdout).toContain(`finished deleting ${host}/${disk}/20261130T000000Z.deleting`);
    const after = (JSON.parse((await run(["list", "--out", out, "--json"])).stdout) as { id: string }[]).map((r) => r.id).sort();
    expect(after).toEqual([ids[0]!, ids[2]!, ids[4]!, other, resumable, active].sort());
    expect(fs.readdirSync(path.join(out, host!, disk!)).filter((n) => n.endsWith(".deleting"))).toEqual([]);
    expect((await run(["verify", "--out", out])).code).toBe(0);

    // --disk: only that disk's backups are considered
    const onlyOther = JSON.parse((await run(["prune", "--out", out, "--keep-last", "1", "--disk", "other-disk", "--dry-run", "--json"])).stdout) as { backups: { id: string }[] };
    expect(onlyOther.backups.map((b) => b.id)).toEqual([other]);
  });

  test("prune needs a policy", async () => {
    const r = await run(["prune", "--out", dir]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/prune needs a policy/);
  });

  test("delete takes IDs strictly inside the store: unknown, escaping or symlinked IDs and busy partials are refused before anything goes", async () => {
    const { out, id } = await storeWithOne("delete-store");
    const [host, disk] = id.split("/");
    const second = copyAs(out, id, "20261001T120000Z");
    const outside = path.join(dir, "delete-outside");
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, "precious"), "keep me");
    fs.symlinkSync(outside, path.join(out, host!, disk!, "20260101T000000Z"));
    const active = makePartial(out, id, "20261206T110000Z.partial", "partial", 0);

    for (const [bad, code, msg] of [
      [`${host}/${disk}/20200101T000000Z`, 11, /no backup/],
      [`../x/${disk}`, 11, /no backup/],
      [`${host}/${disk}/20260101T000000Z`, 11, /no backup/],
      [active, 12, /a receiver may be writing it/],
    ] as const) {
      const r = await run(["delete", "--out", out, second, bad]);
      expect(r.code).toBe(code);
      expect(oneLine(r.stderr)).toMatch(msg);
    }
    // nothing went: not the good ID given with a bad one, not what the symlink points to
    expect(existsSync(path.join(out, second))).toBe(true);
    expect(fs.readFileSync(path.join(outside, "precious"), "utf8")).toBe("keep me");

    const ok = await run(["delete", "--out", out, second, id]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain(`deleted ${second}`);
    expect(existsSync(path.join(out, second))).toBe(false);
    expect(existsSync(path.join(out, id))).toBe(false);
    expect(fs.readdirSync(path.join(out, host!, disk!)).sort()).toEqual(["20260101T000000Z", "20261206T110000Z.partial"]);
  });

  // strace kills prune at its 3rd unlinkat: inside the removal of the first backup it removes, after one of its files went
  test.skipIf(Bun.which("strace") === null)("prune killed (SIGKILL) in the middle of removing a backup leaves every backup whole or gone, and the next prune finishes (needs strace)", async () => {
    const { out, id } = await storeWithOne("kill-store");
    const [host, disk] = id.split("/");
    for (let i = 0; i < 4; i++) copyAs(out, id, `20261101T00${String(i).padStart(2, "0")}00Z`);
    const killed = Bun.spawnSync(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat", "-e", "inject=unlinkat:signal=SIGKILL:when=3", BIN, "prune", "--out", out, "--keep-last", "1"], { stdout: "pipe", stderr: "pipe" });
    expect(killed.exitCode).not.toBe(0);
    // the kill came mid-removal: that backup is out of every listing, not listed half-deleted
    const names = fs.readdirSync(path.join(out, host!, disk!));
    expect(names.filter((n) => n.endsWith(".deleting")).length).toBe(1);
    const v = await run(["verify", "--out", out, "--json"]);
    expect(v.stdout).toMatch(/"bad": 0/);
    expect(v.code).toBe(0);
    expect((await listBackups(out)).length).toBe(names.length - 1);
    const again = await run(["prune", "--out", out, "--keep-last", "1"]);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/finished deleting .*\.deleting/);
    expect((await listBackups(out)).map((r) => r.id)).toEqual([`${host}/${disk}/${id.split("/")[2]}`]);
    expect(fs.readdirSync(path.join(out, host!, disk!)).length).toBe(1);
  });
});

describe("list", () => {
  test("a partial shows what its files take, --host/--disk filter, and a total line", async () => {
    const { out, id } = await storeWithOne("list-store");
    const partial = makePartial(out, id, "20261205T000000Z.partial", "partial", 2 * DAY, 3 << 20);
    copyAs(out, id, "20261001T120000Z", "second-disk");
    const t = await run(["list", "--out", out]);
    expect(t.code).toBe(0);
    const line = t.stdout.split("\n").find((l) => l.startsWith(partial))!;
    expect(line).toMatch(/partial\s+8\.0 MiB\s+3\.0 MiB/);
    const all = JSON.parse((await run(["list", "--out", out, "--json"])).stdout) as { storedBytes: number }[];
    const sum = all.reduce((n, r) => n + r.storedBytes, 0);
    expect(t.stdout).toMatch(new RegExp(`^total: 3 backups, ${(sum / 2 ** 20).toFixed(1)} MiB stored$`, "m"));
    const f = await run(["list", "--out", out, "--disk", "second-disk", "--json"]);
    expect((JSON.parse(f.stdout) as { id: string }[]).map((r) => r.id)).toEqual([`${id.split("/")[0]}/second-disk/20261001T120000Z`]);
    const h = await run(["list", "--out", out, "--host", "no-such-host"]);
    expect(h.stdout).toBe("no backups\n");
  });

  test("with neither --out nor --stream and no default store: one line saying what is needed (exit 2), no Thunderbolt setup", async () => {
    const r = await run(["list"], { env: { TBBACKUP_STORE: path.join(dir, "no-store-here") } });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/list needs --out DIR .* or --stream SPEC/);
    expect(r.stderr).not.toMatch(/modprobe|Thunderbolt/);
  });
});

describe("the default store (TBBACKUP_STORE here, /var/lib/tbbackup by default)", () => {
  test("receive without --out creates it 0700 and stores there; list, verify, prune and delete use it", async () => {
    const store = path.join(dir, "default-store");
    const env = { TBBACKUP_STORE: store };
    const sock = path.join(dir, "default.sock");
    const recv = start(["receive", "--stream", `unix:${sock}`, "--once"], { env });
    await waitFor(() => existsSync(sock), "receiver socket");
    const p = await run(["push", img, "--stream", `unix:${sock}`, "--json"]);
    expect(p.code).toBe(0);
    expect((await finish(recv)).code).toBe(0);
    expect(fs.statSync(store).mode & 0o777).toBe(0o700);
    const id = JSON.parse(p.stdout).id as string;
    expect(existsSync(path.join(store, id, "image.zst"))).toBe(true);
    const l = await run(["list"], { env });
    expect(l.code).toBe(0);
    expect(l.stdout).toContain(id);
    expect((await run(["verify"], { env })).stdout).toContain(`ok: ${id}`);
    expect((await run(["prune", "--keep-last", "1"], { env })).code).toBe(0);
    expect((await run(["delete", id], { env })).code).toBe(0);
    expect((await run(["list", "--json"], { env })).stdout.trim()).toBe("[]");
  });

  test("a default store whose parent is missing is not made on a guess", async () => {
    const env = { TBBACKUP_STORE: path.join(dir, "missing-parent", "store") };
    const r = await run(["receive", "--stream", `unix:${dir}/mp.sock`, "--once"], { env });
    expect(r.code).toBe(4);
    expect(oneLine(r.stderr)).toMatch(/cannot create the default store .*give --out DIR/);
    const pr = await run(["prune", "--keep-last", "1"], { env });
    expect(pr.code).toBe(2);
    expect(oneLine(pr.stderr)).toMatch(/no store at .* give --out DIR/);
  });
});

/** Forwards a unix socket's first `bytes` from the pusher, then holds the rest: a session that stays open mid-way. */
function stallingProxy(front: string, back: string, bytes: number): net.Server {
  const server = net.createServer((client) => {
    const upstream = net.connect(back);
    let sent = 0;
    client.on("data", (d: Buffer) => {
      if (sent >= bytes) return;
      const part = d.subarray(0, Math.max(0, bytes - sent));
      sent += part.length;
      upstream.write(part);
    });
    upstream.on("data", (d) => client.write(d));
    for (const s of [client, upstream]) s.on("error", () => {});
  });
  server.listen(front);
  return server;
}

describe("SIGTERM (systemctl stop)", () => {
  test("receive exits 0 between sessions", async () => {
    const sock = path.join(dir, "term-idle.sock");
    const recv = start(["receive", "--out", path.join(dir, "term-idle-store"), "--stream", `unix:${sock}`]);
    await waitFor(() => existsSync(sock), "receiver socket");
    recv.kill("SIGTERM");
    const r = await finish(recv);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^tbbackup: stopped \(SIGTERM\); receiver stopped between sessions; nothing was lost$/m);
  });

  test("receive exits 0 during a push; the partial is kept and the next push resumes it", async () => {
    const big = randomImage(dir, 8, "term.img");
    const out = path.join(dir, "term-store");
    const sock = path.join(dir, "term.sock");
    const front = path.join(dir, "term-front.sock");
    const recv = start(["receive", "--out", out, "--stream", `unix:${sock}`]);
    await waitFor(() => existsSync(sock), "receiver socket");
    const proxy = stallingProxy(front, sock, 3_000_000);
    const push = start(["push", big, "--stream", `unix:${front}`, "--chunk-size", "4K"]);
    const durable = () => {
      const p = fs.readdirSync(out, { recursive: true }).map(String).find((x) => x.endsWith(".partial"));
      try {
        return p ? (JSON.parse(fs.readFileSync(path.join(out, p, "manifest.json"), "utf8")).durable?.chunks ?? 0) : 0;
      } catch {
        return 0;
      }
    };
    try {
      await waitFor(() => durable() > 0, "durable progress in the partial");
      recv.kill("SIGTERM");
      const r = await finish(recv);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/stopped \(SIGTERM\); receiver stopped; the push in progress is kept as \.partial/);
    } finally {
      push.kill("SIGKILL");
      await push.exited;
      proxy.close();
    }
    const recv2 = start(["receive", "--out", out, "--stream", `unix:${sock}`, "--once"]);
    await waitFor(() => existsSync(sock), "receiver socket");
    const again = await run(["push", big, "--stream", `unix:${sock}`, "--chunk-size", "4K", "--json"]);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).resumedFrom).toBeGreaterThan(0);
    expect((await finish(recv2)).code).toBe(0);
    const id = JSON.parse(again.stdout).id as string;
    expect(zstdSha(path.join(out, id, "image.zst"))).toBe(sha256File(big));
  });

  test("other commands still exit 143 on SIGTERM", async () => {
    const p = start(["push", img, "--stream", `unix:${dir}/nobody-listens.sock`, "--wait", "60"]);
    await Bun.sleep(500);
    p.kill("SIGTERM");
    expect((await finish(p)).code).toBe(143);
  });
});

describe("--version", () => {
  test("--version and -V print what 'tbbackup version' prints", async () => {
    const v = await run(["version"]);
    for (const flag of ["--version", "-V"]) {
      const r = await run([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(v.stdout);
    }
  });
});

describe("the service", () => {
  const unit = path.join(ROOT, "systemd/tbbackup-receive.service");

  test.skipIf(Bun.which("systemd-analyze") === null)("systemd-analyze verify passes on the unit, with no warnings (needs systemd-analyze)", () => {
    const d = path.join(dir, "unit");
    fs.mkdirSync(d, { recursive: true });
    // the unit names the installed program; here, the one just built
    fs.writeFileSync(path.join(d, "tbbackup-receive.service"), fs.readFileSync(unit, "utf8").replaceAll("/usr/local/bin/tbbackup", BIN));
    const r = Bun.spawnSync(["systemd-analyze", "verify", path.join(d, "tbbackup-receive.service")], { stdout: "pipe", stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
  });

  test("the unit is hardened as documented and stops with exit 0; install.sh --systemd installs it and the udev rule", () => {
    const text = fs.readFileSync(unit, "utf8");
    for (const line of ["ProtectSystem=strict", "ReadWritePaths=/var/lib/tbbackup", "ReadWritePaths=-/sys/kernel/config", "StateDirectory=tbbackup", "StateDirectoryMode=0700", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "Restart=on-failure", "SyslogIdentifier=tbbackup"])
      expect(text.split("\n")).toContain(line);
    expect(text).toMatch(/^CapabilityBoundingSet=.*CAP_SYS_MODULE.*CAP_SYS_ADMIN/m);
    const dest = path.join(dir, "install-root");
    sh(`PREFIX=/opt/tb TBBACKUP_BIN=${JSON.stringify(BIN)} sh scripts/install.sh --systemd ${JSON.stringify(dest)}`, ROOT);
    const installed = fs.readFileSync(path.join(dest, "usr/lib/systemd/system/tbbackup-receive.service"), "utf8");
    expect(installed).toMatch(/^ExecStart=\/opt\/tb\/bin\/tbbackup receive$/m);
    const rule = fs.readFileSync(path.join(dest, "usr/lib/udev/rules.d/70-tbbackup.rules"), "utf8");
    expect(rule).toMatch(/SUBSYSTEM=="thunderbolt", ENV\{DEVTYPE\}=="thunderbolt_xdomain", RUN\{builtin\}\+="kmod load thunderbolt_stream"/);
  });
});
