// receive without --stream: every Thunderbolt peer that offers a stream, now
// or later, gets its own stream (src/thunderbolt/setup.ts, the same set-up as
// for one peer: its own group under that peer's service, its own HopIDs and
// /dev/tbstreamN) and its own connection. The listener yields one connection
// per peer, marked concurrent: receive serves them side by side, one session
// at a time on each device. A peer that goes (unplugged, or its stream
// service gone) has its stream torn down; when it comes back, or offers its
// stream under another service, it is set up afresh. Closing the listener
// (or the process exiting) tears down every stream it made.
//
// A peer whose stream cannot be set up or opened is named in a line and
// skipped; the receiver stops only when nothing can be served: every peer of
// the first scan failed (decided once all their set-ups are done), or, with
// `one` (receive --once), the one peer it serves failed.
import { TbError, asTbError } from "../errors.ts";
import { AutoStream, ensurePlatform, label, matches } from "../thunderbolt/setup.ts";
import { deviceNames, readTopology, streamServiceOf, type Peer } from "../thunderbolt/sysfs.ts";
import { openDevice } from "./device.ts";
import type { Conn, Listener, Transport } from "./types.ts";

const POLL_MS = 500;
/** peers are read in full when the device list changes, and at least this often */
const FULL_SCAN_EVERY = 20;
/** how long one peer's set-up may wait for its device node and attributes */
const SETUP_WAIT_MS = 10_000;

export interface PeersOptions {
  /** only the peer with this unique_id, device name or XDomain id */
  peer?: string;
  hopids?: [number, number];
  ringSize?: number;
  throttling?: number;
  /** one line per event (a peer set up, gone, skipped) */
  log: (message: string) => void;
  /**
   * receive --once: serve one peer only. Several offering a stream at the
   * first look is USAGE (choose one with --peer, as for push); one that
   * appears after the first is chosen is named and not served.
   */
  one?: boolean;
}

/** One peer being served: its stream and, while open, its connection. */
interface Served {
  /** the service it offers its stream under (e.g. 0-3.0): a new one is a new stream */
  service: string;
  name: string;
  auto: AutoStream;
  device: string;
  gone: boolean;
  /** resolves when the current connection is closed */
  ended: Promise<void> | null;
}

/** A name for log lines: the peer's device name and XDomain (host-b 0-3). */
function peerName(p: Peer): string {
  return `${p.deviceName ?? "?"} ${p.id}`;
}

export class ThunderboltPeers implements Transport {
  constructor(private readonly opts: PeersOptions) {}

  connect(): Promise<Conn> {
    throw new TbError("INTERNAL", "the Thunderbolt peers transport only listens", "");
  }

  async listen(): Promise<Listener> {
    ensurePlatform(); // a missing module or configfs: said now, not never
    return new PeersListener(this.opts);
  }
}

class PeersListener implements Listener {
  readonly description = "every Thunderbolt peer's stream";
  private readonly served = new Map<string, Served>();
  /** services being set up now, and ones that failed (skipped until they go away) */
  private readonly starting = new Set<string>();
  private readonly skipped = new Set<string>();
  /** set-ups in progress: torn down with the others on exit (a group made, its device not there yet) */
  private readonly settingUp = new Set<AutoStream>();
  /** the services offered at the first scan, and those of them that failed */
  private initial: Set<string> | null = null;
  private readonly initialFailed = new Set<string>();
  /** a connection was handed out: from then on one peer's error never stops the receiver */
  private everServed = false;
  /** with `one`: the peer served (its unique_id, else XDomain id), and peers said not to be */
  private chosen: string | null = null;
  private readonly saidNotChosen = new Set<string>();
  private readonly ready: Conn[] = [];
  private wake: (() => void) | null = null;
  private failure: TbError | null = null;
  private closed = false;
  /** the last "waiting for ..." line, said once until it changes */
  private saidWaiting = "";
  /** the device list at the last full read, and ticks since */
  private lastNames: string | null = null;
  private quietTicks = 0;
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly onExit = () => this.teardownAll();

  constructor(private readonly opts: PeersOptions) {
    // Ctrl-C, SIGTERM and errors end in process.exit: tear down there too
    process.on("exit", this.onExit);
    this.timer = setInterval(() => this.scan(), POLL_MS);
    this.scan();
  }

  async accept(): Promise<Conn | null> {
    for (;;) {
      const c = this.ready.shift();
      if (c) return c;
      if (this.failure) throw this.failure;
      if (this.closed) return null;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const c of this.ready.splice(0)) await c.close();
    this.teardownAll();
    process.off("exit", this.onExit);
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private teardownAll(): void {
    for (const s of this.served.values()) {
      s.gone = true;
      s.auto.teardown();
    }
    this.served.clear();
    for (const auto of this.settingUp) auto.teardown();
  }

  /** Sets up new peers and tears down the streams of peers that went. */
  private scan(): void {
    if (this.closed) return;
    // one directory read per tick; every peer's attributes only when it changed
    const names = deviceNames().join(" ");
    if (names === this.lastNames && ++this.quietTicks < FULL_SCAN_EVERY) return;
    this.lastNames = names;
    this.quietTicks = 0;
    let all: Peer[];
    try {
      all = readTopology().peers.filter((p) => !this.opts.peer || matches(p, this.opts.peer));
    } catch {
      this.lastNames = null; // read again at the next tick
      return;
    }
    let peers = all.filter((p) => streamServiceOf(p));
    if (this.opts.one) {
      peers = this.choose(peers);
      if (this.failure) return;
    }
    const offered = new Map(peers.map((p) => [streamServiceOf(p)!.id, p]));
    for (const [service, s] of this.served) {
      if (offered.has(service)) continue;
      this.served.delete(service);
      s.gone = true;
      // its device fails at once (ENXIO); removing the group also ends an open still waiting
      s.auto.teardown();
      this.opts.log(`peer ${s.name} is gone: its stream ${s.device} is removed (plugging it in again sets it up afresh)`);
    }
    for (const service of this.skipped) if (!offered.has(service)) this.skipped.delete(service);
    this.initial ??= new Set(offered.keys());
    for (const [service, p] of offered) {
      if (this.served.has(service) || this.starting.has(service) || this.skipped.has(service)) continue;
      this.starting.add(service);
      void this.setUp(service, p).finally(() => this.starting.delete(service));
    }
    const none = offered.size === 0 && this.served.size === 0 && this.starting.size === 0;
    const waiting = !none
      ? ""
      : all.length
        ? `peer ${all.map(label).join("; ")} is connected but offers no stream service yet: start tbbackup on the other machine (it loads thunderbolt_stream)`
        : this.opts.peer
          ? `waiting for peer '${this.opts.peer}': plug its USB4/Thunderbolt cable and start tbbackup on it`
          : "waiting for Thunderbolt peers: plug a USB4/Thunderbolt cable and start tbbackup on the other machine";
    if (waiting && waiting !== this.saidWaiting) this.opts.log(waiting);
    this.saidWaiting = waiting;
  }

  /** With `one`: the peers to serve (the one chosen); several at the first look is USAGE. */
  private choose(peers: Peer[]): Peer[] {
    if (this.chosen === null) {
      if (peers.length > 1) {
        this.failure = new TbError("USAGE", `${peers.length} Thunderbolt peers offer a stream: ${peers.map(label).join("; ")}; receive --once serves one`, "choose one with --peer ID (its unique_id or device name), or leave out --once to serve them all");
        this.poke();
        return [];
      }
      if (peers.length === 1) this.chosen = peers[0]!.uniqueId ?? peers[0]!.id;
    }
    const chosen = this.chosen;
    if (chosen === null) return peers;
    for (const p of peers)
      if (!matches(p, chosen) && !this.saidNotChosen.has(p.id)) {
        this.saidNotChosen.add(p.id);
        this.opts.log(`peer ${label(p)} is not served: receive --once serves only ${chosen} (run another receive --peer for it, or leave out --once)`);
      }
    return peers.filter((p) => matches(p, chosen));
  }

  private async setUp(service: string, p: Peer): Promise<void> {
    const name = peerName(p);
    const auto = new AutoStream({ mode: "allocate", waitMs: SETUP_WAIT_MS, peer: p.id, hopids: this.opts.hopids, ringSize: this.opts.ringSize, throttling: this.opts.throttling });
    let device: string;
    this.settingUp.add(auto);
    try {
      device = await auto.setup();
      if (auto.peer && streamServiceOf(auto.peer)?.id !== service) throw new TbError("STREAM_SETUP", `peer ${name} changed its stream service while it was being set up`, "");
    } catch (e) {
      auto.teardown();
      this.refuse(service, name, asTbError(e));
      return;
    } finally {
      this.settingUp.delete(auto);
    }
    if (this.closed) {
      auto.teardown();
      return;
    }
    const s: Served = { service, name, auto, device, gone: false, ended: null };
    this.served.set(service, s);
    this.opts.log(`stream ready: ${device} with ${label(p)}`);
    void this.serve(s);
  }

  /**
   * A peer that cannot be set up or opened: a line names it and the others go
   * on. The receiver stops with the cause (as for one peer: another receiver
   * holds the stream, no HopID left) only while nothing has been served yet
   * and nothing else can be: every peer of the first scan has failed (a
   * set-up still in progress may yet succeed), or, with `one`, the one peer.
   */
  private refuse(service: string, name: string, err: TbError): void {
    if (this.closed) return;
    this.skipped.add(service);
    if (this.initial?.has(service)) this.initialFailed.add(service);
    const nothingLeft = this.opts.one || (this.initial !== null && this.initial.size > 0 && this.initialFailed.size === this.initial.size);
    if (!this.everServed && nothingLeft) {
      this.failure ??= err;
      this.poke();
      return;
    }
    this.opts.log(`peer ${name} is not served: ${err.oneLine()} (unplug and plug it in again to retry)`);
  }

  /** Opens the peer's device, hands the connection out, and opens it again once it is closed. */
  private async serve(s: Served): Promise<void> {
    while (!s.gone && !this.closed) {
      let conn: Conn;
      try {
        // the stream is attached: open returns at once (one open per connection, never a retry loop)
        conn = await openDevice(s.device, null, true);
      } catch (e) {
        if (s.gone || this.closed) return;
        s.gone = true;
        this.served.delete(s.service);
        s.auto.teardown();
        this.refuse(s.service, s.name, asTbError(e));
        return;
      }
      if (s.gone || this.closed) {
        await conn.close();
        return;
      }
      this.everServed = true;
      let ended!: () => void;
      s.ended = new Promise<void>((r) => (ended = r));
      this.ready.push(peerConn(conn, `${s.device} (${s.name})`, s.name, ended));
      this.poke();
      await s.ended;
    }
  }
}

/** The device's connection as one peer's: named after it, concurrent, telling the listener when it is closed. */
function peerConn(conn: Conn, description: string, peer: string, ended: () => void): Conn {
  return {
    read: () => conn.read(),
    release: conn.release ? (chunk) => conn.release!(chunk) : undefined,
    write: (data) => conn.write(data),
    async close() {
      await conn.close();
      ended();
    },
    description,
    lossy: true,
    concurrent: true,
    peer,
  };
}
