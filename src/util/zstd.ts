// zstd-napi's low-level binding, loaded on first use: loading it unpacks the
// native addon into $TMPDIR, which commands like `version` should not pay for.
// (A namespace import would also be resolved statically by the bundler and
// come out undefined in the compiled binary.)
import type * as Binding from "zstd-napi/binding";
import { TbError } from "../errors.ts";
import { blake3Hex } from "./blake3.ts";

let binding: typeof Binding | null = null;

export function zstd(): typeof Binding {
  binding ??= require("zstd-napi/binding") as typeof Binding;
  return binding;
}

/**
 * Loads the addons (zstd, and BLAKE3 unless `blake3` is false: src/util/blake3.ts) now, so that a
 * system that cannot run them (TMPDIR not writable or mounted noexec,
 * libstdc++ missing) is told so before any session starts, in one line,
 * instead of a worker failing in the middle of one.
 */
export function requireAddons(blake3 = true): void {
  let which = "zstd";
  try {
    zstd();
    which = "BLAKE3";
    if (blake3) blake3Hex(new Uint8Array(0));
  } catch (e) {
    const why = String((e as Error)?.message ?? e).split("\n")[0]!.slice(0, 200);
    const tmp = process.env.TMPDIR || "/tmp";
    throw new TbError("INTERNAL", `cannot load the embedded ${which} library (${why})`, `it is unpacked into TMPDIR (${tmp}), which must be writable and not mounted noexec, and needs libstdc++.so.6, libgcc_s.so.1 and librt.so.1; set TMPDIR to such a directory`);
  }
}
