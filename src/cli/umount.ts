// tbbackup umount DIR: undo a tbbackup mount (file systems, loop device, FUSE file, NBD server).
import type { Command } from "commander";
import { action, printJson, type GlobalOpts } from "./common.ts";

export function register(program: Command): void {
  program
    .command("umount")
    .description("undo 'tbbackup mount': unmount, detach the loop device, stop the NBD server")
    .argument("<dir>", "the directory given to tbbackup mount")
    .option("--json", "print JSON")
    .action(
      action(async (dir: string, o: GlobalOpts) => {
        const { umountBackup } = await import("../nbd/mount.ts");
        const r = await umountBackup(dir);
        if (o.json) printJson({ ok: true, ...r });
        else process.stdout.write(`unmounted backup ${r.id} from ${r.dir}\n`);
      }),
    );
}
