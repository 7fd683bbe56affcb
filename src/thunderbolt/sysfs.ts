// Reading the Thunderbolt topology and the stream ConfigFS tree: domains,
// XDomain peers with their services (sysfs), configured stream groups
// (ConfigFS). Read-only; every path goes through sysPath (TBBACKUP_SYSROOT).
import * as fs from "node:fs";
import * as path from "node:path";
import { sysPath } from "../util/sysroot.ts";
import { holdersOf, type Holder } from "../util/holders.ts";

export const BUS_DIR = "/sys/bus/thunderbolt";
export const DEVICES_DIR = "/sys/bus/thunderbolt/devices";
export const CONFIGFS_DIR = "/sys/kernel/config";
export const STREAM_CFG_DIR = "/sys/kernel/config/thunderbolt/stream";

export interface Service {
  id: string;
  key: string;
  protocolId: number | null;
  protocolVersion: number | null;
  protocolRevision: number | null;
  protocolSettings: number | null;
}

export interface Peer {
  id: string;
  domain: number;
  route: string;
  deviceName: string | null;
  vendorName: string | null;
  uniqueId: string | null;
  maxHopId: number | null;
  rxSpeed: string | null;
  txSpeed: string | null;
  rxLanes: number | null;
  txLanes: number | null;
  services: Service[];
}

export interface Domain {
  id: string;
  security: string | null;
}

export interface Group {
  service: string;
  name: string;
  configPath: string;
  index: number | null;
  inHopId: number | null;
  outHopId: number | null;
  ringSize: number | null;
  throttling: number | null;
  device: string | null;
  deviceExists: boolean;
  openBy: Holder[];
}

export function readAttr(dir: string, name: string): string | null {
  try {
    return fs.readFileSync(path.join(dir, name), "utf8").trim();
  } catch {
    return null;
  }
}

export function readInt(dir: string, name: string): number | null {
  const v = readAttr(dir, name);
  if (v === null || !/^-?\d+$/.test(v)) return null;
  return Number(v);
}

function devtype(dir: string): string | null {
  const u = readAttr(dir, "uevent");
  const m = u ? /^DEVTYPE=(.*)$/m.exec(u) : null;
  return m ? m[1]!.trim() : null;
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

export function exists(p: string): boolean {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The names under /sys/bus/thunderbolt/devices, sorted: one directory read, to notice that something came or went. */
export function deviceNames(): string[] {
  return listDir(sysPath(DEVICES_DIR));
}

/** Domains and XDomain peers (other hosts) with their services. */
export function readTopology(): { domains: Domain[]; peers: Peer[] } {
  const base = sysPath(DEVICES_DIR);
  const entries = listDir(base);
  const domains: Domain[] = [];
  const peers: Peer[] = [];
  const services = new Map<string, Service[]>();
  for (const name of entries) {
    const dir = path.join(base, name);
    const type = devtype(dir);
    if (type === "thunderbolt_domain") domains.push({ id: name, security: readAttr(dir, "security") });
    else if (type === "thunderbolt_service") {
      const parent = name.replace(/\.\d+$/, "");
      const list = services.get(parent) ?? [];
      list.push({
        id: name,
        key: readAttr(dir, "key") ?? "",
        protocolId: readInt(dir, "prtcid"),
        protocolVersion: readInt(dir, "prtcvers"),
        protocolRevision: readInt(dir, "prtcrevs"),
        protocolSettings: readInt(dir, "prtcstns"),
      });
      services.set(parent, list);
    }
  }
  for (const name of entries) {
    const dir = path.join(base, name);
    if (devtype(dir) !== "thunderbolt_xdomain") continue;
    const m = /^(\d+)-([0-9a-fA-F]+)$/.exec(name);
    peers.push({
      id: name,
      domain: m ? Number(m[1]) : -1,
      route: m ? m[2]! : "",
      deviceName: readAttr(dir, "device_name"),
      vendorName: readAttr(dir, "vendor_name"),
      uniqueId: readAttr(dir, "unique_id"),
      maxHopId: readInt(dir, "maxhopid"),
      rxSpeed: readAttr(dir, "rx_speed"),
      txSpeed: readAttr(dir, "tx_speed"),
      rxLanes: readInt(dir, "rx_lanes"),
      txLanes: readInt(dir, "tx_lanes"),
      services: services.get(name) ?? [],
    });
  }
  return { domains, peers };
}

export function streamServiceOf(peer: Peer): Service | null {
  return peer.services.find((s) => s.key === "stream") ?? null;
}

export function devicePathFor(index: number): string {
  return sysPath(`/dev/tbstream${index}`);
}

/** Every configured stream group under the stream ConfigFS directory. */
export function readGroups(): Group[] {
  const root = sysPath(STREAM_CFG_DIR);
  const out: Group[] = [];
  for (const service of listDir(root)) {
    const sdir = path.join(root, service);
    for (const name of listDir(sdir)) {
      const gdir = path.join(sdir, name);
      try {
        if (!fs.statSync(gdir).isDirectory()) continue;
      } catch {
        continue;
      }
      const index = readInt(gdir, "index");
      const device = index === null ? null : devicePathFor(index);
      const deviceExists = device !== null && exists(device);
      out.push({
        service,
        name,
        configPath: gdir,
        index,
        inHopId: readInt(gdir, "in_hopid"),
        outHopId: readInt(gdir, "out_hopid"),
        ringSize: readInt(gdir, "ring_size"),
        throttling: readInt(gdir, "throttling"),
        device,
        deviceExists,
        openBy: deviceExists ? holdersOf(device!, -1) : [],
      });
    }
  }
  return out;
}
