// Which transport a command uses: --stream SPEC as given, or (no --stream) the
// Thunderbolt stream set up automatically (src/thunderbolt), torn down by cleanup().
import { TbError } from "../core/errors.ts";

export type StreamRole = "push" | "receive" | "list" | "restore";

export interface AutoStreamOptions {
  /** seconds to wait for a peer / announcement (receive waits forever) */
  wait?: number;
  peer?: string;
  hopids?: string;
  ringSize?: number;
  throttling?: number;
}

export interface ResolvedStream {
  spec: string;
  /** removes what this run created (idempotent) */
  cleanup: () => Promise<void>;
}

export async function resolveStream(spec: string | undefined, _role: StreamRole, _opts: AutoStreamOptions = {}): Promise<ResolvedStream> {
  if (spec) return { spec, cleanup: async () => {} };
  throw new TbError("USAGE", "no --stream given and automatic Thunderbolt setup is not available in this build", "pass --stream /dev/tbstreamX, unix:PATH, tcp:HOST:PORT or -");
}
