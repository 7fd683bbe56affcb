// Starts test/emulator/tbemu.py (emulated hosts joined by cables: A-B, or a
// keeper K with several peers, --topology A-K,B-K) on a
// temporary mount point for a test file, and stops it. Tests that need it use
// test.skipIf(!fuseAvailable()) so a machine without FUSE reports them skipped.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { tempDir, waitFor } from "../helpers/cli.ts";

export const EMU = path.join(import.meta.dir, "tbemu.py");
export const PYTHON = "/usr/bin/python3";

export function fuseAvailable(): boolean {
  return fs.existsSync("/dev/fuse") && fs.existsSync(PYTHON) && process.getuid?.() === 0;
}

export interface Emu {
  mount: string;
  root: string;
  /** sysroot of host A, B (or K, C ... with --topology) */
  host(h: HostName): string;
  ctl(cmd: string): void;
  state(): EmuState;
  stop(): Promise<void>;
  proc: Subprocess;
}

/** a host of the emulator: A and B, and the ones --topology adds (K, C, ...) */
export type HostName = string;

export interface EmuDev {
  name: string;
  service: string;
  index: number;
  in_hopid: number;
  out_hopid: number;
  users: number;
  opens: number;
  attached: boolean;
  /** the peer XDomain it is attached to (e.g. 0-3), or null */
  xdomain: string | null;
  /** data bytes delivered to it, ever */
  rx_bytes: number;
}
export interface EmuPeer {
  peer: HostName;
  plugged: boolean;
  probed: boolean;
  stream_service: string | null;
  announced: Record<string, number[]>;
}
export interface EmuState {
  plugged: boolean;
  flips_done: number;
  /** per host; stream_service and announced are those of its first cable, peers has every cable by XDomain name */
  hosts: Record<HostName, { groups: Record<string, string[]>; devs: Record<string, EmuDev>; stream_service: string | null; announced: Record<string, number[]>; peers: Record<string, EmuPeer>; stats: Record<string, number> }>;
}

export async function startEmu(args: string[] = []): Promise<Emu> {
  const root = tempDir("tbemu-");
  const mount = path.join(root, "mnt");
  fs.mkdirSync(mount);
  const proc = Bun.spawn([PYTHON, EMU, mount, ...args], { stdout: "pipe", stderr: "inherit" });
  await waitFor(() => fs.existsSync(path.join(mount, "ctl")), "the emulator's mount", 10000);
  return {
    mount,
    root,
    proc,
    host: (h) => path.join(mount, h),
    ctl: (cmd) => fs.writeFileSync(path.join(mount, "ctl"), cmd + "\n"),
    state: () => JSON.parse(fs.readFileSync(path.join(mount, "state"), "utf8")) as EmuState,
    stop: async () => {
      Bun.spawnSync(["umount", "-l", mount]);
      proc.kill();
      await proc.exited;
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

export const cfgDir = (emu: Emu, h: HostName) => path.join(emu.host(h), "sys/kernel/config/thunderbolt/stream");
