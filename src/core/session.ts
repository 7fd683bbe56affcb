// What a receiver's session comes to: the result its log line and --json show,
// and how the session ended. A module of its own, so that the push receiver
// (receive.ts) and the list/restore server (serve-restore.ts) share it
// without importing each other.
import type { Frame } from "../protocol/frame.ts";
import type { Done, Hello } from "../protocol/messages.ts";

export interface SessionResult {
  ok: boolean;
  role: Hello["role"];
  id?: string;
  path?: string;
  host?: string;
  bytes?: number;
  storedBytes?: number;
  root?: string;
  sha256?: string;
  seconds?: number;
  /** push with the resend capability: how many times a damaged chunk was asked for again */
  resent?: number;
  error?: { code: string; message: string };
}

/** How a session ended: its result, a HELLO of the next session that ended it, and for a stored push the DONE. */
export interface SessionEnd {
  result: SessionResult;
  carried: Frame | null;
  done?: Done;
}
