// Errors of the store layer (image, seek table, chunk list, manifest, layout),
// each with a kind so that core decides what to tell the user by kind, not by
// the message's words. Core turns them into TbError (src/errors.ts); the text
// stays the store's, for the error line.

export type StoreErrorKind =
  /** what is stored does not hold together (cut short, bad seek table, malformed line, unparsable manifest) */
  | "DAMAGED"
  /** a manifest of a later format than this tbbackup understands: upgrade tbbackup */
  | "NEWER_FORMAT"
  /** not something tbbackup wrote (a manifest.json without a format) */
  | "NOT_A_BACKUP"
  /** a path that would leave the store, or no free name for a new backup */
  | "LAYOUT"
  /** a caller asked for something the store cannot do (a bug) */
  | "MISUSE";

/**
 * Its code is `kind`, not `code`: an Error with a string `code` passes for a
 * Node errno error (isErrno, errnoText in src/errors.ts).
 */
export class StoreError extends Error {
  constructor(
    readonly kind: StoreErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "StoreError";
  }
}

/** The store error's kind, or null for any other error (an errno from the file system, a bug). */
export function storeKind(e: unknown): StoreErrorKind | null {
  return e instanceof StoreError ? e.kind : null;
}
