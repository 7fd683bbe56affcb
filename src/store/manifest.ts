// manifest.json: what a stored backup is, where it came from, and how to check it.
import * as fs from "node:fs";
import * as path from "node:path";
import type { DiskIdentity, FilesSummary, HostIdentity } from "../protocol/messages.ts";
import { FILE_MODE, MANIFEST_FILE, fsyncDir } from "./layout.ts";

export const MANIFEST_FORMAT = 1;

export type BackupStatus = "complete" | "partial" | "failed";

export interface Manifest {
  format: number;
  id: string;
  kind: "image" | "files";
  status: BackupStatus;
  /** why a partial or failed backup stopped */
  reason?: string;
  /** partial only: what was durable when it stopped, for resuming */
  durable?: { chunks: number; rawBytes: number; storedBytes: number; chunkListBytes: number };
  /** when an interrupted push was continued */
  resumed?: { at: string; fromChunk: number }[];
  label: string | null;
  host: HostIdentity;
  disk: DiskIdentity;
  tool: { name: string; version: string; protocol: number };
  receiver: { hostname: string; tool: string };
  session: string;
  chunkSize: number;
  compression: { algorithm: "zstd"; level: number; format: "zstd-seekable" };
  chunks: { count: number; zero: number; checksum: "xxh3-64"; file: string };
  /** raw bytes of the image (or tar stream) */
  size: number;
  storedBytes: number;
  sha256: string | null;
  data: string;
  timings: { started: string; finished: string | null; seconds: number | null };
  files?: FilesSummary;
}

export function writeManifest(dir: string, m: Manifest): void {
  const file = path.join(dir, MANIFEST_FILE);
  const tmp = file + ".tmp";
  const fd = fs.openSync(tmp, "w", FILE_MODE);
  try {
    fs.writeSync(fd, JSON.stringify(m, null, 2) + "\n");
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(dir);
}

export function readManifest(dir: string): Manifest {
  const text = fs.readFileSync(path.join(dir, MANIFEST_FILE), "utf8");
  const m = JSON.parse(text) as Manifest;
  if (typeof m !== "object" || m === null || typeof m.format !== "number") throw new Error("not a tbbackup manifest");
  if (m.format > MANIFEST_FORMAT) throw new Error(`manifest format ${m.format} is newer than this tbbackup understands`);
  return m;
}
