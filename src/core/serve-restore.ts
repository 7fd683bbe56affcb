// The receiver's answers to list and restore requests (only with --allow-restore).
// A restore sends the stored compressed chunks as they are; the restoring side
// checks each one. Backup IDs are resolved strictly inside DIR.
import * as path from "node:path";
import { MsgType, type DiskIdentity, type Hello, type HelloAck, type HostIdentity, type RestoreInfo } from "../protocol/messages.ts";
import type { Frame } from "../protocol/frame.ts";
import { DATA_PAYLOAD_AT, dataFrameSize, sealDataFrame, wants, zeroRecordFrame } from "../protocol/chunk-record.ts";
import { BLAKE3_CAP, DELTA_RESTORE_CAP, ROOT_CAP } from "./version.ts";
import { readDigests, sendBaseDigests } from "./incremental.ts";
import { chunkDigestOf, openRepository, unknownDigest, type BackupReader, type ChunkLines, type Repository, type StoredBackup } from "../store/repository.ts";
import { compareDisks, sameDisk, type DiskNames } from "./identity.ts";
import { storeKind } from "../store/errors.ts";
import { Channel } from "./channel.ts";
import { TbError, asTbError } from "./errors.ts";
import type { Reporter } from "./report.ts";
import { newHelloAck, hasCap } from "./handshake.ts";
import { ServeRestoreSession, type ServeRestoreAction, type ServeRestoreEvent, type ServeRestoreState } from "./serve-restore-session.ts";
import { entryFor, listBackups, type BackupEntry } from "./catalogue.ts";
import type { SessionResult } from "./session.ts";
import { isZeroFrame } from "./zero.ts";
import { nextChunkLine, readStoredChunk } from "./verify.ts";
import { compressBound } from "../util/buffer-pool.ts";

export interface ServeOptions {
  out: string;
  allowRestore: boolean;
  idleMs: number;
  reporter: Reporter;
}

type Served = { result: SessionResult; carried: Frame | null };

export async function serveRequest(ch: Channel, hello: Hello, opts: ServeOptions): Promise<Served> {
  const refuse = async (code: TbError["code"], message: string, candidates?: string[]): Promise<Served> => {
    await ch.sendJson(MsgType.ERROR, { session: hello.session, code, message, candidates }).catch(() => {});
    opts.reporter.info(`refused a ${hello.role} request from ${hello.host?.hostname}: ${message}`);
    return { result: { ok: false, role: hello.role, host: hello.host?.hostname, error: { code, message } }, carried: null };
  };
  if (!opts.allowRestore) return refuse("REFUSED", `this receiver does not serve ${hello.role} requests; restart it with --allow-restore`);
  const ack = newHelloAck(hello);
  await ch.sendJson(MsgType.HELLO_ACK, ack);
  if (hello.role === "list") {
    await ch.sendJson(MsgType.LIST_RESULT, { session: hello.session, backups: listBackups(opts.out).map(({ path: _p, ...rest }) => rest) });
    return { result: { ok: true, role: "list", host: hello.host?.hostname }, carried: null };
  }
  if (hello.role !== "restore") return refuse("PROTOCOL", `unknown request ${String(hello.role)}`);

  const repo = openRepository(opts.out);
  let backup: StoredBackup;
  if (hello.backup) {
    const b = typeof hello.backup === "string" ? repo.find(hello.backup) : null;
    if (!b) return refuse("NOT_FOUND", `no backup ${JSON.stringify(hello.backup)} in this store (IDs look like host/disk/timestamp)`, candidatesFor(opts.out, hello.host));
    backup = b;
  } else {
    const all = repo.list();
    const choice = chooseBackup(all.map((b) => entryFor(repo, b)), hello.host, hello.target);
    if ("error" in choice) return refuse("NOT_FOUND", choice.error, choice.candidates);
    backup = all.find((b) => b.id === choice.entry.id)!;
  }
  return sendBackup(ch, hello, ack, repo, backup, opts, refuse);
}

function candidatesFor(out: string, host: HostIdentity | undefined): string[] {
  const all = listBackups(out).filter((b) => b.status === "complete" && b.kind === "image");
  const mine = all.filter((b) => sameHost(b, host));
  return (mine.length ? mine : all).map(describe);
}

function describe(b: BackupEntry): string {
  return `${b.id}  ${b.size} bytes  ${b.date}${b.label ? `  ${b.label}` : ""}  disk ${b.diskSerial ?? b.diskWwn ?? b.diskPath ?? "?"}`;
}

function sameHost(b: BackupEntry, h: HostIdentity | undefined): boolean {
  if (!h) return false;
  return (!!b.machineId && b.machineId === h.machineId) || (!!b.productUuid && b.productUuid === h.productUuid);
}

function diskKey(b: BackupEntry): string {
  return b.diskWwn ?? b.diskSerial ?? `${b.diskPath}:${b.size}`;
}

/** A catalogue entry's disk, as the same-disk rule reads it. */
function diskOf(b: BackupEntry): DiskNames {
  return { path: b.diskPath, kind: b.diskKind, size: b.size, serial: b.diskSerial, wwn: b.diskWwn };
}

/**
 * The newest complete image backup of this host's matching disk. No match, or
 * matches of more than one disk: an error with the candidates to choose from.
 */
export function chooseBackup(all: BackupEntry[], host: HostIdentity | undefined, target: DiskIdentity | undefined): { entry: BackupEntry } | { error: string; candidates: string[] } {
  const complete = all.filter((b) => b.status === "complete" && b.kind === "image");
  const mine = complete.filter((b) => sameHost(b, host));
  const matches = target ? mine.filter((b) => sameDisk(diskOf(b), target, { by: "hardware", strictPath: true })) : [];
  const disks = new Set(matches.map(diskKey));
  if (matches.length === 0) {
    // Backups of a disk with the same WWN or serial, from any host (a rescue system
    // without an identity, or a reinstalled one with a new machine-id): when they
    // are all of one disk, the newest is offered by name, never restored unasked.
    const sameHw = target ? complete.filter((b) => compareDisks(diskOf(b), target).hardware === true).sort((a, b) => a.date.localeCompare(b.date)) : [];
    const newest = sameHw[sameHw.length - 1];
    const by = newest?.diskWwn && target?.wwn ? `WWN ${newest.diskWwn}` : `serial ${newest?.diskSerial}`;
    const offer =
      newest && new Set(sameHw.map(diskKey)).size === 1
        ? `; backup ${newest.id}${sameHw.length > 1 ? ` (the newest of ${sameHw.length})` : ""} is of a disk with the same ${by}: to restore it, pass --backup ${newest.id} (at boot: rd.tbbackup.backup=${newest.id})`
        : "";
    const listed = (sameHw.length ? sameHw : mine.length ? mine : complete).map(describe);
    if (!host?.machineId && !host?.productUuid)
      return { error: `this machine has no identity (no /etc/machine-id, no DMI product UUID), so no backup can be matched to its disk ${target?.path ?? "?"}${offer || "; choose one with --backup ID (at boot: rd.tbbackup.backup=ID)"}`, candidates: listed };
    return { error: `no complete backup of this host's disk ${target?.path ?? "?"} (matched by machine-id/product UUID and WWN/serial, else path and size)${offer}`, candidates: listed };
  }
  if (disks.size > 1) return { error: `backups of ${disks.size} different disks match ${target?.path ?? "?"}`, candidates: matches.map(describe) };
  matches.sort((a, b) => a.date.localeCompare(b.date));
  return { entry: matches[matches.length - 1]! };
}

/** Thrown out of the sending loop when the restoring side left (the session already failed with its reason). */
const LEFT = Symbol("the restoring side left");

async function sendBackup(ch: Channel, hello: Hello, ack: HelloAck, repo: Repository, backup: StoredBackup, opts: ServeOptions, refuse: (c: TbError["code"], m: string) => Promise<Served>): Promise<Served> {
  const dir = backup.location;
  let manifest;
  try {
    manifest = repo.manifestOf(backup);
  } catch (e) {
    if (storeKind(e) === "NEWER_FORMAT") return refuse("PROTOCOL", `the backup at ${path.relative(opts.out, dir)} needs a newer tbbackup on the receiver: ${(e as Error).message}`);
    return refuse("NOT_FOUND", `the backup at ${path.relative(opts.out, dir)} has no readable manifest: ${(e as Error).message}`);
  }
  if (manifest.status !== "complete" || (!manifest.sha256 && !manifest.root)) return refuse("NOT_FOUND", `backup ${manifest.id} is ${manifest.status}, not complete`);
  // a restorer older than the integrity root (or than its chunk digest, BLAKE3) can only check a whole-image SHA-256
  const chunkHash = chunkDigestOf(manifest);
  if (manifest.root && chunkHash === null) return refuse("VERIFY", `backup ${manifest.id} is damaged: ${unknownDigest(manifest)}`);
  const restorerHasRoot = hasCap(hello, ROOT_CAP) && (chunkHash !== "blake3" || hasCap(hello, BLAKE3_CAP));
  if (!restorerHasRoot && !manifest.sha256)
    return refuse("PROTOCOL", `backup ${manifest.id} is checked by its integrity root${chunkHash === "blake3" ? " of BLAKE3 chunk digests" : ""}, which this tbbackup (${String(hello.tool)}) does not know; restore it with a newer tbbackup`);
  const check = restorerHasRoot && manifest.root ? { root: manifest.root, ...(chunkHash === "blake3" ? { digest: "blake3" as const } : {}) } : { sha256: manifest.sha256! };
  const wanted = hello.content === "files" ? "files" : "image";
  if (manifest.kind !== wanted)
    return refuse("USAGE", manifest.kind === "files" ? `backup ${manifest.id} is a file-level backup; use restore --files DEST` : `backup ${manifest.id} is a disk image; restore it onto a disk or image file`);
  let reader: BackupReader;
  let list: ChunkLines;
  try {
    reader = repo.open({ ...backup, manifest });
    try {
      list = reader.chunkList(true)!;
    } catch (e) {
      reader.close();
      throw e;
    }
  } catch (e) {
    return refuse("VERIFY", `backup ${manifest.id} is damaged: ${(e as Error).message}`);
  }
  const started = Date.now();
  let forgetLeaving = () => {};
  // A delta restore (§8.6a): a restorer that will compare with its target gets
  // the backup's per-chunk digests (format 2 and later: digests.txt, checked
  // against the root) and then asks only for the chunks its target lacks.
  let digests: Uint8Array | null = null;
  if (hello.delta === true && hasCap(hello, DELTA_RESTORE_CAP) && "root" in check) {
    const d = readDigests(reader, manifest);
    if (typeof d === "string") opts.reporter.info(`restore of ${manifest.id}: every chunk is sent (no delta: ${d})`);
    else if (d.length / 32 === reader.entries.length) digests = d;
  }
  const info: RestoreInfo = {
    session: hello.session,
    id: manifest.id,
    kind: manifest.kind,
    host: manifest.host,
    disk: manifest.disk,
    label: manifest.label,
    date: manifest.timings.started,
    size: manifest.size,
    chunkSize: manifest.chunkSize,
    chunks: reader.entries.length,
    ...check,
    ...(digests ? { digests: true } : {}),
  };
  // The session's states and what each accepts: serve-restore-session.ts.
  const rs = new ServeRestoreSession({ ack, info });
  const perform = async (actions: ServeRestoreAction[]) => {
    for (const a of actions) {
      if (a.type === "digests") await sendBaseDigests(ch, digests!);
      // (the session is over when it says why: the other side may be gone)
      else if (a.msg.type === MsgType.ERROR) await ch.sendJson(a.msg.type, a.msg.body).catch(() => {});
      else await ch.sendJson(a.msg.type, a.msg.body);
    }
  };
  // (read afresh each time: every step may change it)
  const phase = (): ServeRestoreState["name"] => rs.state.name;
  const next = (ms: number, waitingFor: string): Promise<ServeRestoreEvent> =>
    ch.recv(ms, waitingFor).then(
      (frame) => ({ type: "frame", frame }),
      (e: unknown) => ({ type: "broken", error: asTbError(e) }),
    );
  try {
    await perform(rs.step({ type: "offer" }, Date.now()));
    // The other side confirms (a person may be reading a prompt) or gives up.
    // A delta restorer first reads its whole target (PROGRESS keepalives meanwhile).
    while (phase() === "offering") await perform(rs.step(await next(opts.idleMs, "the restoring side's go-ahead"), Date.now()));
    // (a go-ahead puts the session in "sending", with the chunks asked for)
    if (rs.state.name === "sending") {
      const { want } = rs.state;
      opts.reporter.info(`restoring ${manifest.id} to ${hello.host?.hostname}${ch.conn.peer ? ` via ${ch.conn.peer}` : ""} (${manifest.size} bytes)`);
      // The restoring side may stop (a bad target, Ctrl-C) while we send: on a
      // device our writes would go on succeeding into the void for the rest of
      // the backup. Every send races its leaving; then its frames tell why.
      const { left, forget } = ch.peerLeaving();
      forgetLeaving = forget;
      const send = async (sending: Promise<void>) => {
        if (await left.race(sending)) return;
        while (phase() === "sending") await perform(rs.step(await next(0, "the restoring side"), Date.now()));
        throw LEFT;
      };
      let offset = 0;
      let sent = 0;
      let sentBytes = 0;
      // one frame buffer, refilled for every chunk: the stored frame is read straight into its payload
      let frame = new Uint8Array(dataFrameSize(compressBound(manifest.chunkSize)));
      for (let i = 0; i < reader.entries.length; i++) {
        const e = reader.entries[i]!;
        const damaged = (why: string) => new TbError("VERIFY", `backup ${manifest.id}: chunk ${i} is damaged: ${why}`, "the stored backup is damaged");
        if (want && !wants(want, i)) {
          // the restorer's target already holds this chunk: keep the chunk list in step
          nextChunkLine(reader, list, i, damaged);
          offset += e.rawSize;
          continue;
        }
        if (frame.length < dataFrameSize(e.compressedSize)) frame = new Uint8Array(dataFrameSize(e.compressedSize));
        const { line, frame: z } = readStoredChunk(reader, list, i, frame.subarray(DATA_PAYLOAD_AT), damaged);
        const header = { index: i, rawLength: e.rawSize, offset, checksum: line!.checksum };
        if (isZeroFrame(z, e.rawSize, header.checksum)) await send(ch.sendFrame(zeroRecordFrame(header)));
        else await send(ch.sendFrame(frame.subarray(0, sealDataFrame(frame, header, z.length))));
        offset += e.rawSize;
        sent++;
        sentBytes += e.rawSize;
        if ((i & 15) === 0) opts.reporter.progress({ phase: `serve restore${ch.conn.peer ? ` via ${ch.conn.peer}` : ""}`, bytes: offset, total: manifest.size });
      }
      await perform(rs.step({ type: "sent", sent }, Date.now()));
      if (want) opts.reporter.info(`restore of ${manifest.id}: the target already held ${reader.entries.length - sent} of ${reader.entries.length} chunks; sent ${sent} (${sentBytes} bytes)`);
      // Wait for the other side's word: written, synced and read back (or why not).
      // It reads a big disk back for minutes, saying PROGRESS every few seconds.
      while (phase() === "confirming") await perform(rs.step(await next(opts.idleMs, "the restoring side's result"), Date.now()));
    }
  } catch (e) {
    // (LEFT: the session already failed with the restoring side's reason)
    if (e !== LEFT) await perform(rs.step({ type: "failed", error: asTbError(e) }, Date.now()));
  } finally {
    forgetLeaving();
    reader.close();
    list.close();
  }
  const s = rs.state;
  const host = hello.host?.hostname;
  switch (s.name) {
    case "done":
    case "unconfirmed": {
      const ok = s.name === "done";
      const message = s.name === "done" ? "" : s.message;
      opts.reporter.info(ok ? `restore of ${manifest.id} to ${host} done` : `restore of ${manifest.id} to ${host} failed: ${message}`);
      return {
        result: { ok, role: "restore", id: manifest.id, host, bytes: manifest.size, ...check, seconds: (Date.now() - started) / 1000, error: ok ? undefined : { code: "PEER", message } },
        carried: null,
      };
    }
    case "declined":
      opts.reporter.info(`restore of ${manifest.id} to ${host} not started: ${s.message}`);
      return { result: { ok: false, role: "restore", id: manifest.id, host, error: { code: "REFUSED", message: s.message } }, carried: null };
    case "failed":
      opts.reporter.info(`restore of ${manifest.id} failed: ${s.error.message}`);
      return { result: { ok: false, role: "restore", id: manifest.id, error: { code: s.error.code, message: s.error.message } }, carried: null };
    default:
      throw new TbError("INTERNAL", `serving a restore: it stopped in state ${s.name}`, "report this bug");
  }
}
