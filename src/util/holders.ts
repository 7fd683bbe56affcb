// Which processes hold a file open: a scan of /proc/*/fd (under
// TBBACKUP_SYSROOT). Used to refuse a stream device another process holds
// (README "Thunderbolt stream setup": the device is not exclusive; a second opener steals frames).
import * as fs from "node:fs";
import * as path from "node:path";
import { sysPath } from "./sysroot.ts";

export interface Holder {
  pid: number;
  command: string;
}

function commandOf(procDir: string): string {
  try {
    const cmd = fs.readFileSync(path.join(procDir, "cmdline"), "latin1").split("\0").filter(Boolean).join(" ");
    if (cmd) return cmd.length > 80 ? cmd.slice(0, 77) + "..." : cmd;
  } catch {}
  try {
    return fs.readFileSync(path.join(procDir, "comm"), "latin1").trim();
  } catch {
    return "?";
  }
}

/** Processes (other than `exceptPid`) with an fd open on `file`. */
export function holdersOf(file: string, exceptPid: number = process.pid): Holder[] {
  let target: string;
  try {
    target = fs.realpathSync(file);
  } catch {
    return [];
  }
  const proc = sysPath("/proc");
  let pids: string[];
  try {
    pids = fs.readdirSync(proc).filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
  const found: Holder[] = [];
  for (const pid of pids) {
    if (Number(pid) === exceptPid) continue;
    const fdDir = path.join(proc, pid, "fd");
    let fds: string[];
    try {
      fds = fs.readdirSync(fdDir);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = fs.readlinkSync(path.join(fdDir, fd));
      } catch {
        continue;
      }
      if (link === target) {
        found.push({ pid: Number(pid), command: commandOf(path.join(proc, pid)) });
        break;
      }
    }
  }
  return found;
}

export function describeHolders(hs: Holder[]): string {
  return hs.map((h) => `${h.pid} (${h.command})`).join(", ");
}
