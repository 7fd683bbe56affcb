// Tool identity, shared by the CLI and the protocol.
import pkg from "../../package.json" with { type: "json" };
import { PROTOCOL_VERSION } from "../protocol/messages.ts";

export const TOOL_NAME = "tbbackup";
export const TOOL_VERSION: string = pkg.version;
export const TOOL = `${TOOL_NAME}/${TOOL_VERSION}`;
export { PROTOCOL_VERSION };
/** The integrity root of per-chunk SHA-256s (docs/PROTOCOL.md §5.4): END, DONE and RESTORE_INFO carry `root`. */
export const ROOT_CAP = "root";
/** Incremental push (docs/PROTOCOL.md §8.7): HELLO_ACK may offer a base, BASE_DIGESTS and SAME records follow. */
export const INCREMENTAL_CAP = "incremental";
export const CAPABILITIES = ["zstd", "zero-chunks", "seekable", "progress-ack", "status", ROOT_CAP, INCREMENTAL_CAP];
