// The initramfs integration's shell code: runs the shell tests under
// test/shell (the mkinitcpio install hooks in a harness, the boot-time runner
// and hooks with fakes) and shellcheck over every shell file. The real boot is
// scripts/e2e-vm.sh (npm run test:e2e).
import { describe, expect, test } from "bun:test";
import { readdirSync, existsSync } from "node:fs";
import * as path from "node:path";

const ROOT = path.resolve(import.meta.dir, "..");
const SHELL_DIR = path.join(ROOT, "test/shell");

function sh(cmd: string[]): { code: number; out: string } {
  const p = Bun.spawnSync(cmd, { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" }, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, out: p.stdout.toString() + p.stderr.toString() };
}

describe("initramfs shell tests", () => {
  for (const file of readdirSync(SHELL_DIR).filter((f) => f.endsWith(".test.sh")).sort()) {
    test(file, () => {
      const r = sh(["bash", path.join(SHELL_DIR, file)]);
      const failures = r.out.split("\n").filter((l) => /^not ok|^#/.test(l));
      // the failing assertions, with their details, are the message
      expect({ code: r.code, failures }).toEqual({ code: 0, failures: [] });
      expect(r.out).toMatch(/^1\.\.\d+$/m);
    }, 60_000);
  }
});

const SHELL_FILES = [
  "dracut/95tbbackup/module-setup.sh",
  "dracut/95tbbackup/tbbackup.sh",
  "dracut/95tbbackup/tbbackup-boot.sh",
  "dracut/95tbbackup/tbbackup-cmdline.sh",
  "dracut/95tbbackup/tbbackup-job.sh",
  "mkinitcpio/install/tbbackup",
  "mkinitcpio/install/sd-tbbackup",
  "mkinitcpio/hooks/tbbackup",
  "mkinitcpio/tbbackup-systemd.sh",
  "scripts/install.sh",
  "scripts/e2e-vm.sh",
  ...readdirSync(SHELL_DIR).filter((f) => f.endsWith(".sh")).map((f) => `test/shell/${f}`),
];
// what runs at boot must be POSIX sh (dash, busybox ash)
const BOOT_TIME = [
  "dracut/95tbbackup/tbbackup.sh",
  "dracut/95tbbackup/tbbackup-boot.sh",
  "dracut/95tbbackup/tbbackup-cmdline.sh",
  "dracut/95tbbackup/tbbackup-job.sh",
  "mkinitcpio/hooks/tbbackup",
  "mkinitcpio/tbbackup-systemd.sh",
  "scripts/install.sh",
];
const hasShellcheck = sh(["sh", "-c", "command -v shellcheck"]).code === 0;

describe("shellcheck", () => {
  test("every listed shell file exists", () => {
    expect(SHELL_FILES.filter((f) => !existsSync(path.join(ROOT, f)))).toEqual([]);
  });
  // .ci/run installs shellcheck; elsewhere `apt-get install shellcheck`
  test.skipIf(!hasShellcheck)("all shell code passes shellcheck (needs shellcheck: scripts/test-deps.sh installs it)", () => {
    const r = sh(["shellcheck", "-x", ...SHELL_FILES]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  }, 60_000);
  test.skipIf(!hasShellcheck)("boot-time scripts pass shellcheck as POSIX sh (needs shellcheck)", () => {
    const r = sh(["shellcheck", "-s", "sh", ...BOOT_TIME]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  }, 60_000);
});
