// Which transport a command uses: --stream SPEC as given, or (no --stream) the
// Thunderbolt stream set up automatically (src/thunderbolt), torn down by cleanup().
import { Option, type Command } from "commander";
import { TbError } from "../errors.ts";
import { intOption } from "./common.ts";
import * as fs from "node:fs";
import type { Transport } from "../transport/index.ts";


export interface AutoStreamOptions {
  /** seconds to wait for a peer / announcement (receive waits forever) */
  wait?: number;
  peer?: string;
  hopids?: string;
  ringSize?: number;
  throttling?: number;
}

export interface ResolvedStream {
  spec: string;
  /** removes what this run created (idempotent) */
  cleanup: () => Promise<void>;
}

export async function resolveStream(spec: string | undefined, opts: AutoStreamOptions = {}): Promise<ResolvedStream> {
  if (spec) {
    if (opts.peer || opts.hopids || opts.ringSize !== undefined || opts.throttling !== undefined)
      throw new TbError("USAGE", "--peer, --hopids, --ring-size and --throttling apply only without --stream", "drop them, or drop --stream to let tbbackup set the Thunderbolt stream up");
    // a device path that is not there is a mistyped name, not a failed Thunderbolt setup
    if (/^\.{0,2}\//.test(spec) && !fs.existsSync(spec))
      throw new TbError("USAGE", `--stream ${spec}: no such device`, "check the path ('tbbackup streams' lists Thunderbolt streams; a serial port or pty must exist before tbbackup starts), or use unix:PATH / tcp:HOST:PORT");
    return { spec, cleanup: async () => {} };
  }
  // (receive without --stream sets up every peer itself: transport/thunderbolt.ts; what comes here adopts the receiver's stream)
  const { AutoStream } = await import("../thunderbolt/setup.ts");
  const auto = new AutoStream({
    mode: "adopt",
    waitMs: (opts.wait ?? 60) * 1000,
    peer: opts.peer,
    ringSize: opts.ringSize,
    throttling: opts.throttling,
    onWait: (m) => process.stderr.write(`tbbackup: ${m}\n`),
  });
  // Ctrl-C, SIGTERM and errors end in process.exit: tear down there too.
  const onExit = () => auto.teardown();
  process.on("exit", onExit);
  const cleanup = async () => {
    auto.teardown();
    process.off("exit", onExit);
  };
  try {
    const device = await auto.setup();
    process.stderr.write(`tbbackup: stream ready: ${device} with ${auto.peer?.deviceName ?? auto.peer?.id}\n`);
    return { spec: device, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** The --help heading of the automatic Thunderbolt setup's expert options. */
export const THUNDERBOLT_GROUP = "Thunderbolt setup (without --stream):";

/** Adds those options, shared by every command that opens a stream; --help lists them last, under their heading. */
export function withThunderboltOptions(cmd: Command): Command {
  const group = THUNDERBOLT_GROUP;
  return cmd
    .addOption(new Option("--peer <id>", "the Thunderbolt peer to use (unique_id or device name)").helpGroup(group))
    .addOption(new Option("--ring-size <n>", "driver ring size (32..4096)").argParser(intOption(32, 4096)).helpGroup(group))
    .addOption(new Option("--throttling <ns>", "interrupt throttling in ns (0..16776960)").argParser(intOption(0, 16776960)).helpGroup(group));
}

export interface KeyOptions {
  keyFile?: string;
  /** receive only: accept tcp: connections without a key */
  insecure?: boolean;
}

/** Adds --key-file (and, for receive, --insecure). */
export function withKeyOptions(cmd: Command, receiver = false): Command {
  cmd.option("--key-file <file>", "tcp: authenticate both sides with this key (made by 'tbbackup keygen')");
  if (receiver) cmd.option("--insecure", "tcp: accept connections without a key (anyone who can connect can push and, with --allow-restore, read backups)");
  return cmd;
}

/**
 * Checks the key options against the stream before anything starts, and reads
 * the key: null when the connection is not to be authenticated. A tcp:
 * receiver needs a key or --insecure; a key is for tcp: only (unix: sockets
 * have file permissions, devices a cable).
 */
export async function keyFor(spec: string | undefined, listening: boolean, o: KeyOptions): Promise<Uint8Array | null> {
  const tcp = spec?.startsWith("tcp:") === true;
  if (o.keyFile && !tcp) throw new TbError("USAGE", "--key-file applies to tcp: streams only", "drop --key-file (unix: sockets are guarded by their mode, devices by the cable)");
  if (o.insecure && !tcp) throw new TbError("USAGE", "--insecure applies to tcp: streams only", "drop --insecure");
  if (tcp && listening && !o.keyFile && !o.insecure)
    throw new TbError("REFUSED", `a tcp: receiver without a key would take backups from, and with --allow-restore give them to, anyone who can connect to ${spec}`, "give --key-file FILE (tbbackup keygen FILE, the same file on both sides), or --insecure to accept that");
  if (!o.keyFile) return null;
  const { readKeyFile } = await import("../core/keyfile.ts");
  return readKeyFile(o.keyFile);
}

/** `transport` with its connections authenticated (and sealed) by `key`; as it is without one. */
export async function withKey(transport: Transport, key: Uint8Array | null, log: (message: string) => void): Promise<Transport> {
  if (!key) return transport;
  const { KeyedTransport } = await import("../transport/auth.ts");
  return new KeyedTransport(transport, key, log);
}
