// Shared by the command files: one place that maps errors to one stderr line
// and an exit status, and prints JSON results.
import { InvalidArgumentError } from "commander";
import { TbError, asTbError } from "../errors.ts";

export interface GlobalOpts {
  json?: boolean;
  quiet?: boolean;
}

function flushStdout(): Promise<void> {
  return new Promise((resolve) => {
    if (process.stdout.writableLength === 0) return resolve();
    process.stdout.write("", () => resolve());
  });
}

/**
 * For push and receive: JIT tier-up thresholds x10 on the main thread
 * (Bun.unsafe.setJITPolicy). They run their per-chunk JavaScript about a
 * thousand times per GiB, too few for the optimizing JITs' compile time (tens
 * of ms for their large functions) to pay for itself: the work is native
 * (zstd, the chunk digests). Measured on the bench image: 2.29 against 2.37 CPU-s for
 * push + receive. Not for every command: with it built in for all, the test
 * of the NBD server under a burst of 1000 connections failed in 2 of 8 runs
 * on a loaded machine (0 of 8 without); why was not found.
 */
export function fewerTierUps(): void {
  try {
    Bun.unsafe.setJITPolicy(10);
  } catch {
    // an older runtime without it: the normal policy
  }
}

export async function exit(code: number): Promise<never> {
  await flushStdout();
  process.exit(code);
}

/** Reports an outcome that is not a failure of the command itself (e.g. some files unreadable): one line, its exit code. */
export function exitWith(err: TbError): number {
  process.stderr.write(`tbbackup: ${err.oneLine()}\n`);
  return err.exitCode;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

/** Runs a command body; any error becomes one line on stderr and its exit status. */
export function action<A extends unknown[]>(body: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const cmd = args[args.length - 1] as { optsWithGlobals?: () => GlobalOpts } | undefined;
    const json = cmd?.optsWithGlobals?.().json === true;
    let code = 0;
    try {
      code = (await body(...args)) ?? 0;
    } catch (e) {
      const err = asTbError(e);
      for (const d of err.details) process.stderr.write(`  ${d}\n`);
      process.stderr.write(`tbbackup: ${err.oneLine()}\n`);
      // the boot runner shows it again in its result banner
      if (process.env.TBBACKUP_ERROR_FILE) {
        try {
          (await import("node:fs")).writeFileSync(process.env.TBBACKUP_ERROR_FILE, `${err.oneLine()}\n`);
        } catch {}
      }
      if (json) printJson({ ok: false, error: { code: err.code, message: err.message, hint: err.hint, exit: err.exitCode, ...(err.details.length ? { details: err.details } : {}) } });
      code = err.exitCode;
    }
    await exit(code);
  };
}

export function intOption(min: number, max: number) {
  return (v: string): number => {
    const n = /^\d+$/.test(v) ? Number(v) : NaN; // not 1e1, 0x10 or " 5"
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`must be a whole number from ${min} to ${max}`);
    return n;
  };
}

export function sizeOption(v: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(v);
  if (!m) throw new InvalidArgumentError("must be a size like 1M or 4194304");
  const mult = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[(m[2] ?? "").charAt(0).toUpperCase()] ?? 1;
  return Number(m[1]) * mult;
}

/**
 * Installs SIGINT/SIGTERM handlers that end the process with a clear line
 * (what it means, at that moment). Exit 130 and 143, unless `termExit` says
 * otherwise for SIGTERM (a service stopped by systemd has not failed).
 */
export function onInterrupt(what: string | (() => string), termExit = 143): void {
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      const code = sig === "SIGINT" ? 130 : termExit;
      const message = `${code === 0 ? "stopped" : "interrupted"} (${sig}); ${typeof what === "string" ? what : what()}`;
      process.stderr.write(`${process.stderr.isTTY ? "\n" : ""}tbbackup: ${message}\n`);
      // (not when stdout carries the stream)
      if (process.argv.includes("--json") && !process.argv.includes("-")) printJson(code === 0 ? { ok: true, stopped: sig, message } : { ok: false, error: { code: "INTERRUPTED", message, exit: code } });
      void exit(code);
    });
  }
}

/**
 * The store a command works on: --out DIR, else the default store (/var/lib/tbbackup,
 * or TBBACKUP_STORE). It must exist: a mistyped DIR is not an empty store.
 */
export async function existingStore(out: string | undefined, command: string): Promise<string> {
  const { defaultStore } = await import("../store/repository.ts");
  const fs = await import("node:fs");
  const dir = out ?? defaultStore();
  if (!fs.existsSync(dir))
    throw new TbError(
      out ? "NOT_FOUND" : "USAGE",
      out ? `${dir} does not exist` : `no store at ${dir} (the default)`,
      out ? "give the directory passed to 'tbbackup receive --out'" : `give --out DIR (the directory passed to 'tbbackup receive --out'), or set TBBACKUP_STORE; run 'tbbackup ${command} --help' for usage`,
    );
  return dir;
}
