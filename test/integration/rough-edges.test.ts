// Rough edges a new user hit (issue #16): the compiled binary as a user runs
// it, on real terminals (script(1)), real loop disks with mounted file systems,
// and a rescue system without a machine identity (a private mount namespace).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { BIN, cleanup, makeExt4Image, run, storeBackup, tempDir, waitFor } from "../helpers/cli.ts";

let dir: string;
let img: string;
let store: string;
let backupDir: string;

beforeAll(async () => {
  dir = tempDir("tbb-rough-");
  img = makeExt4Image(dir, 16);
  store = path.join(dir, "store");
  await storeBackup(img, store, path.join(dir, "p.sock"));
  const rows = JSON.parse((await run(["list", "--out", store, "--json"])).stdout);
  backupDir = path.join(store, rows[0].id);
});
afterAll(() => cleanup(dir));


const hasScript = Bun.spawnSync(["sh", "-c", "command -v script"]).exitCode === 0;

/** Runs `cmd` on a real terminal (script(1)); returns what it wrote and its exit status. */
function onTerminal(cmd: string, env: Record<string, string> = {}) {
  const p = Bun.spawn(["script", "-qfec", cmd, "/dev/null"], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, TERM: "xterm", ...env } });
  let seen = "";
  let bytes = 0;
  const reader = (async () => {
    for await (const c of p.stdout) {
      bytes += c.length;
      seen += new TextDecoder().decode(c);
    }
  })();
  const killer = setTimeout(() => p.kill("SIGKILL"), 60_000);
  return {
    p,
    output: () => seen,
    bytes: () => bytes,
    type(keys: string) {
      p.stdin.write(keys);
      p.stdin.flush();
    },
    async done(): Promise<{ code: number; out: string; bytes: number }> {
      const code = await p.exited;
      clearTimeout(killer);
      await reader;
      return { code, out: seen, bytes };
    },
  };
}

describe("restore's question on a terminal", () => {
  for (const [key, name, code, words] of [
    ["\x03", "Ctrl-C", 130, /interrupted \(SIGINT\); nothing was written: the target .* was not changed/],
    ["\x04", "Ctrl-D", 12, /restore cancelled \(end of input at the question\); the target was not changed/],
  ] as const) {
    test.skipIf(!hasScript)(`${name} at the question: exit ${code}, the target not changed (needs script(1))`, async () => {
      const target = path.join(dir, `ask-${code}.img`);
      fs.writeFileSync(target, "precious");
      const t = onTerminal(`stty cols 80 rows 24; ${BIN} restore ${target} --from ${backupDir}`);
      await waitFor(() => /Type "yes" to overwrite/.test(t.output()), "the question");
      t.type(key);
      const r = await t.done();
      expect(r.code).toBe(code);
      expect(r.out).toMatch(words);
      expect(r.out).not.toMatch(/AbortError|report this bug/);
      expect(fs.readFileSync(target, "utf8")).toBe("precious");
    }, 90000);
  }
});
