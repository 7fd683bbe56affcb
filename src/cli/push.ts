// tbbackup push SOURCE: send a full image of a disk or image file to a receiver.
import type { Command } from "commander";
import { push, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE } from "../core/push.ts";
import { TbError } from "../core/errors.ts";
import { transportFor } from "../transport/index.ts";
import { makeReporter } from "../ui/progress.ts";
import { bytes, ratio } from "../ui/format.ts";
import { action, intOption, printJson, sizeOption, onInterrupt, type GlobalOpts } from "./common.ts";
import { resolveStream } from "./stream.ts";

export function register(program: Command): void {
  program
    .command("push")
    .description("send a full image of SOURCE (a block device or an image file) to a receiver")
    .argument("<source>", "block device (e.g. /dev/nvme0n1) or regular file")
    .option("--stream <spec>", "transport: /dev/tbstreamX, unix:PATH, tcp:HOST:PORT or -")
    .option("--name <label>", "a label stored with the backup")
    .option("--level <n>", "zstd level (1 fastest .. 19)", intOption(1, 19), 1)
    .option("--chunk-size <size>", "chunk size (4K..4M, a multiple of 4K)", sizeOption, DEFAULT_CHUNK_SIZE)
    .option("--wait <seconds>", "how long to wait for the receiver", intOption(1, 86400), 60)
    .option("--peer <id>", "without --stream: the Thunderbolt peer to use (unique_id or device name)")
    .option("--ring-size <n>", "without --stream: driver ring size (32..4096)", intOption(32, 4096))
    .option("--throttling <ns>", "without --stream: interrupt throttling in ns (0..16776960)", intOption(0, 16776960))
    .option("--json", "print one JSON result on stdout")
    .action(
      action(async (source: string, o: { stream?: string; name?: string; level: number; chunkSize: number; wait: number; peer?: string; ringSize?: number; throttling?: number } & GlobalOpts) => {
        if (o.chunkSize < 4096 || o.chunkSize > MAX_CHUNK_SIZE || o.chunkSize % 4096 !== 0)
          throw new TbError("USAGE", `--chunk-size ${o.chunkSize} is not allowed`, "use a multiple of 4K from 4K to 4M");
        const reporter = makeReporter();
        onInterrupt("the backup is incomplete; run push again");
        const stream = await resolveStream(o.stream, "push", { wait: o.wait, peer: o.peer, ringSize: o.ringSize, throttling: o.throttling });
        if (o.stream === "-" && o.json) throw new TbError("USAGE", "--json cannot be used with --stream -", "stdout carries the stream");
        try {
          const r = await push({ source, transport: transportFor(stream.spec, false), label: o.name ?? null, level: o.level, chunkSize: o.chunkSize, waitMs: o.wait * 1000, idleMs: 300_000, reporter });
          reporter.stop();
          if (o.json) printJson({ ok: true, ...r });
          else process.stderr.write(`backup complete: ${r.id} (${bytes(r.bytes)} stored as ${bytes(r.storedBytes)}, ratio ${ratio(r.bytes, r.storedBytes)}, ${r.seconds.toFixed(1)} s)\nsha256 ${r.sha256}\n`);
        } catch (e) {
          reporter.stop();
          if (e instanceof TbError && !/incomplete/.test(e.hint)) throw new TbError(e.code, `${e.message}`, `the backup is incomplete${e.hint ? "; " + e.hint : ""}`);
          throw e;
        } finally {
          await stream.cleanup();
        }
      }),
    );
}
