// Progress on stderr: an ora spinner on a TTY, plain periodic lines otherwise
// (serial console, journald, CI). NO_COLOR is honoured.
import ora, { type Ora } from "ora";
import type { ProgressInfo, Reporter } from "../core/report.ts";
import { bytes, duration, rate, ratio } from "./format.ts";

const PLAIN_EVERY_MS = 5000;

/**
 * One progress line. The rate is over the last `elapsedS` seconds, in which
 * `sinceBytes` of p.bytes were done (the bytes before them, e.g. a resumed
 * prefix, were not).
 */
export function progressLine(p: ProgressInfo, elapsedS: number, sinceBytes = p.bytes): string {
  const parts = [p.phase, p.total > 0 ? `${bytes(p.bytes)} / ${bytes(p.total)} ${Math.floor((100 * p.bytes) / p.total)}%` : bytes(p.bytes)];
  if (p.files !== undefined) parts.push(`${p.files} files`);
  if (elapsedS > 0.2) {
    const r = sinceBytes / elapsedS;
    parts.push(rate(r));
    if (p.total > 0 && r > 0) parts.push(`ETA ${duration((p.total - p.bytes) / r)}`);
  }
  if (p.stored !== undefined && p.stored > 0) parts.push(`ratio ${ratio(p.bytes, p.stored)}`);
  return parts.join("  ");
}

export interface ReporterOptions {
  quiet?: boolean;
  /** for tests: the clock (ms) and where lines go, as if on a terminal or not */
  now?: () => number;
  write?: (text: string) => void;
  tty?: boolean;
}

/**
 * The rate's clock: it starts at the first progress of a run (a push, a
 * receiver's session, a read-back), not when the process started, and starts
 * again after stop(), when the phase changes or when the count goes back.
 */
class RateClock {
  private base: { t: number; bytes: number; phase: string } | null = null;
  constructor(private readonly now: () => number) {}

  line(p: ProgressInfo): string {
    const t = this.now();
    if (!this.base || this.base.phase !== p.phase || p.bytes < this.base.bytes) this.base = { t, bytes: p.bytes, phase: p.phase };
    return progressLine(p, (t - this.base.t) / 1000, p.bytes - this.base.bytes);
  }

  reset(): void {
    this.base = null;
  }
}

export function makeReporter(opts: ReporterOptions = {}): Reporter {
  const now = opts.now ?? Date.now;
  const write = opts.write ?? ((text: string) => void process.stderr.write(text));
  const clock = new RateClock(now);
  // A serial console often reports 0 columns (stty size: 0 0): ora's redraw then
  // never ends, so plain lines there too.
  const tty = opts.tty ?? (process.stderr.isTTY === true && process.env.TERM !== "dumb" && (process.stderr.columns ?? 0) > 0);
  if (opts.quiet) return { progress() {}, info() {}, stop() {} };
  if (tty) {
    let spinner: Ora | null = null;
    return {
      progress(p) {
        const text = clock.line(p);
        // discardStdin: false, or ora puts the terminal in raw mode and Ctrl-C stops nothing
        if (!spinner) spinner = ora({ text, stream: process.stderr, color: process.env.NO_COLOR ? false : "cyan", discardStdin: false } as never).start();
        else spinner.text = text;
      },
      info(message) {
        if (spinner) {
          spinner.clear();
          write(message + "\n");
          spinner.render();
        } else write(message + "\n");
      },
      stop() {
        spinner?.stop();
        spinner = null;
        clock.reset();
      },
    };
  }
  // Plain lines (serial console, journald, a pipe): one line per event, a progress line every 5 s, no spinner.
  let last = now();
  let printed = false;
  let lastLine: string | null = null;
  return {
    progress(p) {
      lastLine = clock.line(p);
      const t = now();
      if (t - last >= PLAIN_EVERY_MS) {
        last = t;
        printed = true;
        write(lastLine + "\n");
      }
    },
    info(message) {
      write(message + "\n");
    },
    stop() {
      if (lastLine && printed) write(lastLine + "\n");
      lastLine = null;
      printed = false;
      clock.reset();
    },
  };
}
