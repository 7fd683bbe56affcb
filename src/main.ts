#!/usr/bin/env bun
// tbbackup: the command line. Each command lives in its own file under src/cli.
import { Command, CommanderError } from "commander";
import { register as registerPush } from "./cli/push.ts";
import { register as registerReceive } from "./cli/receive.ts";
import { register as registerList } from "./cli/list.ts";
import { register as registerVerify } from "./cli/verify.ts";
import { register as registerRestore } from "./cli/restore.ts";
import { register as registerStreams } from "./cli/streams.ts";
import { register as registerNbd } from "./cli/nbd.ts";
import { register as registerMount } from "./cli/mount.ts";
import { register as registerUmount } from "./cli/umount.ts";
import { register as registerDelete } from "./cli/delete.ts";
import { register as registerPrune } from "./cli/prune.ts";
import { register as registerKeygen } from "./cli/keygen.ts";
import { PROTOCOL_VERSION, TOOL_VERSION } from "./core/version.ts";
import { asTbError } from "./errors.ts";

// Last resort: an error that escaped every command (a bug) still ends in one
// line and exit status 1, not a dump of the bundle's minified source.
for (const event of ["uncaughtException", "unhandledRejection"] as const)
  process.on(event, (e: unknown) => {
    const err = asTbError(e);
    process.stderr.write(`tbbackup: ${err.oneLine()}\n`);
    process.exit(err.exitCode);
  });

const program = new Command()
  .name("tbbackup")
  .description("image a disk over a USB4/Thunderbolt cable (or any stream), store it verified, restore it")
  // commander's own usage errors, in our one-line form (exit 2)
  .configureOutput({ outputError: (str, write) => write(`tbbackup: ${str.replace(/^error: /, "").trim()}; run 'tbbackup --help' for usage\n`) })
  .exitOverride()
  .version(`tbbackup ${TOOL_VERSION} (protocol ${PROTOCOL_VERSION})`, "-V, --version", "print tool and protocol versions");

program
  .command("version")
  .description("print tool and protocol versions")
  .option("--json", "print JSON")
  .action((o: { json?: boolean }) => {
    if (o.json) process.stdout.write(JSON.stringify({ tool: "tbbackup", version: TOOL_VERSION, protocol: PROTOCOL_VERSION }) + "\n");
    else process.stdout.write(`tbbackup ${TOOL_VERSION} (protocol ${PROTOCOL_VERSION})\n`);
  });
registerPush(program);
registerReceive(program);
registerList(program);
registerVerify(program);
registerRestore(program);
registerStreams(program);
registerNbd(program);
registerMount(program);
registerUmount(program);
registerDelete(program);
registerPrune(program);
registerKeygen(program);

program.parseAsync(process.argv).catch((e) => {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode === 0 ? 0 : 2;
    // a usage mistake is an error like any other for a script reading --json
    if (e.exitCode !== 0 && process.argv.includes("--json"))
      process.stdout.write(JSON.stringify({ ok: false, error: { code: "USAGE", message: e.message.replace(/^error: /, ""), hint: "run 'tbbackup --help' for usage", exit: 2 } }, null, 2) + "\n");
  } else throw e;
});
