// Tool identity, shared by the CLI and the protocol.
import pkg from "../../package.json" with { type: "json" };
import { PROTOCOL_VERSION } from "../protocol/messages.ts";

export const TOOL_NAME = "tbbackup";
export const TOOL_VERSION: string = pkg.version;
export const TOOL = `${TOOL_NAME}/${TOOL_VERSION}`;
export { PROTOCOL_VERSION };
/** The sender may ask again for a DONE that did not come (STATUS, docs/PROTOCOL.md §8.2). */
export const STATUS_CAP = "status";
/** The integrity root of per-chunk SHA-256s (docs/PROTOCOL.md §5.4a): END, DONE and RESTORE_INFO carry `root`. */
export const ROOT_CAP = "root";
/** A damaged chunk is asked for again (RESEND, docs/PROTOCOL.md §8.2a) instead of ending the push. */
export const RESEND_CAP = "resend";
/** Incremental push (docs/PROTOCOL.md §8.7): HELLO_ACK may offer a base, BASE_DIGESTS and SAME records follow. */
export const INCREMENTAL_CAP = "incremental";
/** Delta restore over a stream (docs/PROTOCOL.md §8.6a): RESTORE_INFO may be followed by the backup's digests, and RESTORE names the chunks wanted. */
export const DELTA_RESTORE_CAP = "delta-restore";
/** BLAKE3 chunk digests in the integrity root (docs/PROTOCOL.md §5.4a): HELLO_ACK and RESTORE_INFO may say `digest: "blake3"`. */
export const BLAKE3_CAP = "blake3";
/** "key-auth": can authenticate a tcp: connection with a key before HELLO (docs/PROTOCOL.md §7.1) */
export const CAPABILITIES = ["zstd", "zero-chunks", "seekable", "progress-ack", STATUS_CAP, ROOT_CAP, RESEND_CAP, INCREMENTAL_CAP, DELTA_RESTORE_CAP, "key-auth", BLAKE3_CAP];
