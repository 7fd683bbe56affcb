// Sets up the USB4/Thunderbolt stream by itself (no --stream): makes sure the
// kernel pieces are there, finds the peer, makes the ConfigFS group and pairs
// it the way the driver does (README "Thunderbolt stream setup": exactly one side allocates HopIDs,
// the other adopts the announced pair at attach), waits for /dev/tbstreamN,
// and tears down exactly what it created. Every wait has a deadline. Never
// prints: progress goes through onWait.
import * as fs from "node:fs";
import * as path from "node:path";
import { TbError, errnoText, isErrno } from "../errors.ts";
import { sysPath } from "../util/sysroot.ts";
import { describeHolders, holdersOf } from "../util/holders.ts";
import { BUS_DIR, CONFIGFS_DIR, STREAM_CFG_DIR, devicePathFor, exists, readInt, readTopology, streamServiceOf, type Peer } from "./sysfs.ts";

export const GROUP_NAME = "tbbackup";
/** thunderbolt_net takes HopID 8; those who run both start at 10 (PLATFORM-NOTES). */
export const FIRST_HOPID = 10;
const POLL_MS = 250;
const DEVICE_NODE_WAIT_MS = 10_000;

export interface AutoStreamConfig {
  /** receive allocates HopIDs; push, list and restore adopt the announced ones */
  mode: "allocate" | "adopt";
  /** how long to wait for a peer and for its announcement */
  waitMs: number;
  /** unique_id, device name or XDomain id of the peer to use */
  peer?: string;
  hopids?: [number, number];
  ringSize?: number;
  throttling?: number;
  /** progress lines ("waiting for ..."), each said once */
  onWait?: (message: string) => void;
}

export function parseHopIds(text: string): [number, number] {
  const m = /^(\d+):(\d+)$/.exec(text.trim());
  if (!m) throw new TbError("USAGE", `--hopids '${text}' is not IN:OUT`, "give two HopIDs from 8 up, e.g. --hopids 10:10");
  const pair: [number, number] = [Number(m[1]), Number(m[2])];
  if (pair[0] < 8 || pair[1] < 8) throw new TbError("USAGE", `--hopids ${text}: HopIDs start at 8`, "give two HopIDs from 8 up (10 and above leave room for thunderbolt_net)");
  return pair;
}

interface Found {
  peer: Peer;
  service: string;
}

function run(cmd: string, args: string[]): { found: boolean; ok: boolean; message: string } {
  const exe = Bun.which(cmd, { PATH: process.env.PATH || "/usr/sbin:/usr/bin:/sbin:/bin" });
  if (!exe) return { found: false, ok: false, message: `${cmd} not found` };
  try {
    const r = Bun.spawnSync([exe, ...args], { stdout: "pipe", stderr: "pipe", timeout: 30_000 });
    const text = (r.stderr.toString() || r.stdout.toString()).trim().split("\n").pop() ?? "";
    return { found: true, ok: r.exitCode === 0, message: text || `exit status ${r.exitCode}` };
  } catch (e) {
    return { found: true, ok: false, message: errnoText(e) };
  }
}

function isEmptyDir(p: string): boolean {
  try {
    return fs.readdirSync(p).length === 0;
  } catch {
    return false;
  }
}

/**
 * Makes sure /sys/bus/thunderbolt and the stream ConfigFS directory exist:
 * modprobe thunderbolt_stream, mount configfs; otherwise says what is missing.
 */
export function ensurePlatform(): void {
  const bus = sysPath(BUS_DIR);
  const cfg = sysPath(CONFIGFS_DIR);
  const streamCfg = sysPath(STREAM_CFG_DIR);
  if (exists(bus) && exists(streamCfg)) return;
  const modprobe = run("modprobe", ["thunderbolt_stream"]);
  let mount: ReturnType<typeof run> | null = null;
  if (!exists(streamCfg) && exists(cfg) && isEmptyDir(cfg)) mount = run("mount", ["-t", "configfs", "configfs", cfg]);
  if (exists(bus) && exists(streamCfg)) return;

  const noStream = "this kernel lacks CONFIG_USB4_STREAM (Linux 7.2+) or the module is not in this initramfs";
  if (!exists(bus))
    throw new TbError(
      "STREAM_SETUP",
      `no Thunderbolt/USB4 support: ${BUS_DIR} is missing (${modprobe.found ? `modprobe thunderbolt_stream: ${modprobe.message}` : "modprobe is not available"})`,
      `load the thunderbolt and thunderbolt_stream modules (${noStream}), or pass --stream`,
    );
  if (!exists(cfg))
    throw new TbError("STREAM_SETUP", `configfs is not available: ${CONFIGFS_DIR} is missing`, "use a kernel with CONFIGFS_FS (needed by CONFIG_USB4_STREAM), or pass --stream");
  if (isEmptyDir(cfg))
    throw new TbError(
      "STREAM_SETUP",
      `configfs is not mounted at ${CONFIGFS_DIR}${mount ? ` (mount: ${mount.message})` : ""}`,
      `mount it with 'mount -t configfs configfs ${CONFIGFS_DIR}' and run again, or pass --stream`,
    );
  if (!modprobe.found)
    throw new TbError(
      "STREAM_SETUP",
      `the thunderbolt_stream module is not loaded (${STREAM_CFG_DIR} is missing) and modprobe is not available`,
      `add thunderbolt_stream to the initramfs or load it (${noStream}), or pass --stream`,
    );
  throw new TbError(
    "STREAM_SETUP",
    `the thunderbolt_stream module is not available (${STREAM_CFG_DIR} is missing; modprobe thunderbolt_stream: ${modprobe.message})`,
    `${noStream}; use such a kernel or pass --stream`,
  );
}

export function matches(p: Peer, sel: string): boolean {
  const s = sel.toLowerCase();
  return [p.uniqueId, p.deviceName, p.id].some((v) => v !== null && v.toLowerCase() === s);
}

export function label(p: Peer): string {
  return `${p.deviceName ?? p.id} (${p.id}, unique_id ${p.uniqueId ?? "?"})`;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits for exactly one peer that offers a stream service. */
async function findPeer(cfg: AutoStreamConfig, deadline: number): Promise<Found> {
  let said = "";
  const say = (m: string) => {
    if (m !== said) cfg.onWait?.(m);
    said = m;
  };
  for (;;) {
    const { peers } = readTopology();
    const streaming = peers.filter((p) => streamServiceOf(p));
    const chosen = cfg.peer ? streaming.filter((p) => matches(p, cfg.peer!)) : streaming;
    if (chosen.length === 1) return { peer: chosen[0]!, service: streamServiceOf(chosen[0]!)!.id };
    if (chosen.length > 1)
      throw new TbError("USAGE", `${chosen.length} Thunderbolt peers offer a stream: ${chosen.map(label).join("; ")}`, "choose one with --peer ID (its unique_id or device name)");
    if (cfg.peer && peers.length) say(`waiting for peer '${cfg.peer}' (connected: ${peers.map(label).join("; ")})`);
    else if (peers.length) say(`peer ${label(peers[0]!)} is connected but offers no stream service yet: start tbbackup on the other machine (it loads thunderbolt_stream)`);
    else say("waiting for a Thunderbolt peer: plug the USB4/Thunderbolt cable and start tbbackup on the other machine");
    if (Date.now() >= deadline) {
      const what = peers.length ? "no connected Thunderbolt peer offers a stream service" : "no Thunderbolt peer appeared";
      throw new TbError("TIMEOUT", `${what} within ${Math.round(cfg.waitMs / 1000)} s`, "plug the cable, start tbbackup on the other machine (receive there), or raise --wait");
    }
    await sleep(POLL_MS);
  }
}

function writeAttr(dir: string, name: string, value: number): void {
  fs.writeFileSync(path.join(dir, name), `${value}\n`);
}

function attrError(group: string, name: string, value: number, e: unknown, peer: Peer): TbError {
  const where = path.join(group, name);
  if (isErrno(e, "EBUSY")) return new TbError("BUSY", `${where}: ${value} is taken or the device is open (EBUSY)`, "choose other --hopids, or stop the process using the stream");
  if (isErrno(e, "EINVAL")) return new TbError("STREAM_SETUP", `${where}: ${value} is out of range (EINVAL)`, `HopIDs go from 8 to the peer's maximum (${peer.maxHopId ?? "see tbbackup streams"}); ring size 32..4096; throttling 0..16776960`);
  if (isErrno(e, "ENOSPC")) return new TbError("STREAM_SETUP", `${where}: no free HopID left (ENOSPC)`, "remove unused stream groups (tbbackup streams lists them)");
  return new TbError("STREAM_SETUP", `cannot write ${value} to ${where}: ${errnoText(e)}`, "check the stream's ConfigFS group");
}

/** One automatic stream setup; teardown() removes what setup() created. */
export class AutoStream {
  private serviceDir: string | null = null;
  private groupDir: string | null = null;
  private createdService = false;
  private createdGroup = false;
  /** attributes of a group we found and changed, with their old values */
  private restore = new Map<string, number>();
  peer: Peer | null = null;
  device: string | null = null;

  constructor(readonly cfg: AutoStreamConfig) {}

  async setup(): Promise<string> {
    const cfg = this.cfg;
    const deadline = Date.now() + cfg.waitMs;
    ensurePlatform();
    const found = await findPeer(cfg, deadline);
    this.peer = found.peer;
    this.serviceDir = path.join(sysPath(STREAM_CFG_DIR), found.service);
    if (!exists(this.serviceDir)) {
      try {
        fs.mkdirSync(this.serviceDir);
        this.createdService = true;
      } catch (e) {
        if (!isErrno(e, "EEXIST")) throw new TbError("STREAM_SETUP", `cannot create ${this.serviceDir}: ${errnoText(e)}`, "run tbbackup as root");
      }
    }
    this.groupDir = path.join(this.serviceDir, GROUP_NAME);
    if (cfg.mode === "allocate") this.allocate(found.peer);
    else await this.adopt(found.peer, deadline);
    this.tune(found.peer);
    const index = readInt(this.groupDir, "index");
    if (index === null) throw new TbError("STREAM_SETUP", `${this.groupDir}/index is unreadable`, "check the thunderbolt_stream module");
    const dev = devicePathFor(index);
    const nodeDeadline = Date.now() + DEVICE_NODE_WAIT_MS;
    while (!exists(dev)) {
      if (Date.now() >= nodeDeadline) throw new TbError("STREAM_SETUP", `${dev} did not appear within ${DEVICE_NODE_WAIT_MS / 1000} s`, "check that udev (or devtmpfs) creates /dev/tbstream* nodes");
      await sleep(50);
    }
    this.device = dev;
    return dev;
  }

  /** A group we did not create: refuse it when another process has its device open. */
  private checkFoundGroup(): void {
    const index = readInt(this.groupDir!, "index");
    if (index === null) return;
    const dev = devicePathFor(index);
    const hs = holdersOf(dev);
    if (hs.length)
      throw new TbError("BUSY", `${dev} (stream group ${this.groupDir}) is already open by process ${describeHolders(hs)}`, "stop that process (or wait for it to finish) and run the command again");
  }

  private mkGroup(): void {
    try {
      fs.mkdirSync(this.groupDir!);
      this.createdGroup = true;
    } catch (e) {
      throw new TbError("STREAM_SETUP", `cannot create ${this.groupDir}: ${errnoText(e)}`, "run tbbackup as root; tbbackup streams shows the configured groups");
    }
  }

  private rmGroup(): void {
    if (!this.createdGroup) return;
    try {
      fs.rmdirSync(this.groupDir!);
    } catch {}
    this.createdGroup = false;
  }

  private set(name: string, value: number, peer: Peer): void {
    const dir = this.groupDir!;
    const old = readInt(dir, name);
    try {
      writeAttr(dir, name, value);
    } catch (e) {
      throw attrError(dir, name, value, e, peer);
    }
    if (!this.createdGroup && old !== null && !this.restore.has(name)) this.restore.set(name, old);
  }

  /** receive: make (or reuse) the group and give it HopIDs before anyone opens it. */
  private allocate(peer: Peer): void {
    const dir = this.groupDir!;
    if (exists(dir)) this.checkFoundGroup();
    else this.mkGroup();
    const cur = [readInt(dir, "in_hopid") ?? 0, readInt(dir, "out_hopid") ?? 0] as const;
    if (this.cfg.hopids) {
      const [inH, outH] = this.cfg.hopids;
      if (cur[0] !== inH) this.set("in_hopid", inH, peer);
      if (cur[1] !== outH) this.set("out_hopid", outH, peer);
      return;
    }
    // Valid HopIDs already (a reused group, or adopted from a peer's earlier
    // announcement at mkdir): keep them, so a peer that adopted them stays paired.
    const ceiling = Math.max(FIRST_HOPID, peer.maxHopId ?? 64);
    if (cur[0] < 8) this.pick("in_hopid", ceiling, peer);
    if (cur[1] < 8) this.pick("out_hopid", ceiling, peer);
  }

  /** The first free HopID from 10 (EBUSY: next; EINVAL/ENOSPC: past the end), else -1 (automatic). */
  private pick(name: string, ceiling: number, peer: Peer): void {
    const dir = this.groupDir!;
    for (let h = FIRST_HOPID; h <= ceiling; h++) {
      try {
        this.set(name, h, peer);
        return;
      } catch (e) {
        if (e instanceof TbError && e.code === "BUSY") continue;
        break;
      }
    }
    this.set(name, -1, peer);
    if ((readInt(dir, name) ?? 0) < 8) throw new TbError("STREAM_SETUP", `${dir}/${name}: no HopID could be allocated`, "remove unused stream groups (tbbackup streams lists them), or pass --hopids");
  }

  /** push/list/restore: make the group and let the driver adopt the peer's announced HopIDs. */
  private async adopt(peer: Peer, deadline: number): Promise<void> {
    const dir = this.groupDir!;
    if (exists(dir)) {
      this.checkFoundGroup();
      if ((readInt(dir, "in_hopid") ?? 0) >= 8 && (readInt(dir, "out_hopid") ?? 0) >= 8) return;
      throw new TbError(
        "STREAM_SETUP",
        `the stream group ${dir} exists but has no HopIDs (it was made before the receiver announced the stream, and the driver never re-reads an announcement)`,
        `remove it (rmdir ${dir}) and run again; tbbackup then makes it itself`,
      );
    }
    let pause = 300;
    let said = false;
    for (;;) {
      this.mkGroup();
      if ((readInt(dir, "in_hopid") ?? 0) >= 8 && (readInt(dir, "out_hopid") ?? 0) >= 8) return;
      // Not announced yet: only rmdir + mkdir makes the driver look again.
      this.rmGroup();
      if (!said) this.cfg.onWait?.(`waiting for the receiver to announce the stream on ${label(peer)}: start 'tbbackup receive' on the other machine`);
      said = true;
      if (Date.now() + pause > deadline)
        throw new TbError("TIMEOUT", `the receiver did not announce the stream '${GROUP_NAME}' within ${Math.round(this.cfg.waitMs / 1000)} s`, "start 'tbbackup receive' on the other machine, or raise --wait");
      await sleep(pause);
      pause = Math.min(2000, Math.round(pause * 1.5));
    }
  }

  private tune(peer: Peer): void {
    const dir = this.groupDir!;
    if (this.cfg.ringSize !== undefined && readInt(dir, "ring_size") !== this.cfg.ringSize) this.set("ring_size", this.cfg.ringSize, peer);
    if (this.cfg.throttling !== undefined && readInt(dir, "throttling") !== this.cfg.throttling) this.set("throttling", this.cfg.throttling, peer);
  }

  /** Removes exactly what setup() created; puts back attributes it changed on a group it found. Idempotent, synchronous (runs in process 'exit'). */
  teardown(): void {
    if (this.groupDir) {
      if (this.createdGroup) this.rmGroup();
      else
        for (const [name, value] of this.restore) {
          try {
            writeAttr(this.groupDir, name, value);
          } catch {}
        }
      this.restore.clear();
    }
    if (this.createdService && this.serviceDir) {
      try {
        fs.rmdirSync(this.serviceDir);
      } catch {}
      this.createdService = false;
    }
  }
}
