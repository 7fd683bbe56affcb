// Every path under /sys, /dev and /proc goes through here, so tests can point
// tbbackup at an emulated tree with TBBACKUP_SYSROOT (default /).
import * as path from "node:path";

export function sysPath(p: string): string {
  const root = process.env.TBBACKUP_SYSROOT;
  if (!root || root === "/") return p;
  return path.join(root, p);
}
