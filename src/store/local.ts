// The local directory store (docs/FORMAT.md): DIR/<host>/<disk>/<timestamp>[.partial],
// each backup a directory of image.zst (or files.tar.zst), chunks.txt,
// digests.txt and manifest.json. Implements repository.ts over layout.ts,
// ImageWriter, ImageReader and manifest.ts.
import * as fs from "node:fs";
import * as path from "node:path";
import {
  CHUNKS_FILE,
  DELETING_SUFFIX,
  DIGESTS_FILE,
  FRAME_DIGESTS_FILE,
  SHA_FRAME_DIGESTS_FILE,
  FILES_FILE,
  IMAGE_FILE,
  MANIFEST_FILE,
  PARTIAL_SUFFIX,
  backupDirStrict,
  createBackupDir,
  fsyncDir,
  resolveBackupId,
  sanitizeName,
  within,
} from "./layout.ts";
import { formatFor, readManifest, writeManifest, type Manifest } from "./manifest.ts";
import { StoreError, storeKind, type StoreErrorKind } from "./errors.ts";
import { ImageWriter } from "./image-writer.ts";
import { ChunkList, ImageReader, readChecksums } from "./image-reader.ts";
import { MAX_PADDING, PADDING_MAGIC, isAlignment, type SeekEntry } from "./seekable.ts";
import { reflinkAlignment, type FrameWrite } from "./reflink.ts";
import { FRAME_DIGEST_HEX, ROOT_ALGORITHMS, digestAlgorithmOf } from "./root.ts";
import type { BackupAt, BackupReader, BackupWriter, ChunkLines, DiskLock, FrameDigests, Durable, NewBackup, NewManifest, PartialBackup, Repository, StoredBackup } from "./repository.ts";

/** The disks a push session is writing now, per store ("root\0host/disk"): two sessions never write or resume the same one. */
const locked = new Set<string>();

function subdirs(p: string): string[] {
  try {
    return fs
      .readdirSync(p, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name)
      .sort();
  } catch {
    return [];
  }
}

/** The manifest, or null and what kind of trouble reading it met (null: none there, or an errno). */
function tryManifest(dir: string): { manifest: Manifest | null; trouble: StoreErrorKind | null } {
  try {
    return { manifest: readManifest(dir), trouble: null };
  } catch (e) {
    return { manifest: null, trouble: storeKind(e) };
  }
}

/** Bytes of padding (skippable frames, at most MAX_PADDING) at `position` of a partial image, before `end`. */
function paddingAt(fd: number, position: number, end: number): number {
  const header = new Uint8Array(8);
  const v = new DataView(header.buffer);
  let at = position;
  while (at < end && fs.readSync(fd, header, 0, 8, at) === 8 && (v.getUint32(0, true) & 0xfffffff0) === PADDING_MAGIC) {
    at += 8 + v.getUint32(4, true);
    if (at - position > MAX_PADDING || at > end) throw new StoreError("DAMAGED", `the padding at ${position} is malformed`);
  }
  return at - position;
}

/** A backup directory as a listing sees it. */
function describe(dir: string, host: string, disk: string, name: string, read = tryManifest(dir)): StoredBackup {
  const has = (f: string) => fs.existsSync(path.join(dir, f));
  const manifest = read.manifest;
  const partial = name.endsWith(PARTIAL_SUFFIX);
  const data = manifest?.data ?? IMAGE_FILE;
  return {
    id: `${host}/${disk}/${name}`,
    finalId: `${host}/${disk}/${partial ? name.slice(0, -PARTIAL_SUFFIX.length) : name}`,
    host,
    disk,
    name,
    partial,
    location: dir,
    manifest,
    ...(read.trouble ? { manifestTrouble: read.trouble } : {}),
    // (a partial's data is still under its temporary name, as it was left)
    hasData: has(partial ? data + ".tmp" : data),
    looksLikeFiles: has(FILES_FILE),
    hasAnyFile: [MANIFEST_FILE, IMAGE_FILE, FILES_FILE].some(has),
  };
}

export class LocalRepository implements Repository {
  constructor(readonly location: string) {}

  exists(): boolean {
    return fs.existsSync(this.location);
  }

  prepare(): boolean {
    const created = !fs.existsSync(this.location);
    fs.mkdirSync(this.location, { recursive: true });
    const probe = path.join(this.location, `.tbbackup-probe-${process.pid}`);
    fs.writeFileSync(probe, "");
    fs.rmSync(probe);
    return created;
  }

  list(): StoredBackup[] {
    const root = this.location;
    const out: StoredBackup[] = [];
    for (const host of subdirs(root)) {
      if (host.startsWith(".")) continue;
      for (const disk of subdirs(path.join(root, host))) {
        for (const b of subdirs(path.join(root, host, disk))) {
          // being deleted (or left half-deleted by a crash): no longer a backup
          if (b.endsWith(DELETING_SUFFIX) || b.startsWith(".")) continue;
          out.push(describe(path.join(root, host, disk, b), host, disk, b));
        }
      }
    }
    return out;
  }

  diskKey(host: string, disk: string): string {
    return `${sanitizeName(host)}/${sanitizeName(disk)}`;
  }

  backupsOf(host: string, disk: string, which: "partial" | "complete"): StoredBackup[] {
    const h = sanitizeName(host);
    const d = sanitizeName(disk);
    const keep = which === "partial" ? (n: string) => n.endsWith(PARTIAL_SUFFIX) : (n: string) => !n.endsWith(PARTIAL_SUFFIX) && !n.endsWith(DELETING_SUFFIX) && !n.startsWith(".");
    let parent: string;
    let names: string[];
    try {
      parent = within(this.location, h, d);
      names = fs.readdirSync(parent).filter(keep).sort().reverse();
    } catch {
      return [];
    }
    const out: StoredBackup[] = [];
    for (const name of names) {
      const dir = path.join(parent, name);
      const read = tryManifest(dir);
      if (read.manifest) out.push(describe(dir, h, d, name, read));
    }
    return out;
  }

  lock(host: string, disk: string, machine = ""): DiskLock | null {
    const key = `${path.resolve(this.location)}\0${this.diskKey(host, disk)}\0${machine}`;
    if (locked.has(key)) return null;
    locked.add(key);
    let held = true;
    return {
      release: () => {
        if (held) locked.delete(key);
        held = false;
      },
    };
  }

  create(host: string, disk: string, when: Date): NewBackup {
    const { id, dir } = createBackupDir(this.location, host, disk, when);
    return {
      id,
      location: dir,
      start: async (nm: NewManifest) => {
        const data = nm.kind === "files" ? FILES_FILE : IMAGE_FILE;
        // on a file system that can share blocks between files, an image's frames are aligned so later backups can (docs/FORMAT.md §3.5)
        const align = nm.kind === "files" ? 0 : await reflinkAlignment(dir, nm.chunkSize);
        // the store names its files; the manifest's keys stay in the order they were always written
        const m: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(nm)) {
          m[k] = k === "format" ? formatFor(align, digestAlgorithmOf(nm.digests?.algorithm) ?? "sha256") : k === "chunks" ? { ...nm.chunks, file: CHUNKS_FILE } : k === "digests" ? { ...nm.digests, file: DIGESTS_FILE } : v;
          if (k === "format") m.id = id;
          if (k === "digests") {
            m.data = data;
            if (align) m.align = align;
          }
        }
        const manifest = m as unknown as Manifest;
        writeManifest(dir, manifest);
        return new LocalBackupWriter(id, dir, manifest, new ImageWriter(dir, data, undefined, align));
      },
    };
  }

  openPartial(b: StoredBackup): PartialBackup {
    const m = b.manifest!;
    return {
      backup: b,
      chunkListPrefix: (bytes: number) => {
        const fd = fs.openSync(path.join(b.location, m.chunks.file), "r");
        try {
          const buf = Buffer.alloc(bytes);
          const n = fs.readSync(fd, buf, 0, bytes, 0);
          if (n !== bytes) throw new Error(`chunk list is shorter than its recorded durable part`);
          return buf.toString("latin1");
        } finally {
          fs.closeSync(fd);
        }
      },
      frames: function* (d: Durable, windowBytes: number, frameSize: (bytes: Uint8Array) => number) {
        const fd = fs.openSync(path.join(b.location, m.data + ".tmp"), "r");
        try {
          const window = new Uint8Array(windowBytes);
          let position = 0;
          for (let i = 0; i < d.chunks; i++) {
            const n = fs.readSync(fd, window, 0, Math.min(window.length, d.storedBytes - position), position);
            const size = frameSize(window.subarray(0, n));
            const padding = m.align ? paddingAt(fd, position + size, d.storedBytes) : 0;
            yield { frame: window.slice(0, size), padding };
            position += size + padding;
          }
          if (position !== d.storedBytes) throw new Error(`the durable frames end at ${position}, the manifest says ${d.storedBytes}`);
        } finally {
          fs.closeSync(fd);
        }
      },
    };
  }

  resume(b: StoredBackup, manifest: Manifest, entries: SeekEntry[]): BackupWriter {
    const d = manifest.durable!;
    // aligned as it was begun: the prefix's layout stays (docs/FORMAT.md §3.5)
    const align = manifest.align ?? 0;
    if (align !== 0 && !isAlignment(align)) throw new StoreError("DAMAGED", `its manifest's align ${String(align).slice(0, 20)} is not a block size`);
    // (its chunk digests as they were begun: the receiver resumes only a partial its sender can continue, receive.ts)
    const digest = digestAlgorithmOf(manifest.digests?.algorithm) ?? "sha256";
    manifest.format = formatFor(align, digest);
    const image = new ImageWriter(b.location, manifest.data, { entries, storedBytes: d.storedBytes, rawBytes: d.rawBytes, chunkListBytes: d.chunkListBytes }, align);
    manifest.digests = { algorithm: ROOT_ALGORITHMS[digest], file: DIGESTS_FILE };
    return new LocalBackupWriter(b.finalId, b.location, manifest, image);
  }

  saveManifest(b: StoredBackup, m: Manifest): void {
    writeManifest(b.location, m);
  }

  private byId(id: string, dir: string | null): StoredBackup | null {
    if (!dir) return null;
    const [host = "", disk = "", name = ""] = id.split("/");
    return describe(dir, host, disk, name);
  }

  find(id: string): StoredBackup | null {
    return this.byId(id, resolveBackupId(this.location, id));
  }

  findStrict(id: string): StoredBackup | null {
    return this.byId(id, backupDirStrict(this.location, id));
  }

  manifestOf(b: StoredBackup): Manifest {
    return readManifest(b.location);
  }

  open(b: StoredBackup): BackupReader {
    return openLocalBackup(b.location, path.join(b.location, b.manifest?.data ?? IMAGE_FILE), b.manifest);
  }

  storedBytes(b: StoredBackup): number {
    return diskUsage(b.location);
  }

  lastActivity(b: StoredBackup): number {
    const dir = b.location;
    let t = 0;
    try {
      t = fs.statSync(dir).mtimeMs;
      for (const n of fs.readdirSync(dir)) {
        try {
          t = Math.max(t, fs.lstatSync(path.join(dir, n)).mtimeMs);
        } catch {}
      }
    } catch {}
    return t;
  }

  delete(b: StoredBackup): void {
    const dir = b.location;
    const parent = path.dirname(dir);
    let doomed = dir + DELETING_SUFFIX;
    for (let n = 1; fs.existsSync(doomed); n++) doomed = `${dir}-${n}${DELETING_SUFFIX}`;
    fs.renameSync(dir, doomed);
    fsyncDir(parent);
    // from here it is out of every listing; what is left if this stops is finished by the next prune
    fs.rmSync(doomed, { recursive: true, force: true });
  }

  finishDeletions(dryRun: boolean): string[] {
    const root = this.location;
    const visible = (p: string) => subdirs(p).filter((n) => !n.startsWith("."));
    const done: string[] = [];
    for (const host of visible(root)) {
      for (const disk of visible(path.join(root, host))) {
        for (const b of visible(path.join(root, host, disk))) {
          if (!b.endsWith(DELETING_SUFFIX)) continue;
          if (!dryRun) fs.rmSync(path.join(root, host, disk, b), { recursive: true, force: true });
          done.push(`${host}/${disk}/${b}`);
        }
      }
    }
    return done;
  }
}

/** Bytes a directory's files take on disk (what du counts), not descending further. */
function diskUsage(dir: string): number {
  let total = 0;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return 0;
  }
  for (const n of names) {
    try {
      const st = fs.lstatSync(path.join(dir, n));
      if (st.isFile()) total += st.blocks * 512;
    } catch {}
  }
  return total;
}

class LocalBackupWriter implements BackupWriter {
  constructor(
    readonly id: string,
    readonly location: string,
    readonly manifest: Manifest,
    private readonly image: ImageWriter,
  ) {}

  get partialId(): string {
    return this.id + PARTIAL_SUFFIX;
  }
  get dataLocation(): string {
    return this.image.tmpPath;
  }
  get frameTarget(): number {
    return this.image.imageFd;
  }
  get chunks(): number {
    return this.image.chunks;
  }
  get rawBytes(): number {
    return this.image.rawBytes;
  }
  get storedBytes(): number {
    return this.image.bytesWritten;
  }

  record(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint, source?: { fd: number; offset: number; length: number }): FrameWrite {
    return this.image.record(frame, rawSize, offset, checksum, source);
  }
  append(frame: Uint8Array, rawSize: number, offset: number, checksum: bigint): void {
    this.image.append(frame, rawSize, offset, checksum);
  }
  recordDigest(digest: string, frameDigest: string): void {
    this.image.recordDigest(digest, frameDigest);
  }
  truncateTo(chunks: number): void {
    this.image.truncateTo(chunks);
  }

  async checkpoint(): Promise<void> {
    const w = this.image;
    // what is recorded now; chunks recorded while the sync runs are not covered by it
    const durable = { chunks: w.chunks, rawBytes: w.rawBytes, storedBytes: w.bytesWritten, chunkListBytes: w.chunkListBytes };
    await w.sync();
    this.manifest.durable = durable;
    writeManifest(this.location, this.manifest);
  }

  finish(): number {
    return this.image.finish();
  }

  committed: string | null = null;

  commit(): string {
    writeManifest(this.location, this.manifest);
    const final = this.location.slice(0, -PARTIAL_SUFFIX.length);
    fs.renameSync(this.location, final);
    this.committed = final;
    fsyncDir(path.dirname(final));
    return final;
  }

  saveManifest(): void {
    writeManifest(this.location, this.manifest);
  }

  close(): void {
    this.image.abort();
  }
}

/** Opens a backup directory's data and, lazily, its chunk list and digests. */
export function openLocalBackup(dir: string, image: string, manifest: Manifest | null): BackupReader {
  const reader = ImageReader.open(image);
  const listPath = path.join(dir, manifest?.chunks.file ?? CHUNKS_FILE);
  const digestsPath = manifest?.digests ? path.join(dir, manifest.digests.file) : null;
  return {
    location: dir,
    dataLocation: image,
    manifest,
    entries: reader.entries,
    rawSize: reader.rawSize,
    chunks: reader.entries.length,
    frame: (i, into) => reader.readFrame(i, into),
    extent: (i) => reader.extent(i),
    chunkList: (required = false): ChunkLines | null => (required || (manifest && fs.existsSync(listPath)) ? new ChunkList(listPath) : null),
    checksums: (required = false) => {
      if (!required && !(manifest && fs.existsSync(listPath))) return null;
      const list = new ChunkList(listPath);
      try {
        return readChecksums(list, reader.entries);
      } finally {
        list.close();
      }
    },
    digestList: () => {
      if (!digestsPath) throw Object.assign(new Error(`${dir} has no digest list`), { code: "ENOENT" });
      return fs.readFileSync(digestsPath);
    },
    digestListSize: () => {
      if (!digestsPath) return -1;
      try {
        return fs.statSync(digestsPath).size;
      } catch {
        return -1;
      }
    },
    // (an older version that resumed a partial of this one leaves a frame-xxh3.txt cut short, and a whole frame-digests.txt)
    frameDigests: () =>
      openFrameDigests(path.join(dir, FRAME_DIGESTS_FILE), reader.entries.length, FRAME_DIGEST_HEX) ??
      openFrameDigests(path.join(dir, SHA_FRAME_DIGESTS_FILE), reader.entries.length, 64),
    members: () => fs.readdirSync(dir).map((f) => path.join(dir, f)),
    close: () => reader.close(),
  };
}

/** A list of `hex`-digit lines, one per chunk (frame-xxh3.txt, or frame-digests.txt of the version before): read a line at a time. */
function openFrameDigests(file: string, chunks: number, hex: number): FrameDigests | null {
  const lineBytes = hex + 1;
  const valid = new RegExp(`^[0-9a-f]{${hex}}$`);
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch {
    return null;
  }
  try {
    if (fs.fstatSync(fd).size !== chunks * lineBytes) throw new Error("not one line per chunk");
  } catch {
    fs.closeSync(fd);
    return null;
  }
  const line = Buffer.alloc(lineBytes);
  return {
    at: (i) => {
      if (!Number.isSafeInteger(i) || i < 0 || i >= chunks) return null;
      try {
        if (fs.readSync(fd, line, 0, lineBytes, i * lineBytes) !== lineBytes || line[hex] !== 0x0a) return null;
      } catch {
        return null;
      }
      const digest = line.toString("latin1", 0, hex);
      return valid.test(digest) ? digest : null;
    },
    close: () => fs.closeSync(fd),
  };
}

function startsLikeZstd(file: string): boolean {
  const head = new Uint8Array(4);
  try {
    const fd = fs.openSync(file, "r");
    try {
      fs.readSync(fd, head, 0, 4, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
  return head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd;
}

/** What is at a path given for a backup: a backup directory, or its data file. */
export function probeLocalBackup(p: string): BackupAt {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return { exists: false };
  }
  const dir = st.isDirectory() ? p : path.dirname(p);
  const manifestPath = path.join(dir, MANIFEST_FILE);
  let manifest: Extract<BackupAt, { exists: true }>["manifest"] = null;
  if (fs.existsSync(manifestPath)) {
    try {
      manifest = { ok: true, manifest: readManifest(dir) };
    } catch (e) {
      manifest = { ok: false, error: e, at: manifestPath };
    }
  }
  const m = manifest?.ok ? manifest.manifest : null;
  const image = st.isDirectory() ? path.join(dir, m?.data ?? IMAGE_FILE) : p;
  return {
    exists: true,
    location: dir,
    dataLocation: image,
    isDir: st.isDirectory(),
    manifest,
    hasData: fs.existsSync(image),
    looksLikeData: !st.isDirectory() && startsLikeZstd(p),
    partial: /\.partial\/?$/.test(p) || dir.endsWith(PARTIAL_SUFFIX),
    filesData: path.basename(image) === FILES_FILE,
  };
}
