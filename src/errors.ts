// Error codes with a human hint. Every layer throws TbError; src/cli maps the code
// to an exit status and prints one line. Exit statuses are part of the contract
// (README, "Exit codes").

export const ErrorCodes = {
  USAGE: { exit: 2, what: "bad command line" },
  SOURCE: { exit: 3, what: "source missing or unreadable" },
  DEST: { exit: 4, what: "destination not writable" },
  NO_SPACE: { exit: 5, what: "no space left on the receiver" },
  PROTOCOL: { exit: 6, what: "peer speaks another protocol or version" },
  CLOSED: { exit: 7, what: "stream closed or cut" },
  CORRUPT: { exit: 8, what: "corrupt data" },
  TIMEOUT: { exit: 9, what: "peer did not answer in time" },
  VERIFY: { exit: 10, what: "verification failed" },
  NOT_FOUND: { exit: 11, what: "backup not found" },
  REFUSED: { exit: 12, what: "refused" },
  TARGET: { exit: 13, what: "restore target unusable" },
  PEER: { exit: 14, what: "peer reported an error" },
  STREAM_SETUP: { exit: 15, what: "stream setup failed" },
  BUSY: { exit: 16, what: "device busy" },
  PARTIAL_FILES: { exit: 17, what: "completed with unreadable files" },
  INTERNAL: { exit: 1, what: "internal error" },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class TbError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint: string = "",
    /** lines worth showing before the error line (e.g. candidates to choose from) */
    readonly details: string[] = [],
  ) {
    super(message);
    this.name = "TbError";
  }

  get exitCode(): number {
    return ErrorCodes[this.code].exit;
  }

  /** One line: what happened, then what to do next. */
  oneLine(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

export function isErrno(e: unknown, ...codes: string[]): e is NodeJS.ErrnoException {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === "string" &&
    (codes.length === 0 || codes.includes((e as NodeJS.ErrnoException).code!));
}

/** The errno code of an error, or the code itself as a worker reports it; "" for anything else. */
export function errnoCode(e: unknown): string {
  return typeof e === "string" ? e : isErrno(e) ? e.code! : "";
}

/**
 * Any error as ours; one we did not expect is a bug (its stack, of minified code,
 * would tell a user nothing; TBBACKUP_DEBUG=1 prints it for the report).
 */
export function asTbError(e: unknown): TbError {
  if (e instanceof TbError) return e;
  if (process.env.TBBACKUP_DEBUG) console.error(e);
  return new TbError("INTERNAL", e instanceof Error ? `${e.name}: ${e.message}` : String(e), "please report this bug (TBBACKUP_DEBUG=1 adds where it happened)");
}

export function errnoText(e: unknown): string {
  if (isErrno(e)) return `${e.code}${e.message && !e.message.startsWith(e.code!) ? ` (${e.message})` : ""}`;
  return e instanceof Error ? e.message : String(e);
}
