// Which transport a command uses: --stream SPEC, or (later) the Thunderbolt stream set up automatically.
import { TbError } from "../core/errors.ts";

export async function resolveStream(spec: string | undefined, _role: "push" | "receive" | "list" | "restore"): Promise<string> {
  if (spec) return spec;
  throw new TbError("USAGE", "no --stream given and automatic Thunderbolt setup is not available in this build", "pass --stream /dev/tbstreamX, unix:PATH, tcp:HOST:PORT or -");
}
