// Every path under /sys, /dev and /proc, and /etc/machine-id, goes through
// here, so tests can point tbbackup at an emulated tree with TBBACKUP_SYSROOT
// (default /). It gives no more than a root user has anyway: the identities
// read there only choose a default backup, and --backup chooses any.
import * as fs from "node:fs";
import * as path from "node:path";

export function sysPath(p: string): string {
  const root = process.env.TBBACKUP_SYSROOT;
  if (!root || root === "/") return p;
  return path.join(root, p);
}

/** True for a path inside an emulated tree (its /dev/tbstreamN are FUSE files, not character devices). */
export function inEmulatedTree(p: string): boolean {
  const root = process.env.TBBACKUP_SYSROOT;
  return !!root && root !== "/" && path.resolve(p).startsWith(path.resolve(root) + "/");
}

/** The sysfs directory of a block device node, e.g. /sys/class/block/nvme0n1. */
export function blockSysDir(devPath: string): string | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(devPath);
  } catch {
    return null;
  }
  if (!st.isBlockDevice()) return null;
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const byDev = sysPath(`/sys/dev/block/${major}:${minor}`);
  try {
    return fs.realpathSync(byDev);
  } catch {
    const name = path.basename(fs.realpathSync(devPath));
    const d = sysPath(`/sys/class/block/${name}`);
    return fs.existsSync(d) ? d : null;
  }
}
