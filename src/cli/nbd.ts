// tbbackup nbd BACKUP: serve a stored backup as a read-only NBD export until
// SIGINT/SIGTERM (then exit 0, the socket removed, cache figures on stderr).
import type { Command } from "commander";
import { bytes } from "../ui/format.ts";
import { action, exit, sizeOption, type GlobalOpts } from "./common.ts";

export const DEFAULT_LISTEN = "tcp:127.0.0.1:10809";

/** Decompression threads: 2, or TBBACKUP_NBD_WORKERS (0: the server's own thread; for measuring). */
function workerCount(): number {
  const v = process.env.TBBACKUP_NBD_WORKERS;
  return v !== undefined && /^[0-8]$/.test(v) ? Number(v) : 2;
}

export function register(program: Command): void {
  program
    .command("nbd")
    .description("serve a stored backup as a read-only NBD export (nbdinfo, nbdcopy, qemu-img, nbdfuse can open it)")
    .argument("<backup>", "a backup directory, its image.zst, or an ID with --out")
    .option("--listen <spec>", "unix:PATH (created 0600) or tcp:HOST:PORT (tcp:PORT: loopback only)", DEFAULT_LISTEN)
    .option("--out <dir>", "the store to look the backup ID up in")
    .option("--cache-size <size>", "decompressed chunks kept for re-reads (e.g. 32M, 1G)", sizeOption, 32 * 1024 * 1024)
    .action(
      action(async (backup: string, o: { listen: string; out?: string; cacheSize: number } & GlobalOpts) => {
        const { ImageExport } = await import("../nbd/export.ts");
        const { NbdServer, parseListen, describeListen } = await import("../nbd/server.ts");
        const log = (line: string) => process.stderr.write(`tbbackup nbd: ${line}\n`);
        const address = parseListen(o.listen);
        const exp = ImageExport.open(backup, { out: o.out, cacheBytes: o.cacheSize, workers: workerCount(), onDamage: (d) => log(`${d.message}; reads that touch it get EIO (run 'tbbackup verify' on the backup)`) });
        const server = new NbdServer(exp, address, log);
        await server.listen();
        const uri = address.kind === "unix" ? `nbd+unix:///?socket=${address.path}` : `nbd://${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`;
        process.stderr.write(`serving ${exp.id} (${bytes(exp.size)}, read-only) on ${describeListen(address)}: ${uri}; Ctrl-C stops\n`);
        await new Promise<void>((resolve) => {
          for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => resolve());
        });
        await server.close();
        const s = exp.stats;
        const looked = s.hits + s.misses;
        process.stderr.write(
          `stopped: ${server.counts.connections} connections, ${server.counts.requests} requests (${server.counts.errors} answered with an error); ` +
            `cache ${s.hits} hits, ${s.misses} misses${looked ? ` (hit rate ${((100 * s.hits) / looked).toFixed(1)}%)` : ""}, ${s.zeroReads} zero-chunk reads, ${s.evictions} evictions, ${s.damaged} damaged chunks\n`,
        );
        exp.close();
        await exit(0);
      }),
    );
}
