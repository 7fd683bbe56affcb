// zstd-napi's low-level binding. A default import keeps the CommonJS object
// whole; a namespace import is resolved statically by the bundler and comes
// out undefined in the compiled binary.
import type * as Binding from "zstd-napi/binding";
import binding from "zstd-napi/binding";

export const zstd = binding as unknown as typeof Binding;
