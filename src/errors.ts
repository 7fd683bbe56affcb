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

/**
 * What a failure left behind, when its hint says so first: "the backup is
 * incomplete", "the target PATH is now incomplete", "nothing was written...".
 * Callers that add such words (cli push, restore) decide on `kind`, never on
 * the hint's text.
 */
export type OutcomeKind = "incomplete" | "target-incomplete" | "unconfirmed" | "unchanged" | "removed";
export interface Outcome {
  readonly kind: OutcomeKind;
  /** the words that lead the hint */
  readonly said: string;
}

export const outcome = {
  /** "the backup is incomplete" (also the transfer, the extraction) */
  incomplete: (what: "backup" | "transfer" | "extraction"): Outcome => ({ kind: "incomplete", said: `the ${what} is incomplete` }),
  /** "the target [PATH] is now incomplete": a restore wrote part of it */
  target: (path?: string): Outcome => ({ kind: "target-incomplete", said: `the target ${path ? `${path} ` : ""}is now incomplete` }),
  /** all was sent, the receiver's confirmation did not come through */
  unconfirmed: (said: string): Outcome => ({ kind: "unconfirmed", said }),
  /** nothing was written (e.g. "nothing was written under DEST") */
  unchanged: (said: string): Outcome => ({ kind: "unchanged", said }),
  /** a restore's unfinished new image file was removed */
  removed: (path: string): Outcome => ({ kind: "removed", said: `the unfinished ${path} was removed` }),
};

/** Whether an outcome already tells the user that something is left incomplete or unconfirmed. */
export function saysUnfinished(o: Outcome | undefined): boolean {
  return o?.kind === "incomplete" || o?.kind === "target-incomplete" || o?.kind === "unconfirmed";
}

export class TbError extends Error {
  /** what to do next: the outcome's words (if any), then the advice */
  readonly hint: string;

  constructor(
    readonly code: ErrorCode,
    message: string,
    /** what to do next, without the outcome's words */
    readonly advice: string = "",
    /** lines worth showing before the error line (e.g. candidates to choose from) */
    readonly details: string[] = [],
    /** what the failure left behind; its words lead the hint */
    readonly outcome?: Outcome,
  ) {
    super(message);
    this.name = "TbError";
    this.hint = outcome ? (advice ? `${outcome.said}; ${advice}` : outcome.said) : advice;
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
