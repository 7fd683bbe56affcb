// The progress line's rate and ETA count from each run's first progress (a
// receiver's session), not from when the process started.
import { describe, expect, test } from "bun:test";
import { makeReporter } from "../../src/ui/progress.ts";

function fakeReporter() {
  let t = 0;
  const lines: string[] = [];
  const r = makeReporter({ tty: false, now: () => t, write: (s) => lines.push(s.trimEnd()) });
  return { r, lines, at: (ms: number) => (t = ms) };
}

describe("progress clock", () => {
  test("a session that starts 2 minutes after the receiver shows its own rate and ETA", () => {
    const { r, lines, at } = fakeReporter();
    at(120_000);
    r.progress({ phase: "receive", bytes: 0, total: 1_000_000_000 });
    at(125_000);
    r.progress({ phase: "receive", bytes: 500_000_000, total: 1_000_000_000 });
    expect(lines[lines.length - 1]).toMatch(/  100 MB\/s  ETA 5s$/);
  });

  test("the next session (after stop) and a resumed one (starting part-way) count from their own start", () => {
    const { r, lines, at } = fakeReporter();
    at(0);
    r.progress({ phase: "receive", bytes: 0, total: 100_000_000 });
    at(10_000);
    r.progress({ phase: "receive", bytes: 100_000_000, total: 100_000_000 });
    r.stop();
    at(300_000);
    r.progress({ phase: "receive", bytes: 600_000_000, total: 1_000_000_000 }); // resumed at 600 MB
    at(310_000);
    r.progress({ phase: "receive", bytes: 800_000_000, total: 1_000_000_000 });
    expect(lines[lines.length - 1]).toMatch(/  20 MB\/s  ETA 10s$/);
  });

  test("on a basic terminal (the ASCII spinner) too, the next session counts from its own start", () => {
    const saved = process.env.TERM;
    process.env.TERM = "vt100";
    try {
      let t = 0;
      const out: string[] = [];
      const r = makeReporter({ tty: true, now: () => t, write: (s) => out.push(s) });
      r.progress({ phase: "receive", bytes: 0, total: 100_000_000 });
      t = 10_000;
      r.progress({ phase: "receive", bytes: 100_000_000, total: 100_000_000 });
      r.stop();
      t = 300_000;
      r.progress({ phase: "receive", bytes: 600_000_000, total: 1_000_000_000 });
      t = 310_000;
      r.progress({ phase: "receive", bytes: 800_000_000, total: 1_000_000_000 });
      r.info("redraw"); // draws the current line again
      r.stop();
      const last = out.filter((s) => s.includes("receive")).pop() ?? "";
      expect(last).toMatch(/^\r[|/\\-] receive .*  20 MB\/s  ETA 10s/);
    } finally {
      if (saved === undefined) delete process.env.TERM;
      else process.env.TERM = saved;
    }
  });

  test("plain lines only: one line per event, no terminal control characters", () => {
    const { r, lines, at } = fakeReporter();
    r.info("session started");
    at(6000);
    r.progress({ phase: "receive", bytes: 1, total: 2 });
    r.stop();
    for (const l of lines) expect(l).not.toMatch(/[\x00-\x1f]/);
    expect(lines[0]).toBe("session started");
  });
});
