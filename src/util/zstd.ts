// zstd-napi's low-level binding, loaded on first use: loading it unpacks the
// native addon into $TMPDIR, which commands like `version` should not pay for.
// (A namespace import would also be resolved statically by the bundler and
// come out undefined in the compiled binary.)
import type * as Binding from "zstd-napi/binding";

let binding: typeof Binding | null = null;

export function zstd(): typeof Binding {
  binding ??= require("zstd-napi/binding") as typeof Binding;
  return binding;
}
