// tbbackup mount / umount: a stored backup's file systems, mounted read-only
// under DIR/p1, DIR/p2, ... without restoring it. The chain, each link
// recorded in DIR/.tbbackup/state.json as soon as it exists so that umount
// (from any shell) can undo whatever was set up:
//   `tbbackup nbd` child on a private unix socket -> nbdfuse -r exposing the
//   export as a file -> losetup -r -P (read-only loop, partitions) ->
//   mount -o ro (+ noload / norecovery: no journal replay) per partition.
// This kernel-independent path is used because the nbd kernel module is often
// missing (and nbd-client with it). Nothing is ever written to the backup.
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { TbError, errnoText } from "../core/errors.ts";
import { ImageExport, findImageBackup } from "./export.ts";
import { mountPoints } from "../util/mounts.ts";

export const STATE_DIR = ".tbbackup";
export const STATE_FILE = "state.json";

export interface MountedPart {
  /** the partition's device (/dev/loop3p2) or the whole loop device */
  device: string;
  dir: string;
  fstype: string;
}

export interface MountState {
  format: 1;
  backup: string;
  id: string;
  server: { pid: number; socket: string; log: string } | null;
  fuse: { dir: string; file: string; pid: number | null } | null;
  loop: string | null;
  /** device nodes we had to make ourselves (no udev): removed at umount */
  nodes: string[];
  mounts: MountedPart[];
}

export interface PartResult {
  name: string;
  device: string;
  fstype: string | null;
  dir: string | null;
  /** why it was not mounted */
  reason?: string;
}

export interface MountResult {
  dir: string;
  id: string;
  loop: string;
  parts: PartResult[];
}

/** How to run ourselves: the compiled binary, or bun with the script. */
function selfCommand(): string[] {
  const script = process.argv[1];
  return !script || script.startsWith("/$bunfs/") || script === process.execPath ? [process.execPath] : [process.execPath, script];
}

function run(cmd: string[]): { ok: boolean; out: string; err: string } {
  try {
    const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    return { ok: r.exitCode === 0, out: r.stdout.toString(), err: r.stderr.toString().trim() };
  } catch (e) {
    return { ok: false, out: "", err: `${cmd[0]}: ${(e as Error).message}` };
  }
}

function lastLine(s: string): string {
  return s.split("\n").filter(Boolean).pop()?.slice(0, 300) ?? "";
}

function firstLine(s: string): string {
  return s.split("\n").find(Boolean)?.replace(/^mount: /, "").slice(0, 300) ?? "";
}

/** Whether the running kernel has a file system driver (/proc/filesystems). */
function kernelHas(fstype: string): boolean {
  try {
    return fs.readFileSync("/proc/filesystems", "utf8").split("\n").some((l) => l.split("\t").pop() === fstype);
  } catch {
    return true; // cannot tell: let mount say
  }
}

function statePath(dir: string): string {
  return path.join(dir, STATE_DIR, STATE_FILE);
}

function saveState(dir: string, st: MountState): void {
  const p = statePath(dir);
  fs.writeFileSync(p + ".tmp", JSON.stringify(st, null, 2) + "\n", { mode: 0o600 });
  fs.renameSync(p + ".tmp", p);
}

export function readState(dir: string): MountState | null {
  let text: string;
  try {
    text = fs.readFileSync(statePath(dir), "utf8");
  } catch {
    return null;
  }
  try {
    const st = JSON.parse(text) as MountState;
    if (st.format !== 1 || !Array.isArray(st.mounts)) throw new Error("not a tbbackup mount state");
    return st;
  } catch (e) {
    throw new TbError("VERIFY", `${statePath(dir)} is unreadable: ${(e as Error).message}`, "undo the mounts by hand (umount, losetup -d, fusermount3 -u) and remove it");
  }
}

async function waitUntil(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await Bun.sleep(50);
  }
  return true;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

/** The partitions of a loop device, as the kernel lists them in sysfs. */
function partitions(loop: string): string[] {
  const name = path.basename(loop);
  try {
    return fs
      .readdirSync(`/sys/block/${name}`)
      .filter((e) => e.startsWith(name + "p") && /^\d+$/.test(e.slice(name.length + 1)))
      .sort((a, b) => Number(a.slice(name.length + 1)) - Number(b.slice(name.length + 1)));
  } catch {
    return [];
  }
}

/** Mount options that never write: no journal replay where the file system has one. */
export function mountOptions(fstype: string): string | null {
  switch (fstype) {
    case "ext2":
      return "ro";
    case "ext3":
    case "ext4":
      return "ro,noload";
    case "xfs":
      return "ro,norecovery";
    case "btrfs":
      return "ro,rescue=nologreplay";
    case "vfat":
    case "exfat":
    case "iso9660":
    case "squashfs":
    case "ntfs3":
      return "ro";
    case "ntfs":
      return "ro";
    default:
      return null;
  }
}

function notMountable(fstype: string | null): string {
  if (!fstype) return "no file system found on it";
  if (fstype === "swap") return "swap space";
  if (fstype === "LVM2_member") return "an LVM physical volume (activate it with vgchange -ay, read-only, if you need it)";
  if (fstype === "crypto_LUKS") return "LUKS-encrypted (open it with cryptsetup open --readonly)";
  return `file system type ${fstype} is not one tbbackup mounts`;
}

/**
 * Sets everything up under DIR; on failure undoes what was done and throws.
 * (A state.json left by a reboot is cleared by umount like any other.)
 */
export async function mountBackup(arg: string, dir: string, opts: { out?: string } = {}): Promise<MountResult> {
  const b = findImageBackup(arg, opts.out);
  const backup = path.resolve(b.dir);
  // opened here once too, so that a damaged backup gets its own error (and exit status) before anything is set up
  ImageExport.open(backup).close();
  for (const tool of ["nbdfuse", "losetup", "blkid", "mount", "fusermount3"])
    if (!Bun.which(tool))
      throw new TbError("USAGE", `${tool} is not installed`, tool === "nbdfuse" ? "install libnbd-bin (Debian) or libnbd (Fedora)" : tool === "fusermount3" ? "install fuse3" : `install the package that has ${tool}`);
  if (!fs.existsSync("/dev/fuse")) throw new TbError("USAGE", "/dev/fuse is missing", "load the fuse module (modprobe fuse)");
  const abs = path.resolve(dir);
  const work = path.join(abs, STATE_DIR);
  try {
    fs.mkdirSync(abs, { recursive: true });
    if (fs.existsSync(statePath(abs))) throw new TbError("BUSY", `${abs} already holds a mounted backup`, `run 'tbbackup umount ${dir}' first`);
    if (mountPoints().has(abs)) throw new TbError("USAGE", `${abs} is a mount point`, "give an empty directory");
    if (fs.readdirSync(abs).length > 0) throw new TbError("USAGE", `${abs} is not empty`, "give an empty directory (it gets p1, p2, ... for the partitions)");
    fs.mkdirSync(work, { mode: 0o700 });
  } catch (e) {
    if (e instanceof TbError) throw e;
    throw new TbError("DEST", `cannot use ${abs}: ${errnoText(e)}`, "give an empty directory you can write to");
  }
  let socket = path.join(work, "nbd.sock");
  if (Buffer.byteLength(socket) > 100) {
    const base = fs.existsSync("/run") ? "/run/tbbackup" : "/tmp";
    fs.mkdirSync(base, { recursive: true, mode: 0o700 });
    socket = path.join(fs.mkdtempSync(path.join(base, "mount-")), "nbd.sock");
  }
  const st: MountState = { format: 1, backup, id: b.manifest?.id ?? path.basename(backup), server: null, fuse: null, loop: null, nodes: [], mounts: [] };
  saveState(abs, st);
  try {
    // 1. the server, in the background, detached from this terminal
    const logPath = path.join(work, "nbd.log");
    const logFd = fs.openSync(logPath, "w", 0o600);
    const child = spawn(selfCommand()[0]!, [...selfCommand().slice(1), "nbd", backup, "--listen", `unix:${socket}`], { detached: true, stdio: ["ignore", logFd, logFd], env: { ...process.env, NO_COLOR: "1" } });
    fs.closeSync(logFd);
    child.unref();
    if (!child.pid) throw new TbError("INTERNAL", "cannot start the NBD server process", "please report this bug");
    st.server = { pid: child.pid, socket, log: logPath };
    saveState(abs, st);
    const serverLog = () => {
      try {
        return fs.readFileSync(logPath, "utf8");
      } catch {
        return "";
      }
    };
    const up = await waitUntil(() => serverLog().includes("serving ") || !alive(child.pid!), 30_000);
    if (!up || !serverLog().includes("serving ")) {
      const why = lastLine(serverLog()).replace(/^tbbackup: /, "");
      throw new TbError("VERIFY", `the NBD server for ${backup} did not start: ${why || "no message"}`, why ? "" : `run 'tbbackup nbd ${backup} --listen unix:/tmp/test.sock' to see why`);
    }
    // 2. nbdfuse: the export as a read-only file
    const fuseDir = path.join(work, "fuse");
    fs.mkdirSync(fuseDir, { mode: 0o700 });
    const file = path.join(fuseDir, "disk");
    const pidFile = path.join(work, "nbdfuse.pid");
    const fuseLog = fs.openSync(path.join(work, "nbdfuse.log"), "w", 0o600);
    const fuse = spawn("nbdfuse", ["-r", "-P", pidFile, file, `nbd+unix:///?socket=${socket}`], { detached: true, stdio: ["ignore", fuseLog, fuseLog] });
    fs.closeSync(fuseLog);
    fuse.unref();
    st.fuse = { dir: fuseDir, file, pid: fuse.pid ?? null };
    saveState(abs, st);
    const fuseUp = await waitUntil(() => fs.existsSync(pidFile) || (fuse.pid !== undefined && !alive(fuse.pid)), 30_000);
    if (!fuseUp || !fs.existsSync(pidFile)) {
      let why = "";
      try {
        why = lastLine(fs.readFileSync(path.join(work, "nbdfuse.log"), "utf8"));
      } catch {}
      throw new TbError("VERIFY", `nbdfuse could not expose the export${why ? `: ${why}` : ""}`, "check that FUSE works here (/dev/fuse, fuse3 installed)");
    }
    // 3. a read-only loop device with partitions
    const lo = run(["losetup", "-r", "-P", "--show", "-f", file]);
    if (!lo.ok || !lo.out.trim().startsWith("/dev/")) throw new TbError("VERIFY", `losetup failed: ${lastLine(lo.err) || "no device"}`, "loop devices are needed (modprobe loop); check 'losetup -l'");
    const loop = lo.out.trim();
    st.loop = loop;
    saveState(abs, st);
    let parts = partitions(loop);
    if (parts.length === 0) {
      run(["partx", "-a", loop]); // (a disk without a partition table: it says so and adds nothing)
      await Bun.sleep(200);
      parts = partitions(loop);
    }
    // device nodes: udev makes them; without udev (a container, an initramfs) we make them
    const devices: { name: string; device: string }[] = [];
    for (const p of parts) {
      const device = `/dev/${p}`;
      if (!(await waitUntil(() => fs.existsSync(device), 2000))) {
        const mm = fs.readFileSync(`/sys/block/${path.basename(loop)}/${p}/dev`, "utf8").trim();
        if (run(["mknod", "-m", "0600", device, "b", ...mm.split(":")]).ok) {
          st.nodes.push(device);
          saveState(abs, st);
        }
      }
      devices.push({ name: `p${p.slice(path.basename(loop).length + 1)}`, device });
    }
    // a disk without a partition table is mounted whole at DIR/p1
    if (devices.length === 0) devices.push({ name: "p1", device: loop });
    const results: PartResult[] = [];
    for (const d of devices) {
      const probe = run(["blkid", "-p", "-o", "export", d.device]);
      const fstype = /^TYPE=(.*)$/m.exec(probe.out)?.[1] ?? null;
      const options = fstype ? mountOptions(fstype) : null;
      if (!fstype || !options) {
        results.push({ name: d.name, device: d.device, fstype, dir: null, reason: notMountable(fstype) });
        continue;
      }
      const driver = fstype === "ntfs" ? "fuseblk" : fstype;
      if (!kernelHas(driver) && !(run(["modprobe", "-q", driver]).ok && kernelHas(driver))) {
        results.push({ name: d.name, device: d.device, fstype, dir: null, reason: `this kernel has no ${driver} driver (modprobe ${driver} failed)` });
        continue;
      }
      const target = path.join(abs, d.name);
      fs.mkdirSync(target);
      const m = run(["mount", "-t", fstype === "ntfs" ? "ntfs-3g" : fstype, "-o", options, d.device, target]);
      if (!m.ok) {
        fs.rmdirSync(target);
        results.push({ name: d.name, device: d.device, fstype, dir: null, reason: firstLine(m.err) || "mount failed" });
        continue;
      }
      st.mounts.push({ device: d.device, dir: target, fstype });
      saveState(abs, st);
      results.push({ name: d.name, device: d.device, fstype, dir: target });
    }
    return { dir: abs, id: st.id, loop, parts: results };
  } catch (e) {
    try {
      await teardown(abs, st);
    } catch {}
    throw e;
  }
}

/** Undoes a mount made by mountBackup; throws if DIR holds none. */
export async function umountBackup(dir: string): Promise<{ dir: string; id: string; unmounted: string[] }> {
  const abs = path.resolve(dir);
  const st = readState(abs);
  if (!st) throw new TbError("NOT_FOUND", `${abs} is not a backup mounted by 'tbbackup mount' (no ${STATE_DIR}/${STATE_FILE} in it)`, mountPoints().has(abs) ? "it is some other mount: use umount(8)" : "give the DIR that was passed to 'tbbackup mount'");
  const unmounted = st.mounts.map((m) => m.dir);
  await teardown(abs, st);
  return { dir: abs, id: st.id, unmounted };
}

/** Undoes each recorded step, newest first, saving progress so that a busy mount can be retried. */
async function teardown(abs: string, st: MountState): Promise<void> {
  const mounted = () => mountPoints();
  while (st.mounts.length) {
    const m = st.mounts[st.mounts.length - 1]!;
    if (mounted().has(m.dir)) {
      const r = run(["umount", m.dir]);
      if (!r.ok && mounted().has(m.dir)) {
        saveState(abs, st);
        throw new TbError("BUSY", `cannot unmount ${m.dir}: ${lastLine(r.err) || "busy"}`, `a process still uses it (see 'fuser -vm ${m.dir}'); close it and run 'tbbackup umount ${abs}' again`);
      }
    }
    try {
      fs.rmdirSync(m.dir);
    } catch {}
    st.mounts.pop();
    saveState(abs, st);
  }
  if (st.loop) {
    // only if it is still our loop device (its backing file is our FUSE file)
    let backing = "";
    try {
      backing = fs.readFileSync(`/sys/block/${path.basename(st.loop)}/loop/backing_file`, "utf8").trim();
    } catch {}
    if (st.fuse && backing === st.fuse.file) {
      run(["partx", "-d", st.loop]);
      const r = run(["losetup", "-d", st.loop]);
      if (!r.ok) {
        saveState(abs, st);
        throw new TbError("BUSY", `cannot detach ${st.loop}: ${lastLine(r.err)}`, `run 'tbbackup umount ${abs}' again in a moment`);
      }
      // detaching is asynchronous: the FUSE file stays open until the kernel lets go
      await waitUntil(() => {
        try {
          return fs.readFileSync(`/sys/block/${path.basename(st.loop!)}/loop/backing_file`, "utf8").trim() !== st.fuse!.file;
        } catch {
          return true;
        }
      }, 5000);
    }
    for (const n of st.nodes) fs.rmSync(n, { force: true });
    st.nodes = [];
    st.loop = null;
    saveState(abs, st);
  }
  if (st.fuse) {
    if (mounted().has(st.fuse.dir)) {
      let r = run(["fusermount3", "-u", st.fuse.dir]);
      for (let i = 0; !r.ok && i < 20 && mounted().has(st.fuse.dir); i++) {
        await Bun.sleep(250);
        r = run(["fusermount3", "-u", st.fuse.dir]);
      }
      if (!r.ok && mounted().has(st.fuse.dir)) {
        saveState(abs, st);
        throw new TbError("BUSY", `cannot unmount ${st.fuse.dir}: ${lastLine(r.err)}`, `run 'tbbackup umount ${abs}' again in a moment`);
      }
    }
    if (st.fuse.pid) await waitUntil(() => !alive(st.fuse!.pid!), 5000);
    st.fuse = null;
    saveState(abs, st);
  }
  if (st.server) {
    const pid = st.server.pid;
    // only our server: a recycled pid belongs to someone else
    let cmdline = "";
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    } catch {}
    if (cmdline.includes("nbd") && cmdline.includes(st.server.socket)) {
      process.kill(pid, "SIGTERM");
      if (!(await waitUntil(() => !alive(pid), 10_000))) process.kill(pid, "SIGKILL");
    }
    fs.rmSync(st.server.socket, { force: true });
    const sockDir = path.dirname(st.server.socket);
    if (sockDir !== path.join(abs, STATE_DIR)) fs.rmSync(sockDir, { recursive: true, force: true });
    st.server = null;
  }
  fs.rmSync(path.join(abs, STATE_DIR), { recursive: true, force: true });
}
