// A read-only NBD server for one export (a stored backup, export.ts): fixed
// newstyle handshake, NBD_OPT_GO/INFO/LIST/ABORT/EXPORT_NAME/STRUCTURED_REPLY,
// reads; writes refused with EPERM. Each connection decodes what its client
// sends (protocol.ts) and answers one request at a time, waiting for the
// socket to drain, so a client that stops reading holds at most about a MiB
// of replies and never holds up the others.
import * as net from "node:net";
import * as fs from "node:fs";
import { TbError, errnoText, isErrno } from "../core/errors.ts";
import { inUse, removeStaleSocket } from "../transport/net.ts";
import { DamagedChunk, type ImageExport } from "./export.ts";
import {
  BASE_ALLOCATION,
  CMD_FLAG_REQ_ONE,
  ClientDecoder,
  Cmd,
  Errno,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  Info,
  MAX_REQUEST_LENGTH,
  Opt,
  Rep,
  REPLY_FLAG_DONE,
  ReplyType,
  TFLAG_CAN_MULTI_CONN,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
  TFLAG_SEND_FLUSH,
  STATE_HOLE,
  STATE_ZERO,
  blockStatusReply,
  exportNameReply,
  greeting,
  infoBlockSize,
  infoExport,
  infoText,
  metaContext,
  offsetDataHeader,
  optionError,
  optionReply,
  parseGo,
  parseMetaContext,
  serverEntry,
  simpleReply,
  structuredError,
  structuredHeader,
  type ClientEvent,
  type Request,
} from "./protocol.ts";

export type ListenAddress = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

export const TRANSMISSION_FLAGS = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
/** clients served at once; more are turned away (each holds at most ~1 MiB of unsent replies) */
export const MAX_CLIENTS = 128;
/** a client must finish option haggling within this time */
export const HANDSHAKE_MS = 30_000;
/** unsent reply bytes after which a connection waits for its client to read */
const WRITE_HIGH = 1024 * 1024;
/** the id of base:allocation, our one metadata context */
const ALLOCATION_ID = 1;
/** extents in one block status reply at most */
const MAX_EXTENTS = 1024;
/** undecoded bytes from a client after which its socket stops being read */
const READ_HIGH = 256 * 1024;

/** Parses --listen: unix:PATH, tcp:HOST:PORT, tcp:PORT (loopback). */
export function parseListen(spec: string): ListenAddress {
  if (spec.startsWith("unix:") && spec.length > 5) return { kind: "unix", path: spec.slice(5) };
  const m = /^tcp:(?:(?:\[([^\]]+)\]|([^:\[\]]*)):)?(\d+)$/.exec(spec);
  if (m && Number(m[3]) >= 1 && Number(m[3]) <= 65535) return { kind: "tcp", host: m[1] ?? (m[2] || "127.0.0.1"), port: Number(m[3]) };
  throw new TbError("USAGE", `unknown --listen '${spec}'`, "use unix:/path/to.sock or tcp:HOST:PORT (tcp:PORT listens on loopback only)");
}

export function describeListen(a: ListenAddress): string {
  return a.kind === "unix" ? `unix:${a.path}` : `tcp:${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

export class NbdServer {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private closing = false;
  readonly counts = { connections: 0, refused: 0, requests: 0, errors: 0 };

  constructor(
    readonly exp: ImageExport,
    readonly address: ListenAddress,
    private readonly log: (line: string) => void,
  ) {}

  async listen(): Promise<void> {
    const desc = describeListen(this.address);
    // (half-open: a client that has sent everything still gets its answers; each connection is ended by us)
    const server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    let oldMask: number | null = null;
    if (this.address.kind === "unix") {
      removeStaleSocket(this.address.path);
      oldMask = process.umask(0o177); // the socket is created 0600
    }
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        if (this.address.kind === "unix") server.listen(this.address.path, () => resolve());
        else server.listen(this.address.port, this.address.host, () => resolve());
      });
    } catch (e) {
      if (isErrno(e, "EADDRINUSE")) throw inUse(desc);
      throw new TbError("DEST", `cannot listen on ${desc}: ${errnoText(e)}`, "check the path or port and permissions");
    } finally {
      if (oldMask !== null) process.umask(oldMask);
    }
    if (this.address.kind === "unix") fs.chmodSync(this.address.path, 0o600);
    server.on("error", (e) => this.log(`listener error: ${errnoText(e)}`));
    this.server = server;
  }

  /** Stops listening, ends every connection and removes a unix socket file. */
  async close(): Promise<void> {
    this.closing = true;
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    if (this.address.kind === "unix") fs.rmSync(this.address.path, { force: true });
  }

  private accept(sock: net.Socket): void {
    if (this.closing || this.sockets.size >= MAX_CLIENTS) {
      this.counts.refused++;
      if (!this.closing && this.counts.refused % 100 === 1) this.log(`too many clients at once (${MAX_CLIENTS}): a connection was refused`);
      sock.destroy();
      return;
    }
    this.counts.connections++;
    this.sockets.add(sock);
    new Connection(this, sock).run().then(
      () => sock.destroy(),
      (e: unknown) => {
        this.log(`a connection ended on an error: ${e instanceof Error ? e.message : String(e)}`);
        sock.destroy();
      },
    ).finally(() => this.sockets.delete(sock));
  }

  logLine(line: string): void {
    this.log(line);
  }
}

class Connection {
  private readonly dec = new ClientDecoder();
  /** the socket is gone (closed, reset): nothing more can be sent */
  private ended = false;
  /** the client half-closed: answer what it sent, then close */
  private peerDone = false;
  private wake: (() => void) | null = null;
  private structured = false;
  /** base:allocation selected by NBD_OPT_SET_META_CONTEXT */
  private allocation = false;
  private noZeroes = false;
  private transmitting = false;

  constructor(
    private readonly srv: NbdServer,
    private readonly sock: net.Socket,
  ) {
    sock.setNoDelay?.(true);
    sock.on("data", (b: Buffer) => {
      this.dec.push(new Uint8Array(b.buffer, b.byteOffset, b.length));
      if (this.dec.pending > READ_HIGH) sock.pause();
      this.poke();
    });
    const end = () => {
      this.ended = true;
      this.poke();
    };
    // the client has sent all it will: what it sent is still answered
    sock.on("end", () => {
      this.peerDone = true;
      this.poke();
    });
    sock.on("close", end);
    sock.on("error", end);
    sock.on("drain", () => this.poke());
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private waitEvent(): Promise<void> {
    return new Promise((r) => (this.wake = r));
  }

  /** Queues bytes; `release` is called once the socket is done with them. */
  private async write(b: Uint8Array, release?: () => void): Promise<void> {
    if (this.ended) return release?.();
    if (release) this.sock.write(b, () => release());
    else this.sock.write(b);
    while (!this.ended && this.sock.writableLength > WRITE_HIGH) await this.waitEvent();
  }

  async run(): Promise<void> {
    const timer = setTimeout(() => {
      if (!this.transmitting && !this.ended) {
        this.srv.logLine(`a client did not finish the handshake within ${HANDSHAKE_MS / 1000} s: connection closed`);
        this.ended = true;
        this.sock.destroy();
        this.poke();
      }
    }, HANDSHAKE_MS);
    try {
      await this.write(greeting());
      while (!this.ended) {
        const ev = this.dec.next();
        if (!ev) {
          if (this.peerDone) break;
          if (this.sock.isPaused()) this.sock.resume();
          await this.waitEvent();
          continue;
        }
        if ((await this.handle(ev)) === "close") break;
      }
      // what is still queued goes out before the socket is closed (NBD_CMD_DISC, NBD_OPT_ABORT)
      // (a client that never reads them does not keep the connection: 5 s)
      if (!this.ended && this.sock.writableLength > 0) await Promise.race([new Promise<void>((r) => this.sock.end(r)), Bun.sleep(5000)]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async handle(ev: ClientEvent): Promise<"close" | void> {
    switch (ev.kind) {
      case "flags":
        if (ev.flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) {
          this.srv.logLine(`a client sent unknown handshake flags 0x${ev.flags.toString(16)}: connection closed`);
          return "close";
        }
        this.noZeroes = (ev.flags & FLAG_C_NO_ZEROES) !== 0;
        return;
      case "garbage":
        this.srv.logLine(`a client sent ${ev.what}: connection closed`);
        return "close";
      case "optionTooLong":
        await this.write(optionError(ev.option, Rep.ERR_TOO_BIG, `option of ${ev.length} bytes is too long`));
        this.srv.logLine(`a client sent an option of ${ev.length} bytes: connection closed`);
        return "close";
      case "option":
        return this.option(ev.option, ev.data);
      case "payloadSkipped":
        return this.reply(ev.request, Errno.EPERM, "this export is read-only");
      case "request":
        return this.request(ev.request);
    }
  }

  private nameMatches(name: string): boolean {
    return name === "" || name === this.srv.exp.id;
  }

  private async option(option: number, data: Uint8Array): Promise<"close" | void> {
    const exp = this.srv.exp;
    switch (option) {
      case Opt.EXPORT_NAME: {
        // this option cannot be answered with an error: an unknown name ends the connection
        if (!this.nameMatches(new TextDecoder().decode(data))) return "close";
        await this.write(exportNameReply(exp.size, TRANSMISSION_FLAGS, this.noZeroes));
        this.dec.transmission();
        this.transmitting = true;
        return;
      }
      case Opt.ABORT:
        await this.write(optionReply(option, Rep.ACK));
        return "close";
      case Opt.LIST:
        if (data.length !== 0) return this.write(optionError(option, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data"));
        await this.write(optionReply(option, Rep.SERVER, serverEntry("", `tbbackup ${exp.id} (read-only)`)));
        return this.write(optionReply(option, Rep.ACK));
      case Opt.INFO:
      case Opt.GO: {
        const go = parseGo(data);
        if (!go) return this.write(optionError(option, Rep.ERR_INVALID, "malformed NBD_OPT_GO/INFO data"));
        if (!this.nameMatches(go.name)) return this.write(optionError(option, Rep.ERR_UNKNOWN, `no export named '${go.name.slice(0, 100)}' (use the default export, "")`));
        await this.write(optionReply(option, Rep.INFO, infoExport(exp.size, TRANSMISSION_FLAGS)));
        if (go.infos.includes(Info.NAME)) await this.write(optionReply(option, Rep.INFO, infoText(Info.NAME, "")));
        if (go.infos.includes(Info.DESCRIPTION)) await this.write(optionReply(option, Rep.INFO, infoText(Info.DESCRIPTION, `tbbackup ${exp.id}`)));
        await this.write(optionReply(option, Rep.INFO, infoBlockSize(1, 4096, MAX_REQUEST_LENGTH)));
        await this.write(optionReply(option, Rep.ACK));
        if (option === Opt.GO) {
          this.dec.transmission();
          this.transmitting = true;
        }
        return;
      }
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.write(optionError(option, Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data"));
        this.structured = true;
        return this.write(optionReply(option, Rep.ACK));
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT: {
        if (!this.structured) return this.write(optionError(option, Rep.ERR_INVALID, "negotiate structured replies first"));
        const q = parseMetaContext(data);
        if (!q) return this.write(optionError(option, Rep.ERR_INVALID, "malformed meta context data"));
        if (!this.nameMatches(q.name)) return this.write(optionError(option, Rep.ERR_UNKNOWN, `no export named '${q.name.slice(0, 100)}'`));
        // the one context served: base:allocation (zero chunks are holes that read as zeros)
        const wanted = option === Opt.LIST_META_CONTEXT ? q.queries.length === 0 || q.queries.some((x) => x === "base:" || x === BASE_ALLOCATION) : q.queries.includes(BASE_ALLOCATION);
        if (option === Opt.SET_META_CONTEXT) this.allocation = wanted;
        if (wanted) await this.write(optionReply(option, Rep.META_CONTEXT, metaContext(ALLOCATION_ID, BASE_ALLOCATION)));
        return this.write(optionReply(option, Rep.ACK));
      }
      default:
        return this.write(optionError(option, Rep.ERR_UNSUP, `option ${option} is not supported by this server`));
    }
  }

  /** A reply without data: success, or an error (with a message when replies are structured). */
  private reply(req: Request, error: number, message = ""): Promise<void> {
    this.srv.counts.requests++;
    if (error) this.srv.counts.errors++;
    if (!this.structured) return this.write(simpleReply(error, req.handle));
    if (error) return this.write(structuredError(req.handle, error, message));
    return this.write(structuredHeader(REPLY_FLAG_DONE, ReplyType.NONE, req.handle, 0));
  }

  private async request(req: Request): Promise<"close" | void> {
    switch (req.type) {
      case Cmd.READ:
        return this.read(req);
      case Cmd.DISC:
        return "close";
      case Cmd.FLUSH:
        return this.reply(req, 0);
      case Cmd.BLOCK_STATUS:
        return this.blockStatus(req);
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        return this.reply(req, Errno.EPERM, "this export is read-only");
      default:
        return this.reply(req, Errno.EINVAL, `command ${req.type} is not supported`);
    }
  }

  private async blockStatus(req: Request): Promise<void> {
    const exp = this.srv.exp;
    if (!this.structured || !this.allocation) return this.reply(req, Errno.EINVAL, "block status needs structured replies and the base:allocation context");
    if (req.length === 0 || req.offset + BigInt(req.length) > BigInt(exp.size)) return this.reply(req, Errno.EINVAL, `block status at ${req.offset} of ${req.length} bytes is outside the ${exp.size}-byte export`);
    const extents = exp.extents(Number(req.offset), req.length, req.flags & CMD_FLAG_REQ_ONE ? 1 : MAX_EXTENTS);
    this.srv.counts.requests++;
    return this.write(blockStatusReply(req.handle, ALLOCATION_ID, extents.map((e) => ({ length: e.length, flags: e.zero ? STATE_HOLE | STATE_ZERO : 0 }))));
  }

  private async read(req: Request): Promise<void> {
    const exp = this.srv.exp;
    if (req.length > MAX_REQUEST_LENGTH) return this.reply(req, Errno.EINVAL, `a read of ${req.length} bytes is longer than the ${MAX_REQUEST_LENGTH} allowed`);
    if (req.offset + BigInt(req.length) > BigInt(exp.size)) return this.reply(req, Errno.EINVAL, `a read at ${req.offset} of ${req.length} bytes goes past the end of the ${exp.size}-byte export`);
    const offset = Number(req.offset);
    if (req.length === 0) return this.reply(req, 0);
    // every chunk is checked before the first byte goes out: a damaged one fails the whole read
    try {
      await exp.check(offset, req.length);
    } catch (e) {
      if (e instanceof DamagedChunk) return this.reply(req, Errno.EIO, e.message);
      throw e;
    }
    this.srv.counts.requests++;
    if (this.structured) await this.write(offsetDataHeader(req.handle, offset, req.length, true));
    else await this.write(simpleReply(0, req.handle));
    // (a chunk evicted meanwhile is read and checked again; should that fail, the
    // reply cannot be taken back and the connection is cut)
    for (const piece of exp.pieces(offset, req.length)) await this.write(piece, exp.pin(piece));
  }
}
