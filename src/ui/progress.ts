// Progress on stderr: an ora spinner on a TTY, plain periodic lines otherwise
// (serial console, journald, CI). NO_COLOR is honoured. A basic terminal (not
// UTF-8, or a vt100-like TERM) gets an ASCII spinner that redraws one plain
// line four times a second: ora's braille frames would not show there, and
// its synchronized-output sequences and 80 ms redraws cost a slow serial line
// more than the progress is worth.
import ora, { type Ora } from "ora";
import type { ProgressInfo, Reporter } from "../core/report.ts";
import { bytes, duration, rate, ratio } from "./format.ts";

const PLAIN_EVERY_MS = 5000;
const ASCII_FRAMES = ["|", "/", "-", "\\"];
const ASCII_EVERY_MS = 250;

/**
 * A terminal that should not get ora's spinner: a locale that is not UTF-8
 * (LC_ALL, else LC_CTYPE, else LANG; none set is the C locale), or a TERM
 * without Unicode glyphs or synchronized output: vt52/vt100/vt220/..., ansi,
 * and the kernel's own `linux` console (its default fonts have no braille,
 * and it does not know synchronized output).
 */
export function basicTerminal(env: NodeJS.ProcessEnv = process.env): boolean {
  const locale = env.LC_ALL || env.LC_CTYPE || env.LANG || "";
  if (!/utf-?8/i.test(locale)) return true;
  return /^(vt\d|ansi|linux)/.test(env.TERM ?? "");
}

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
  /** one clock per phase: a receiver serving two cables reports two sessions in turn */
  private bases = new Map<string, { t: number; bytes: number }>();
  constructor(private readonly now: () => number) {}

  line(p: ProgressInfo): string {
    const t = this.now();
    let base = this.bases.get(p.phase);
    if (!base || p.bytes < base.bytes) {
      base = { t, bytes: p.bytes };
      this.bases.set(p.phase, base);
      if (this.bases.size > MAX_PHASES) this.bases.delete(this.bases.keys().next().value!);
    }
    return progressLine(p, (t - base.t) / 1000, p.bytes - base.bytes);
  }

  reset(): void {
    this.bases.clear();
  }
}

/** phases whose rate is kept at once (sessions served at the same time) */
const MAX_PHASES = 16;

export function makeReporter(opts: ReporterOptions = {}): Reporter {
  const now = opts.now ?? Date.now;
  const write = opts.write ?? ((text: string) => void process.stderr.write(text));
  const clock = new RateClock(now);
  // A serial console often reports 0 columns (stty size: 0 0): ora's redraw then
  // never ends, so plain lines there too.
  const tty = opts.tty ?? (process.stderr.isTTY === true && process.env.TERM !== "dumb" && (process.stderr.columns ?? 0) > 0);
  if (opts.quiet) return { progress() {}, info() {}, stop() {} };
  if (tty && basicTerminal()) {
    let text: string | null = null;
    let frame = 0;
    let timer: ReturnType<typeof setInterval> | undefined;
    const draw = () => {
      if (text === null) return;
      const line = `${ASCII_FRAMES[frame++ % ASCII_FRAMES.length]} ${text}`;
      // one line, never wrapped: \r, the text, then erase to the end of the line
      write(`\r${line.slice(0, Math.max(1, (process.stderr.columns ?? 80) - 1))}\x1b[K`);
    };
    const clear = () => {
      if (text !== null) write("\r\x1b[K");
    };
    return {
      progress(p) {
        const first = text === null;
        text = clock.line(p);
        if (!first) return;
        draw();
        timer = setInterval(draw, ASCII_EVERY_MS);
        timer.unref?.();
      },
      info(message) {
        clear();
        write(message + "\n");
        draw();
      },
      stop() {
        clearInterval(timer);
        clear();
        text = null;
        clock.reset();
      },
    };
  }
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
  // Plain lines (serial console, journald, a pipe): one line per event, a
  // progress line every 5 s (one per phase that moved: sessions served at once), no spinner.
  let last = now();
  let printed = false;
  let lastLine: string | null = null;
  const moved = new Map<string, string>();
  return {
    progress(p) {
      lastLine = clock.line(p);
      moved.set(p.phase, lastLine);
      const t = now();
      if (t - last >= PLAIN_EVERY_MS) {
        last = t;
        printed = true;
        for (const line of moved.values()) write(line + "\n");
        moved.clear();
      }
    },
    info(message) {
      write(message + "\n");
    },
    stop() {
      if (lastLine && printed) write(lastLine + "\n");
      lastLine = null;
      printed = false;
      moved.clear();
      clock.reset();
    },
  };
}
