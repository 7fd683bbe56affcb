// tbbackup streams [--json]: like tblist for the stream service: domains, peers
// and their services (sysfs), configured stream groups (ConfigFS) with their
// device and who has it open. Read-only: loads no module, mounts nothing.
import type { Command } from "commander";
import { sysPath } from "../util/sysroot.ts";
import { action, printJson, type GlobalOpts } from "./common.ts";
import * as fs from "node:fs";

export function register(program: Command): void {
  program
    .command("streams")
    .description("list Thunderbolt peers, their stream services and the configured streams")
    .option("--json", "print JSON (shape in the README, 'tbbackup streams JSON')")
    .action(
      action(async (o: GlobalOpts) => {
        const { BUS_DIR, CONFIGFS_DIR, STREAM_CFG_DIR, exists, readGroups, readTopology } = await import("../thunderbolt/sysfs.ts");
        const configfs = exists(sysPath(CONFIGFS_DIR)) && fs.readdirSync(sysPath(CONFIGFS_DIR)).length > 0;
        const platform = { thunderbolt: exists(sysPath(BUS_DIR)), configfs, streamModule: exists(sysPath(STREAM_CFG_DIR)) };
        const { domains, peers } = readTopology();
        const streams = readGroups();
        if (o.json) {
          printJson({ platform, domains, peers, streams });
          return;
        }
        const out: string[] = [];
        if (!platform.thunderbolt) out.push(`no Thunderbolt bus (${BUS_DIR} missing: thunderbolt module not loaded?)`);
        if (!platform.streamModule) out.push(`no stream ConfigFS directory (${STREAM_CFG_DIR}): ${configfs ? "thunderbolt_stream not loaded" : "configfs not mounted or thunderbolt_stream not loaded"}`);
        for (const d of domains) out.push(`Domain ${d.id.replace(/^domain/, "")}${d.security ? ` (security: ${d.security})` : ""}`);
        if (!peers.length && platform.thunderbolt) out.push("  no peers: plug the cable into another host");
        for (const p of peers) {
          out.push(`  Peer ${p.id}: ${p.deviceName ?? "?"} (${p.vendorName ?? "?"}), unique_id ${p.uniqueId ?? "?"}, maxhopid ${p.maxHopId ?? "?"}`);
          out.push(`    rx ${p.rxSpeed ?? "?"} x${p.rxLanes ?? "?"}, tx ${p.txSpeed ?? "?"} x${p.txLanes ?? "?"}`);
          for (const s of p.services) out.push(`    Service ${s.id}: ${s.key}${s.protocolId !== null ? ` (protocol ${s.protocolId} version ${s.protocolVersion})` : ""}`);
          if (!p.services.some((s) => s.key === "stream")) out.push("    no stream service: thunderbolt_stream is not loaded on that host");
        }
        if (platform.streamModule) {
          out.push(streams.length ? "Streams:" : "Streams: none configured");
          for (const g of streams) {
            const open = g.openBy.length ? `open by ${g.openBy.map((h) => `${h.pid} (${h.command})`).join(", ")}` : "not open";
            out.push(`  ${g.service}/${g.name}: ${g.device ?? "?"}${g.deviceExists ? "" : " (no device node)"}, in ${g.inHopId} out ${g.outHopId}, ring ${g.ringSize}, throttling ${g.throttling} ns, ${open}`);
          }
        }
        process.stdout.write(out.join("\n") + "\n");
      }),
    );
}
