// Requests to a receiver other than push: list (and restore, see restore.ts).
import { MsgType, decodeMessage, sessionOf } from "../protocol/messages.ts";
import type { Transport } from "../transport/index.ts";
import type { BackupEntry } from "./catalogue.ts";
import { Channel } from "./channel.ts";
import { TbError } from "./errors.ts";
import { handshake, newHello, peerError } from "./handshake.ts";
import type { Reporter } from "./report.ts";

export async function listRemote(transport: Transport, waitMs: number, reporter: Reporter): Promise<Omit<BackupEntry, "path">[]> {
  const ch = new Channel(await transport.connect(waitMs));
  try {
    const hello = newHello("list");
    await handshake(ch, hello, waitMs, reporter);
    for (;;) {
      const f = await ch.recv(waitMs, "the receiver's list");
      if (f.type === MsgType.ERROR) throw peerError(f.payload);
      if (f.type !== MsgType.LIST_RESULT) continue;
      if (sessionOf(f.payload) !== hello.session) continue; // an earlier session's
      const r = decodeMessage(MsgType.LIST_RESULT, f.payload) as { session: string; backups: Omit<BackupEntry, "path">[] } | null;
      if (!r) throw new TbError("PROTOCOL", "the receiver's list is malformed (an entry without its fields)", "install the same tbbackup version on both machines");
      return r.backups;
    }
  } catch (e) {
    if (e instanceof TbError && e.code === "REFUSED") throw new TbError("REFUSED", e.message.replace(/^the other side reports: /, "the receiver refused: "), "");
    throw e;
  } finally {
    await ch.close();
  }
}
