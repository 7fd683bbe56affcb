// Builds dist/tbbackup: one executable with the zstd-napi and BLAKE3
// (@napi-rs/blake-hash) addons embedded. Both pick their addon's path at run
// time, which the bundler cannot follow; these plugins replace that with a
// static require of the addon built for this machine's platform.
import { mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
// the BLAKE3 addon npm installed for this platform (its package names the C library: gnu or musl)
const blakeAddon = ["gnu", "musl"].map((libc) => `@napi-rs/blake-hash-${process.platform}-${process.arch}-${libc}`).find((name) => {
  try {
    require.resolve(name);
    return true;
  } catch {
    return false;
  }
});
if (!blakeAddon) {
  console.error(`build: no BLAKE3 addon (@napi-rs/blake-hash) installed for ${process.platform}-${process.arch}; run npm ci`);
  process.exit(1);
}
const result = await Bun.build({
  entrypoints: ["./src/main.ts", "./src/core/chunk-worker.ts"],
  compile: { outfile: "./dist/tbbackup" },
  minify: true,
  // Precompiled bytecode halves start-up (about 95 -> 50 ms for 'version');
  // it needs CommonJS output, so no module may use a top-level await.
  bytecode: true,
  format: "cjs",
  plugins: [
    {
      name: "zstd-napi-static-binding",
      setup(build) {
        build.onLoad({ filter: /zstd-napi[\\/]binding\.js$/ }, () => ({
          contents: 'module.exports = require("./build/Release/binding.node");',
          loader: "js",
        }));
      },
    },
    {
      // (its index.js tries every platform's package in turn, and reads /usr/bin/ldd for musl)
      name: "blake-hash-static-binding",
      setup(build) {
        build.onLoad({ filter: /@napi-rs[\\/]blake-hash[\\/]index\.js$/ }, () => ({
          contents: `module.exports = require(${JSON.stringify(blakeAddon)});`,
          loader: "js",
        }));
      },
    },
  ],
});
if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
console.log("built dist/tbbackup");
