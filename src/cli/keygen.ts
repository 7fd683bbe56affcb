// tbbackup keygen [FILE]: a new key for tcp: authentication (--key-file).
import type { Command } from "commander";
import { action } from "./common.ts";

export function register(program: Command): void {
  program
    .command("keygen")
    .description("make a key for --key-file (tcp: authentication): 32 random bytes as hex, written 0600; no FILE: on stdout")
    .argument("[file]", "where to write it (never over an existing file)")
    .action(
      action(async (file: string | undefined) => {
        const { newKeyLine, writeKeyFile } = await import("../core/keyfile.ts");
        if (file) {
          writeKeyFile(file);
          process.stderr.write(`tbbackup: wrote a new key to ${file} (mode 0600); give the same file to both sides with --key-file\n`);
        } else process.stdout.write(newKeyLine());
      }),
    );
}
