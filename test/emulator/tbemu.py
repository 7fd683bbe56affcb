#!/usr/bin/python3
"""tbemu: an emulator of the thunderbolt_stream (USB4STREAM, Linux v7.2) driver's
user-space boundary, for tests. One FUSE file system serves the trees of
hosts joined by emulated cables: A and B on one cable by default, or e.g. a
keeper K with a cable to each of A and B (--topology A-K,B-K), where each
cable is its own XDomain with its own services, HopIDs and stream devices:

    MOUNT/A/sys/bus/thunderbolt/devices/...   domain, host router, peer XDomain, services
    MOUNT/A/sys/kernel/config/thunderbolt/stream/<service>/<name>/{index,in_hopid,...}
    MOUNT/A/dev/tbstreamN                       the stream device (a FUSE file, direct_io)
    MOUNT/A/proc -> /proc                       so /proc/*/fd scans work under a sysroot
    MOUNT/B/...                                 the other host
    MOUNT/ctl                                   write commands: plug, unplug, flip ...
    MOUNT/state                                 read: JSON snapshot for tests

It follows drivers/thunderbolt/stream.c (v7.2) rather than a friendlier idea
of it; see README.md next to this file for each semantic and the few places
where it differs. Run: tbemu.py MOUNTPOINT [options]; tbemu.py ctl MOUNTPOINT CMD...
Test tooling only: nothing here ships with tbbackup.
"""
import argparse
import collections
import ctypes
import errno
import json
import os
import random
import re
import stat
import sys
import threading
import time

import struct
import traceback

FRAME = 4096            # TB_MAX_FRAME_SIZE
MIN_HOPID = 8           # TB_PATH_MIN_HOPID
RING_DEFAULT, RING_MIN, RING_MAX = 256, 32, 4096
THROTTLE_DEFAULT, THROTTLE_MAX = 8192, 16776960
NAME_MAX = 8            # TB_PROPERTY_KEY_SIZE
CLOSE_FLUSH_S = 0.5     # tb_ring_flush(ring, 500) per ring
DATA, CLOSE = "data", "close"

LOCK = threading.RLock()
COND = threading.Condition(LOCK)


def err(code):
    return OSError(code, os.strerror(code))


def kstrtoint(text, unsigned=False):
    """The kernel's kstrtoint/kstrtouint with base 0: one trailing newline,
    0x for hex, a leading 0 for octal; EINVAL on anything else, ERANGE on overflow."""
    s = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    if s.endswith("\n"):
        s = s[:-1]
    neg = False
    if s.startswith("+"):
        s = s[1:]
    elif s.startswith("-") and not unsigned:
        neg, s = True, s[1:]
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
        v = int(s[2:], 16)
    elif re.fullmatch(r"0[0-7]*", s):
        v = int(s, 8)
    elif re.fullmatch(r"[1-9][0-9]*", s):
        v = int(s, 10)
    else:
        raise err(errno.EINVAL)
    v = -v if neg else v
    lo, hi = (0, 2**32 - 1) if unsigned else (-2**31, 2**31 - 1)
    if v < lo or v > hi:
        raise err(errno.ERANGE)
    return v


class Host:
    def __init__(self, name, device_name, unique_id, max_hopid, net, loaded, mounted):
        self.name = name
        self.device_name = device_name
        self.vendor_name = "tbemu"
        self.unique_id = unique_id
        self.max_hopid = max_hopid    # this host's own (local) maximum HopID
        self.net = net                # thunderbolt_net loaded: offers a network service, holds HopID 8
        self.loaded = loaded          # thunderbolt_stream loaded
        self.mounted = mounted        # configfs mounted at /sys/kernel/config
        self.svc_groups = {}          # configfs stream/<service> -> {name: Dev}
        self.devs = {}                # index -> Dev (alive, i.e. /dev node present or still open); one IDA per host
        self.ends = []                # this host's side of each cable, in port order
        self.stats = collections.Counter()

    def alloc_index(self):
        i = 0
        while i in self.devs:
            i += 1
        return i


class End:
    """One host's side of one cable: the peer's XDomain as this host sees it,
    with the per-XDomain HopID IDAs (tb_xdomain_alloc_in/out_hopid) and this
    host's local properties for that service (the announcements)."""
    def __init__(self, host, link, route):
        self.host, self.link, self.route = host, link, route
        self.in_ida, self.out_ida = set(), set()
        self.announced = {}           # local XDomain properties on this service: name -> (in, out)
        self.probed = False           # the stream service is bound to thunderbolt_stream here

    def xd_name(self):
        return "0-%x" % self.route

    def other(self):
        return self.link.b if self is self.link.a else self.link.a


class Link:
    """One cable between two hosts."""
    def __init__(self, a, a_route, b, b_route, plugged):
        self.a, self.b = End(a, self, a_route), End(b, self, b_route)
        self.plugged = plugged
        a.ends.append(self.a)
        b.ends.append(self.b)

    def name(self):
        return "%s-%s" % (self.a.host.name, self.b.host.name)


class Dev:
    def __init__(self, host, svc, name, index):
        self.host, self.svc, self.name, self.index = host, svc, name, index
        self.in_hopid = self.out_hopid = 0
        self.ring_size, self.throttling = RING_DEFAULT, THROTTLE_DEFAULT
        self.end = None       # the cable end (XDomain) it is attached to; None = no stream
        self.gen = 0          # bumps at each attach; fds from an older attach are dead
        self.users = 0
        self.closed = False
        self.removed = False
        self.rx = collections.deque()  # [kind, bytearray, offset]
        self.tx = collections.deque()  # [kind, bytes]
        self.opens = 0
        self.rx_bytes = 0     # data bytes delivered into its RX ring, ever (tests watch traffic by it)

    @property
    def attached(self):
        return self.end is not None


# Hosts A and B keep the identities the two-host tests pin; others are made up
# from their letter. Routes: a host's ports in order (A sees its peer at 0-1,
# B at 0-503, a keeper K at 0-1, 0-3, 0-5, ...).
IDS = {"A": "a1a1a1a1-0000-4000-8000-00000000000a", "B": "b2b2b2b2-0000-4000-8000-00000000000b"}
ROUTE_BASE = {"B": 0x503}


def parse_topology(text):
    """'A-B' (the default: one cable) or 'A-K,B-K,...': cables between hosts named by one capital letter."""
    links = []
    for item in text.split(","):
        m = re.fullmatch(r"([A-Z])-([A-Z])", item.strip())
        if not m or m.group(1) == m.group(2):
            raise SystemExit("tbemu: --topology wants cables like A-B or A-K,B-K (one capital letter per host)")
        links.append((m.group(1), m.group(2)))
    return links


class Emu:
    def __init__(self, args):
        self.hosts = {}
        self.links = []
        unplugged = set((args.unplugged or "").split(",")) if args.unplugged else set()
        for x, y in parse_topology(args.topology):
            for n in (x, y):
                if n not in self.hosts:
                    name = {"A": args.a_name, "B": args.b_name}.get(n, "host-" + n.lower())
                    uid = IDS.get(n, "%08x-0000-4000-8000-%012x" % (ord(n) * 0x01010101, ord(n)))
                    max_hopid = {"A": args.a_max_hopid, "B": args.b_max_hopid}.get(n, 19)
                    net = {"A": args.a_net, "B": args.b_net}.get(n, False)
                    self.hosts[n] = Host(n, name, uid, max_hopid, net, n not in args.unloaded, n not in args.unmounted)
            hx, hy = self.hosts[x], self.hosts[y]
            rx = ROUTE_BASE.get(x, 0x1) + 2 * len(hx.ends)
            ry = ROUTE_BASE.get(y, 0x1) + 2 * len(hy.ends)
            name = "%s-%s" % (x, y)
            plugged = not ("all" in unplugged or name in unplugged or "%s-%s" % (y, x) in unplugged)
            self.links.append(Link(hx, rx, hy, ry, plugged))
        self.flip_left = 0
        self.flip_skip = 0
        self.flip_from = None
        self.flips_done = 0
        self.log = []
        with LOCK:
            self.resync()

    def links_named(self, word):
        """The cables a plug/unplug argument names: all (none given), one ('A-K' or 'K-A'), or a host's."""
        if word is None:
            return list(self.links)
        out = [l for l in self.links if word in (l.name(), "%s-%s" % (l.b.host.name, l.a.host.name))]
        if not out and word in self.hosts:
            out = [e.link for e in self.hosts[word].ends]
        if not out:
            raise err(errno.EINVAL)
        return out

    # --- the peer's services as this host sees them ----------------------------
    def services(self, end):
        """[(name, key)] of the OTHER host's services, as service devices of that XDomain here."""
        if not end.link.plugged:
            return []
        p = end.other().host
        out, n = [], 0
        if p.net:
            out.append(("%s.%d" % (end.xd_name(), n), "network"))
            n += 1
        if p.loaded:
            out.append(("%s.%d" % (end.xd_name(), n), "stream"))
        return out

    def stream_service(self, end):
        for name, key in self.services(end):
            if key == "stream":
                return name
        return None

    def end_for_service(self, h, svc):
        """The cable end whose bound stream service is named `svc` on host h (tbstream_group_find)."""
        for end in h.ends:
            if end.probed and self.stream_service(end) == svc:
                return end
        return None

    # --- HopIDs (tb_xdomain_alloc_in/out_hopid: per-XDomain IDAs) ---------------
    def xd_alloc(self, ida, hopid, maximum):
        if hopid < 0:
            hopid = MIN_HOPID
        if hopid < MIN_HOPID or hopid > maximum:
            return -errno.EINVAL
        for v in range(hopid, maximum + 1):
            if v not in ida:
                ida.add(v)
                return v
        return -errno.ENOSPC

    def alloc(self, dev, which, hopid):
        """tbstream_dev_alloc_in_hopid / _out_hopid, on the XDomain the device is attached to."""
        end = dev.end
        ida = end.in_ida if which == "in" else end.out_ida
        maximum = dev.host.max_hopid if which == "in" else end.other().host.max_hopid
        cur = dev.in_hopid if which == "in" else dev.out_hopid
        if cur > 0 and cur != hopid:
            ida.discard(cur)
        if hopid == 0:
            setattr(dev, which + "_hopid", 0)
            return 0
        ret = self.xd_alloc(ida, hopid, maximum)
        if ret < 0:
            return ret
        if hopid > 0 and hopid != ret:
            ida.discard(ret)
            return -errno.EBUSY
        setattr(dev, which + "_hopid", ret)
        return 0

    def update_properties(self, end, name, in_hopid, out_hopid):
        """service_update_properties: per service, i.e. per peer."""
        if in_hopid < MIN_HOPID or out_hopid < MIN_HOPID:
            end.announced.pop(name, None)
        else:
            end.announced[name] = (in_hopid, out_hopid)

    # --- attach / detach (tbstream_dev_attach_stream / _detach_stream) ---------
    def attach(self, dev, end):
        dev.end = end
        dev.gen += 1
        if dev.in_hopid <= 0 and dev.out_hopid <= 0:
            ann = end.other().announced.get(dev.name)  # remote properties of this service
            if ann:
                if ann[0] >= MIN_HOPID:
                    dev.out_hopid = ann[0]
                if ann[1] >= MIN_HOPID:
                    dev.in_hopid = ann[1]
        if dev.in_hopid:
            self.alloc(dev, "in", dev.in_hopid)      # errors ignored, as in the driver
        if dev.out_hopid:
            self.alloc(dev, "out", dev.out_hopid)
        self.update_properties(end, dev.name, dev.in_hopid, dev.out_hopid)
        COND.notify_all()

    def detach(self, dev):
        end = dev.end
        if end is None:
            return
        dev.end = None
        if dev.out_hopid > 0:
            end.out_ida.discard(dev.out_hopid)
        if dev.in_hopid > 0:
            end.in_ida.discard(dev.in_hopid)
        self.update_properties(end, dev.name, 0, 0)
        dev.rx.clear()   # unplug: unread data is dropped
        dev.tx.clear()
        COND.notify_all()

    def resync(self):
        """Applies plug/unplug/module changes: probe or remove each stream service."""
        for link in self.links:
            for end in (link.a, link.b):
                h, p = end.host, end.other().host
                probed = link.plugged and h.loaded and p.loaded
                if probed == end.probed:
                    continue
                end.probed = probed
                if probed:
                    end.in_ida, end.out_ida = set(), set()
                    if h.net:  # thunderbolt_net took the first HopIDs on this XDomain
                        end.in_ida.add(MIN_HOPID)
                        end.out_ida.add(MIN_HOPID)
                    svc = self.stream_service(end)
                    for dev in h.svc_groups.get(svc, {}).values():
                        self.attach(dev, end)
                else:
                    # tbstream_remove: only the devices of this service; other peers' streams go on
                    for dev in reversed(list(h.devs.values())):
                        if dev.end is end:
                            self.detach(dev)
                    end.announced.clear()
                    end.in_ida, end.out_ida = set(), set()
        COND.notify_all()

    # --- the cable -------------------------------------------------------------
    def valid(self, dev, fd_gen=None):
        """tbstream_dev_valid: ENXIO without a live stream, EINVAL without HopIDs."""
        if not dev.attached or not dev.end.link.plugged or (fd_gen is not None and fd_gen != dev.gen):
            return errno.ENXIO
        if dev.in_hopid <= 0 or dev.out_hopid <= 0:
            return errno.EINVAL
        return 0

    def receiver(self, dev):
        """The device on the other end of dev's cable whose path receives what `dev`
        sends (its in HopID = our out HopID on that XDomain)."""
        o = dev.end.other()
        for d in o.host.devs.values():
            if d.end is o and d.users > 0 and d.in_hopid == dev.out_hopid and d.in_hopid > 0:
                return d
        return None

    def pump(self):
        """Moves frames from TX rings into the paired peer's RX ring. No path on
        the other side (not open, not paired): the frame is lost. RX full: it
        waits in TX (end-to-end flow control)."""
        moved = False
        for h in self.hosts.values():
            for dev in h.devs.values():
                while dev.tx:
                    if not dev.attached or not dev.end.link.plugged:
                        dev.tx.clear()
                        break
                    r = self.receiver(dev)
                    kind, data = dev.tx[0]
                    if r is None:
                        dev.tx.popleft()
                        h.stats["frames_dropped"] += 1
                        moved = True
                        continue
                    if len(r.rx) >= r.ring_size:
                        break
                    dev.tx.popleft()
                    buf = bytearray(data)
                    if kind == DATA and self.flip_left > 0 and (self.flip_from in (None, h.name)):
                        if self.flip_skip > 0:
                            self.flip_skip -= 1
                        else:
                            i = random.randrange(len(buf))
                            buf[i] ^= 1 << random.randrange(8)
                            self.flip_left -= 1
                            self.flips_done += 1
                    r.rx.append([kind, buf, 0])
                    if kind == DATA:
                        r.rx_bytes += len(buf)
                    moved = True
        if moved:
            COND.notify_all()

    # --- commands ----------------------------------------------------------------
    def command(self, line):
        w = line.split()
        if not w:
            return
        c = w[0]
        self.log.append(line)
        if c in ("plug", "unplug") and len(w) <= 2:
            for link in self.links_named(w[1] if len(w) == 2 else None):
                link.plugged = c == "plug"
        elif c in ("load", "unload", "mount", "umount", "net-on", "net-off") and len(w) == 2 and w[1] in self.hosts:
            h = self.hosts[w[1]]
            if c == "load":
                h.loaded = True
            elif c == "unload":
                if any(h.svc_groups.values()) or h.devs:
                    raise err(errno.EBUSY)  # rmmod: module is in use
                h.loaded = False
            elif c == "mount":
                h.mounted = True
            elif c == "umount":
                if h.svc_groups:
                    raise err(errno.EBUSY)
                h.mounted = False
            elif c == "net-on":
                h.net = True
            else:
                h.net = False
        elif c == "flip":
            # flip [COUNT] [from HOST] [after N]: flip one bit in each of the next
            # COUNT data frames (sent by that host), after letting N pass.
            self.flip_left = int(w[1]) if len(w) > 1 and w[1].isdigit() else 1
            self.flip_from, self.flip_skip = None, 0
            rest = w[2:] if len(w) > 1 and w[1].isdigit() else w[1:]
            while rest:
                if rest[0] == "from" and len(rest) > 1 and rest[1] in self.hosts:
                    self.flip_from = rest[1]
                elif rest[0] == "after" and len(rest) > 1 and rest[1].isdigit():
                    self.flip_skip = int(rest[1])
                else:
                    raise err(errno.EINVAL)
                rest = rest[2:]
        elif c == "announce" and len(w) in (5, 6) and w[1] in self.hosts:
            # announce HOST NAME IN OUT [PEER]: a peer that announces a stream without
            # a device (e.g. another tool); tests use it to stage stale state.
            h = self.hosts[w[1]]
            ends = [e for e in h.ends if len(w) == 5 or e.other().host.name == w[5]]
            if not ends:
                raise err(errno.EINVAL)
            self.update_properties(ends[0], w[2], int(w[3]), int(w[4]))
        else:
            raise err(errno.EINVAL)
        self.resync()
        self.pump()

    def state(self):
        def dev_state(d):
            return dict(name=d.name, service=d.svc, index=d.index, in_hopid=d.in_hopid, out_hopid=d.out_hopid,
                        ring_size=d.ring_size, throttling=d.throttling, attached=d.attached, users=d.users,
                        xdomain=d.end.xd_name() if d.end else None,
                        removed=d.removed, closed=d.closed, rx_frames=len(d.rx), tx_frames=len(d.tx), opens=d.opens,
                        rx_bytes=d.rx_bytes)

        def end_state(e):
            return dict(peer=e.other().host.name, plugged=e.link.plugged, probed=e.probed,
                        stream_service=self.stream_service(e), announced={k: list(v) for k, v in e.announced.items()})
        hosts = {}
        for n, h in self.hosts.items():
            first = h.ends[0]  # the fields of the two-host layout: its one cable
            hosts[n] = dict(loaded=h.loaded, mounted=h.mounted, net=h.net, probed=first.probed,
                            xdomain=first.xd_name(), stream_service=self.stream_service(first),
                            groups={s: sorted(g.keys()) for s, g in h.svc_groups.items()},
                            devs={str(i): dev_state(d) for i, d in h.devs.items()},
                            announced={k: list(v) for k, v in first.announced.items()},
                            peers={e.xd_name(): end_state(e) for e in h.ends},
                            stats=dict(h.stats))
        return dict(plugged=all(l.plugged for l in self.links), flips_done=self.flips_done, flips_pending=self.flip_left, hosts=hosts)

class FD:
    def __init__(self, kind, **kw):
        self.kind = kind
        self.__dict__.update(kw)


DEBUG = bool(os.environ.get("TBEMU_DEBUG"))


def debug(msg):
    if DEBUG:
        sys.stderr.write("tbemu: %s\n" % msg)
        sys.stderr.flush()


CURRENT = threading.local()   # the FUSE request this thread serves: (unique, pid)
INTERRUPTED = set()           # uniques the kernel asked to interrupt (FUSE_INTERRUPT)


def interrupted():
    req = getattr(CURRENT, "req", None)
    if req is None:
        return False
    unique, pid = req
    if unique in INTERRUPTED:
        debug("request %d interrupted" % unique)
        return True
    if pid and not os.path.exists("/proc/%d" % pid):
        debug("caller %d is gone" % pid)
        return True
    return False


def wait(pred):
    """Waits (with LOCK held) until pred(); EINTR when the caller is interrupted."""
    while not pred():
        COND.wait(0.05)
        if not pred() and interrupted():
            raise err(errno.EINTR)


class TbEmuFS:
    def __init__(self, emu):
        self.emu = emu
        self.fds = {}
        self.next_fh = 1
        self.t0 = time.time()

    # --- the tree ----------------------------------------------------------------
    def sysfs_attrs(self, h, entry):
        """Attributes of /sys/bus/thunderbolt/devices/<entry> on host h, or None."""
        e = self.emu
        if entry == "domain0":
            return {"uevent": "DEVTYPE=thunderbolt_domain\n", "security": "user\n"}
        if entry == "0-0":
            return {"uevent": "DEVTYPE=thunderbolt_device\n", "device_name": h.device_name + "\n",
                    "vendor_name": h.vendor_name + "\n", "unique_id": h.unique_id + "\n"}
        for end in h.ends:
            if not end.link.plugged or entry != end.xd_name():
                continue
            p = end.other().host
            return {"uevent": "DEVTYPE=thunderbolt_xdomain\n", "device_name": p.device_name + "\n",
                    "vendor_name": p.vendor_name + "\n", "unique_id": p.unique_id + "\n",
                    "maxhopid": "%d\n" % p.max_hopid, "rx_speed": "20.0 Gb/s\n", "tx_speed": "20.0 Gb/s\n",
                    "rx_lanes": "2\n", "tx_lanes": "2\n"}
        for end in h.ends:
            for name, key in e.services(end):
                if entry == name:
                    return {"uevent": "DEVTYPE=thunderbolt_service\n", "key": key + "\n", "prtcid": "1\n",
                            "prtcvers": "1\n", "prtcrevs": "0\n", "prtcstns": "0\n"}
        return None

    def sysfs_entries(self, h):
        e = self.emu
        out = ["domain0", "0-0"]
        for end in h.ends:
            if end.link.plugged:
                out.append(end.xd_name())
                out += [n for n, _ in e.services(end)]
        return out

    def resolve(self, path):
        """Returns (kind, info) for a path, or raises ENOENT."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return ("dir", sorted(self.emu.hosts) + ["ctl", "state"])
        if parts == ["ctl"]:
            return ("ctl", None)
        if parts == ["state"]:
            return ("state", None)
        h = self.emu.hosts.get(parts[0])
        if h is None:
            raise err(errno.ENOENT)
        rest = parts[1:]
        if not rest:
            return ("dir", ["sys", "dev", "proc"])
        if rest == ["proc"]:
            return ("link", "/proc")
        if rest[0] == "dev":
            if len(rest) == 1:
                return ("dir", ["tbstream%d" % i for i, d in sorted(h.devs.items()) if not d.removed])
            m = re.fullmatch(r"tbstream(\d+)", rest[1])
            if len(rest) == 2 and m and int(m.group(1)) in h.devs and not h.devs[int(m.group(1))].removed:
                return ("device", h.devs[int(m.group(1))])
            raise err(errno.ENOENT)
        if rest[0] != "sys":
            raise err(errno.ENOENT)
        tree = {
            (): ["bus", "kernel"],
            ("bus",): ["thunderbolt"],
            ("bus", "thunderbolt"): ["devices"],
            ("kernel",): ["config"],
        }
        key = tuple(rest[1:])
        if key in tree:
            return ("dir", tree[key])
        if key == ("bus", "thunderbolt", "devices"):
            return ("dir", self.sysfs_entries(h))
        if key[:3] == ("bus", "thunderbolt", "devices") and len(key) in (4, 5):
            if key[3] not in self.sysfs_entries(h):
                raise err(errno.ENOENT)
            attrs = self.sysfs_attrs(h, key[3])
            if len(key) == 4:
                return ("dir", sorted(attrs))
            if key[4] in attrs:
                return ("sysattr", attrs[key[4]])
            raise err(errno.ENOENT)
        if key[:2] == ("kernel", "config"):
            cfg = key[2:]
            if not h.mounted:
                if not cfg:
                    return ("dir", [])
                raise err(errno.ENOENT)
            if not cfg:
                return ("dir", ["thunderbolt"])
            if cfg == ("thunderbolt",):
                return ("dir", ["stream"] if h.loaded else [])
            if cfg[:2] != ("thunderbolt", "stream") or not h.loaded:
                raise err(errno.ENOENT)
            if len(cfg) == 2:
                return ("cfgroot", sorted(h.svc_groups))
            svc = cfg[2]
            if svc not in h.svc_groups:
                raise err(errno.ENOENT)
            if len(cfg) == 3:
                return ("cfgsvc", (h, svc))
            dev = h.svc_groups[svc].get(cfg[3])
            if dev is None:
                raise err(errno.ENOENT)
            if len(cfg) == 4:
                return ("cfgdev", dev)
            if len(cfg) == 5 and cfg[4] in ("index", "in_hopid", "out_hopid", "ring_size", "throttling"):
                return ("cfgattr", (dev, cfg[4]))
        raise err(errno.ENOENT)

    def getattr(self, path, fh=None):
        with LOCK:
            kind, info = self.resolve(path)
        base = dict(st_uid=0, st_gid=0, st_atime=self.t0, st_mtime=self.t0, st_ctime=self.t0)
        if kind in ("dir", "cfgroot", "cfgsvc", "cfgdev"):
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if kind == "link":
            return dict(base, st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(info))
        if kind == "device":
            return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=0)
        if kind == "cfgattr":
            mode = 0o444 if info[1] == "index" else 0o644
            return dict(base, st_mode=stat.S_IFREG | mode, st_nlink=1, st_size=4096)
        if kind == "sysattr":
            return dict(base, st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=4096)
        if kind == "ctl":
            return dict(base, st_mode=stat.S_IFREG | 0o200, st_nlink=1, st_size=0)
        return dict(base, st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=0)

    def readdir(self, path, fh):
        with LOCK:
            kind, info = self.resolve(path)
            if kind == "cfgsvc":
                h, svc = info
                names = sorted(h.svc_groups[svc])
            elif kind == "cfgdev":
                names = ["index", "in_hopid", "out_hopid", "ring_size", "throttling"]
            elif kind in ("dir", "cfgroot"):
                names = list(info)
            else:
                raise err(errno.ENOTDIR)
        return [".", ".."] + names

    def readlink(self, path):
        with LOCK:
            kind, info = self.resolve(path)
        if kind != "link":
            raise err(errno.EINVAL)
        return info

    def mkdir(self, path, mode):
        parts = [p for p in path.split("/") if p]
        with LOCK:
            kind, info = self.resolve("/" + "/".join(parts[:-1]))
            name = parts[-1]
            if kind == "cfgroot":
                h = self.emu.hosts[parts[0]]
                if name in h.svc_groups:
                    raise err(errno.EEXIST)
                if not re.match(r"^\d+-[0-9a-fA-F]+\.\d+", name):  # sscanf("%u-%llx.%u")
                    raise err(errno.EINVAL)
                h.svc_groups[name] = {}
                h.stats["svc_mkdir"] += 1
                return 0
            if kind == "cfgsvc":
                h, svc = info
                if name in h.svc_groups[svc]:
                    raise err(errno.EEXIST)
                if len(name.encode()) > NAME_MAX:
                    raise err(errno.ENAMETOOLONG)
                dev = Dev(h, svc, name, h.alloc_index())
                h.svc_groups[svc][name] = dev
                h.devs[dev.index] = dev
                h.stats["mkdir:" + name] += 1
                end = self.emu.end_for_service(h, svc)
                if end is not None:
                    self.emu.attach(dev, end)
                return 0
            raise err(errno.EPERM)

    def rmdir(self, path):
        parts = [p for p in path.split("/") if p]
        with LOCK:
            kind, info = self.resolve(path)
            h = self.emu.hosts[parts[0]]
            if kind == "cfgsvc":
                if h.svc_groups[info[1]]:
                    raise err(errno.ENOTEMPTY)
                del h.svc_groups[info[1]]
                return 0
            if kind == "cfgdev":
                dev = info
                del h.svc_groups[dev.svc][dev.name]
                h.stats["rmdir:" + dev.name] += 1
                dev.removed = True        # tbstream_dev_drop_item; the node goes (misc_deregister)
                # The announcement (local XDomain properties) is NOT removed here:
                # tbstream_dev_release() releases the HopIDs but leaves the
                # property directory, so the peer can still see a stale one.
                if dev.users == 0:
                    self.release_dev(dev)
                COND.notify_all()
                return 0
            raise err(errno.EPERM)

    def release_dev(self, dev):
        """tbstream_dev_release: the last reference went; HopIDs and index are freed."""
        h, end = dev.host, dev.end
        if end is not None:
            if dev.out_hopid > 0:
                end.out_ida.discard(dev.out_hopid)
            if dev.in_hopid > 0:
                end.in_ida.discard(dev.in_hopid)
            dev.end = None
        h.devs.pop(dev.index, None)


    def unlink(self, path):
        raise err(errno.EPERM)

    def truncate(self, path):
        with LOCK:
            kind, _ = self.resolve(path)
        if kind in ("cfgattr", "ctl", "device"):
            return 0
        raise err(errno.EACCES)


    # --- open / read / write / release --------------------------------------------
    def open(self, path, flags):
        """Returns (fh, is_device)."""
        acc = flags & os.O_ACCMODE
        writing = acc in (os.O_WRONLY, os.O_RDWR)
        nonblock = bool(flags & os.O_NONBLOCK)
        with LOCK:
            kind, info = self.resolve(path)
            if kind == "device":
                fd = self.open_device(info, nonblock)
            elif kind == "cfgattr":
                if writing and info[1] == "index":
                    raise err(errno.EACCES)
                fd = FD("cfgattr", dev=info[0], attr=info[1])
            elif kind == "sysattr":
                if writing:
                    raise err(errno.EACCES)
                fd = FD("text", text=info)
            elif kind == "state":
                fd = FD("text", text=json.dumps(self.emu.state(), indent=1) + "\n")
            elif kind == "ctl":
                fd = FD("ctl")
            else:
                raise err(errno.EISDIR)
            fh = self.next_fh
            self.next_fh += 1
            self.fds[fh] = fd
        return fh, fd.kind == "device"

    def open_device(self, dev, nonblock):
        """tbstream_dev_fops_open: waits for a stream unless O_NONBLOCK."""
        e = self.emu
        dev.host.stats["open_calls"] += 1
        while True:
            ret = e.valid(dev)
            if ret == 0:
                break
            if ret != errno.ENXIO or nonblock:
                raise err(ret)
            wait(lambda: e.valid(dev) == 0 or dev.removed or (e.valid(dev) == errno.EINVAL))
            if dev.removed:
                raise err(errno.ENXIO)
            if e.valid(dev) == errno.EINVAL:
                raise err(errno.EINVAL)
        if dev.users == 0:  # first open: rings and paths
            dev.rx.clear()
            dev.tx.clear()
            dev.closed = False
        dev.users += 1
        debug("open %s/%s users=%d" % (dev.host.name, dev.name, dev.users))
        dev.opens += 1
        dev.host.stats["opens"] += 1
        e.pump()
        return FD("device", dev=dev, gen=dev.gen, nonblock=nonblock)

    def read(self, fh, size, offset, flags=None):
        with LOCK:
            fd = self.fds.get(fh)
            if fd is None:
                raise err(errno.EBADF)
            if flags is not None and fd.kind == "device":
                fd.nonblock = bool(flags & os.O_NONBLOCK)
            if fd.kind == "text":
                return fd.text.encode()[offset:offset + size]
            if fd.kind == "cfgattr":
                d = fd.dev
                v = {"index": d.index, "in_hopid": d.in_hopid, "out_hopid": d.out_hopid,
                     "ring_size": d.ring_size, "throttling": d.throttling}[fd.attr]
                return ("%d\n" % v).encode()[offset:offset + size]
            if fd.kind == "device":
                return self.read_device(fd, size)
            raise err(errno.EINVAL)

    def read_device(self, fd, size):
        """tbstream_dev_fops_read_iter."""
        e, dev = self.emu, fd.dev
        ret = e.valid(dev, fd.gen)
        if ret:
            raise err(ret)
        while not dev.rx:
            if fd.nonblock:
                raise err(errno.EAGAIN)
            wait(lambda: dev.rx or e.valid(dev, fd.gen) != 0 or dev.closed or dev.removed)
            ret = e.valid(dev, fd.gen)
            if ret:
                raise err(ret)
            if not dev.rx and (dev.closed or dev.removed):
                debug("read EOF on %s/%s closed=%s removed=%s" % (dev.host.name, dev.name, dev.closed, dev.removed))
                return b""
        out = bytearray()
        while len(out) < size and dev.rx:
            f = dev.rx[0]
            if f[0] == CLOSE:
                if not out:
                    dev.rx.popleft()
                    dev.closed = True
                    debug("read CLOSE on %s/%s" % (dev.host.name, dev.name))
                break
            take = min(size - len(out), len(f[1]) - f[2])
            out += f[1][f[2]:f[2] + take]
            f[2] += take
            if f[2] >= len(f[1]):
                dev.rx.popleft()
        e.pump()
        debug("read %s/%s -> %d (asked %d, rx left %d)" % (dev.host.name, dev.name, len(out), size, len(dev.rx)))
        return bytes(out)

    def write(self, fh, data, offset, flags=None):
        with LOCK:
            fd = self.fds.get(fh)
            if fd is None:
                raise err(errno.EBADF)
            if flags is not None and fd.kind == "device":
                fd.nonblock = bool(flags & os.O_NONBLOCK)
            if fd.kind == "ctl":
                for line in data.decode("utf-8", "replace").splitlines():
                    self.emu.command(line.strip())
                return len(data)
            if fd.kind == "cfgattr":
                self.store(fd.dev, fd.attr, data)
                return len(data)
            if fd.kind == "device":
                return self.write_device(fd, data)
            raise err(errno.EACCES)

    def store(self, dev, attr, data):
        e = self.emu
        if attr in ("in_hopid", "out_hopid"):
            v = kstrtoint(data)
            if dev.users:
                raise err(errno.EBUSY)
            if dev.attached:
                which = attr[:-6]
                r = e.alloc(dev, which, v)
                if r < 0:
                    raise err(-r)
                e.update_properties(dev.end, dev.name, dev.in_hopid, dev.out_hopid)
            else:
                setattr(dev, attr, v)
        elif attr == "ring_size":
            v = kstrtoint(data, unsigned=True)
            if v < RING_MIN or v > RING_MAX:
                raise err(errno.EINVAL)
            if dev.users:
                raise err(errno.EBUSY)
            dev.ring_size = v
        elif attr == "throttling":
            v = kstrtoint(data, unsigned=True)
            if v > THROTTLE_MAX:
                raise err(errno.EINVAL)
            if dev.users:
                raise err(errno.EBUSY)
            dev.throttling = v
        else:
            raise err(errno.EACCES)
        COND.notify_all()

    def write_device(self, fd, data):
        """tbstream_dev_fops_write_iter: <= 4 KiB frames; short when the TX ring fills."""
        e, dev = self.emu, fd.dev
        ret = e.valid(dev, fd.gen)
        if ret:
            raise err(ret)
        cap = dev.ring_size - 1
        while len(dev.tx) >= cap:
            if fd.nonblock:
                raise err(errno.EAGAIN)
            wait(lambda: len(dev.tx) < cap or e.valid(dev, fd.gen) != 0 or dev.closed or dev.removed)
            ret = e.valid(dev, fd.gen)
            if ret:
                raise err(ret)
            if dev.closed or dev.removed:
                raise err(errno.ENXIO)
        n = 0
        while n < len(data) and len(dev.tx) < cap:
            chunk = bytes(data[n:n + FRAME])
            dev.tx.append((DATA, chunk))
            n += len(chunk)
        e.pump()
        debug("write %s/%s %d -> %d (tx %d)" % (dev.host.name, dev.name, len(data), n, len(dev.tx)))
        return n

    def release(self, fh):
        with LOCK:
            fd = self.fds.pop(fh, None)
            if fd is None or fd.kind != "device":
                return 0
            e, dev = self.emu, fd.dev
            dev.users -= 1
            debug("release %s/%s users=%d" % (dev.host.name, dev.name, dev.users))
            if dev.users == 0:
                # tbstream_dev_fops_release: send CLOSE, wait up to 500 ms for the
                # TX ring, then drop what is left; the RX ring is freed. CLOSE
                # needs a free TX slot like any frame (-ENOBUFS otherwise, which
                # release ignores): a writer that filled the ring loses its CLOSE.
                if dev.attached and len(dev.tx) < dev.ring_size - 1:
                    dev.tx.append((CLOSE, bytes(256)))
                e.pump()
                end = time.time() + CLOSE_FLUSH_S
                while dev.tx and time.time() < end:
                    COND.wait(0.02)
                    e.pump()
                dev.tx.clear()
                dev.rx.clear()
                if dev.removed:
                    self.release_dev(dev)
                COND.notify_all()
            return 0



# --- a small FUSE server speaking the kernel protocol over /dev/fuse ------------
# Not libfuse: libfuse 2 and 3 cannot set FOPEN_STREAM, and without it the
# kernel treats the device as a regular file whose read() and write() on one
# fd serialise on f_pos_lock, so a pending read would block every write (a
# real character device has no such lock).
FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR, FUSE_READLINK = 1, 2, 3, 4, 5
FUSE_MKNOD, FUSE_MKDIR, FUSE_UNLINK, FUSE_RMDIR = 8, 9, 10, 11
FUSE_OPEN, FUSE_READ, FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE = 14, 15, 16, 17, 18
FUSE_FLUSH, FUSE_INIT, FUSE_OPENDIR, FUSE_READDIR, FUSE_RELEASEDIR = 25, 26, 27, 28, 29
FUSE_ACCESS, FUSE_CREATE, FUSE_INTERRUPT, FUSE_DESTROY, FUSE_BATCH_FORGET = 34, 35, 36, 38, 42
FOPEN_DIRECT_IO, FOPEN_NONSEEKABLE, FOPEN_STREAM = 1 << 0, 1 << 2, 1 << 4
FUSE_BIG_WRITES = 1 << 5
MAX_WRITE = 128 * 1024
IN_HDR = struct.Struct("<IIQQIIII")      # len opcode unique nodeid uid gid pid padding
OUT_HDR = struct.Struct("<IiQ")          # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr (88 bytes)
BLOCKING = {FUSE_OPEN, FUSE_READ, FUSE_WRITE, FUSE_RELEASE}


class FuseServer:
    def __init__(self, fs, mountpoint):
        self.fs = fs
        self.mountpoint = os.path.abspath(mountpoint)
        self.paths = {1: "/"}
        self.ids = {"/": 1}
        self.ino_lock = threading.Lock()
        self.t0 = int(time.time())

    def mount(self):
        self.dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other" % self.dev
        if libc.mount(b"tbemu", self.mountpoint.encode(), b"fuse.tbemu", ctypes.c_ulong(6), opts.encode()) != 0:  # MS_NOSUID|MS_NODEV
            e = ctypes.get_errno()
            raise OSError(e, "mount %s: %s" % (self.mountpoint, os.strerror(e)))

    def node(self, path):
        with self.ino_lock:
            n = self.ids.get(path)
            if n is None:
                n = len(self.paths) + 1
                self.paths[n] = path
                self.ids[path] = n
            return n

    def attr_bytes(self, nodeid, a):
        t = self.t0
        return ATTR.pack(nodeid, a.get("st_size", 0), 0, t, t, t, 0, 0, 0, a["st_mode"], a.get("st_nlink", 1), 0, 0, 0, 4096, 0)

    def entry(self, path):
        a = self.fs.getattr(path)
        n = self.node(path)
        return struct.pack("<QQQQII", n, 0, 0, 0, 0, 0) + self.attr_bytes(n, a)

    def reply(self, unique, error=0, data=b""):
        try:
            os.write(self.dev, OUT_HDR.pack(OUT_HDR.size + len(data), -error if error else 0, unique) + data)
        except OSError as e:  # ENOENT: the request was interrupted and abandoned
            debug("reply %d: %s" % (unique, e))

    def serve(self):
        while True:
            try:
                buf = os.read(self.dev, MAX_WRITE + 65536)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            length, op, unique, nodeid, uid, gid, pid, _ = IN_HDR.unpack_from(buf)
            body = buf[IN_HDR.size:length]
            if op == FUSE_INTERRUPT:
                INTERRUPTED.add(struct.unpack_from("<Q", body)[0])
                with LOCK:
                    COND.notify_all()
                continue
            if op in (FUSE_FORGET, FUSE_BATCH_FORGET):
                continue
            if op == FUSE_DESTROY:
                self.reply(unique)
                return
            if op in BLOCKING:
                threading.Thread(target=self.handle, args=(op, unique, nodeid, pid, body), daemon=True).start()
            else:
                self.handle(op, unique, nodeid, pid, body)

    def handle(self, op, unique, nodeid, pid, body):
        CURRENT.req = (unique, pid)
        try:
            data = self.dispatch(op, nodeid, body)
            self.reply(unique, 0, data or b"")
        except OSError as e:
            self.reply(unique, e.errno or errno.EIO)
        except Exception:
            traceback.print_exc()
            self.reply(unique, errno.EIO)
        finally:
            CURRENT.req = None
            INTERRUPTED.discard(unique)

    def child(self, nodeid, body):
        name = body.split(b"\0", 1)[0].decode()
        parent = self.paths.get(nodeid, "/")
        return (parent.rstrip("/") + "/" + name), name

    def dispatch(self, op, nodeid, body):
        fs = self.fs
        path = self.paths.get(nodeid, "/")
        if op == FUSE_INIT:
            major, minor, readahead, flags = struct.unpack_from("<IIII", body)
            return struct.pack("<IIIIHHIIHHI28x", 7, min(minor, 31), readahead, flags & FUSE_BIG_WRITES, 16, 12, MAX_WRITE, 1, 0, 0, 0)
        if op == FUSE_LOOKUP:
            return self.entry(self.child(nodeid, body)[0])
        if op == FUSE_GETATTR:
            return struct.pack("<QII", 0, 0, 0) + self.attr_bytes(nodeid, fs.getattr(path))
        if op == FUSE_SETATTR:  # O_TRUNC on attribute/ctl files: accepted, nothing to do
            fs.truncate(path)
            return struct.pack("<QII", 0, 0, 0) + self.attr_bytes(nodeid, fs.getattr(path))
        if op == FUSE_READLINK:
            return fs.readlink(path).encode()
        if op == FUSE_MKDIR:
            full, _ = self.child(nodeid, body[8:])
            fs.mkdir(full, 0o755)
            return self.entry(full)
        if op == FUSE_RMDIR:
            fs.rmdir(self.child(nodeid, body)[0])
            return b""
        if op in (FUSE_UNLINK, FUSE_MKNOD):
            raise err(errno.EPERM)
        if op == FUSE_CREATE:
            raise err(errno.EACCES)
        if op == FUSE_OPEN:
            flags = struct.unpack_from("<I", body)[0]
            fh, device = fs.open(path, flags)
            return struct.pack("<QII", fh, FOPEN_DIRECT_IO | ((FOPEN_STREAM | FOPEN_NONSEEKABLE) if device else 0), 0)
        if op == FUSE_READ:
            # fuse_read_in: fh, offset, size, read_flags, lock_owner, flags (the file's f_flags now)
            fh, offset, size, _, _, flags = struct.unpack_from("<QQIIQI", body)
            return fs.read(fh, size, offset, flags)
        if op == FUSE_WRITE:
            fh, offset, size, _, _, flags = struct.unpack_from("<QQIIQI", body)
            n = fs.write(fh, body[40:40 + size], offset, flags)
            return struct.pack("<II", n, 0)
        if op == FUSE_RELEASE:
            fs.release(struct.unpack_from("<Q", body)[0])
            return b""
        if op in (FUSE_FLUSH, FUSE_RELEASEDIR, FUSE_ACCESS):
            return b""
        if op == FUSE_OPENDIR:
            fs.readdir(path, None)
            return struct.pack("<QII", 0, 0, 0)
        if op == FUSE_READDIR:
            fh, offset, size = struct.unpack_from("<QQI", body)
            out = b""
            names = fs.readdir(path, None)
            for i, name in enumerate(names[offset:], start=offset):
                full = path if name == "." else (os.path.dirname(path) if name == ".." else path.rstrip("/") + "/" + name)
                try:
                    mode = fs.getattr(full)["st_mode"] if name not in (".", "..") else stat.S_IFDIR
                except OSError:
                    continue
                nb = name.encode()
                ent = struct.pack("<QQII", self.node(full), i + 1, len(nb), (mode & 0o170000) >> 12) + nb
                ent += b"\0" * (-len(ent) % 8)
                if len(out) + len(ent) > size:
                    break
                out += ent
            return out
        if op == FUSE_STATFS:
            return struct.pack("<QQQQQIIII24x", 0, 0, 0, 0, 0, 4096, 255, 4096, 0)
        raise err(errno.ENOSYS)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "ctl":
        if len(sys.argv) < 4:
            sys.exit("usage: tbemu.py ctl MOUNTPOINT COMMAND...")
        with open(os.path.join(sys.argv[2], "ctl"), "w") as f:
            f.write(" ".join(sys.argv[3:]) + "\n")
        return
    ap = argparse.ArgumentParser(description="Emulate hosts joined by USB4/Thunderbolt cables with thunderbolt_stream (v7.2).")
    ap.add_argument("mountpoint")
    ap.add_argument("--topology", default="A-B", help="the cables: A-B (default), or e.g. A-K,B-K (a keeper K with two peers)")
    ap.add_argument("--unplugged", nargs="?", const="all", default=None, help="start with every cable (or the ones named, e.g. B-K) unplugged")
    ap.add_argument("--unloaded", default="", help="hosts (A, B, AB) without thunderbolt_stream loaded")
    ap.add_argument("--unmounted", default="", help="hosts (A, B, AB) without configfs mounted")
    ap.add_argument("--a-name", default="host-a")
    ap.add_argument("--b-name", default="host-b")
    ap.add_argument("--a-max-hopid", type=int, default=15)
    ap.add_argument("--b-max-hopid", type=int, default=19)
    ap.add_argument("--a-net", action="store_true", default=True, help="thunderbolt_net on A (default)")
    ap.add_argument("--no-a-net", dest="a_net", action="store_false")
    ap.add_argument("--b-net", action="store_true", default=False)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.seed is not None:
        random.seed(args.seed)
    emu = Emu(args)
    server = FuseServer(TbEmuFS(emu), args.mountpoint)
    server.mount()
    print("tbemu: serving %s" % server.mountpoint, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
