// Every path under /sys, /dev and /proc, and /etc/machine-id, goes through
// here, so tests can point tbbackup at an emulated tree with TBBACKUP_SYSROOT
// (default /). It gives no more than a root user has anyway: the identities
// read there only choose a default backup, and --backup chooses any.
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
