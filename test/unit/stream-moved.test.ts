// AutoStream.moved(): when may receive give up on the stream group it made?
// Only when the peer it serves offers its stream under another service name.
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AutoStream } from "../../src/thunderbolt/setup.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "tbb-moved-"));
const devices = path.join(root, "sys/bus/thunderbolt/devices");
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function node(name: string, devtype: string, attrs: Record<string, string> = {}): void {
  const dir = path.join(devices, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "uevent"), `DEVTYPE=${devtype}\n`);
  for (const [k, v] of Object.entries(attrs)) fs.writeFileSync(path.join(dir, k), `${v}\n`);
}
/** Peers now connected: name -> [device_name, stream service]. */
function topology(peers: Record<string, [string, string]>): void {
  fs.rmSync(devices, { recursive: true, force: true });
  for (const [id, [name, service]] of Object.entries(peers)) {
    node(id, "thunderbolt_xdomain", { device_name: name, unique_id: `uid-${name}` });
    node(service, "thunderbolt_service", { key: "stream" });
  }
}
/** A stream set up for service 0-1.0 (host-a), with or without --peer. */
function streamFor(peer?: string): AutoStream {
  const auto = new AutoStream({ mode: "allocate", waitMs: null, peer });
  return Object.assign(auto, { serviceDir: path.join(root, "sys/kernel/config/thunderbolt/stream/0-1.0") });
}

test("moved(): only the served peer's stream under another name ends the wait", () => {
  process.env.TBBACKUP_SYSROOT = root;
  try {
    topology({ "0-1": ["host-a", "0-1.0"], "0-3": ["host-b", "0-3.0"] });
    expect(streamFor().moved()).toBeNull(); // ours is still offered
    topology({ "0-3": ["host-b", "0-3.0"] }); // host-a went away (rebooting), host-b stays
    expect(streamFor("host-a").moved()).toBeNull(); // --peer host-a: wait for it
    expect(streamFor().moved()?.message).toContain("offers its stream as 0-3.0"); // without --peer a fresh setup would take host-b
    topology({ "0-1": ["host-a", "0-1.1"], "0-3": ["host-b", "0-3.0"] }); // host-a is back as .1
    expect(streamFor("host-a").moved()?.message).toMatch(/offers its stream as 0-1\.1, but .* set up for 0-1\.0/);
    topology({});
    expect(streamFor().moved()).toBeNull(); // nobody offers a stream: keep waiting
  } finally {
    delete process.env.TBBACKUP_SYSROOT;
  }
});
