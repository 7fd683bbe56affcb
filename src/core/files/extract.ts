// restore --files: extract a file-level backup's tar stream under DEST.
// Entries never land outside DEST: absolute names, ".." components, and any
// path that goes through a symlink are refused; existing files are kept
// unless --overwrite. Regular files are written sparse (zero blocks skipped).
import * as fs from "node:fs";
import * as path from "node:path";
import { extract as tarExtract, type Header } from "tar-stream";
import { TbError, errnoText, isErrno, outcome } from "../errors.ts";
import { loadLibc } from "../../util/libc.ts";
import { PAX_RAW_LINKPATH, PAX_RAW_PATH, byteString, bytes, entryName, shown } from "./names.ts";

const ZERO_BLOCK = new Uint8Array(64 * 1024);
// errno values of a full file system, as libc reports them (Linux)
const ENOSPC = 28;
const EDQUOT = 122;

export interface ExtractStats {
  entries: number;
  files: number;
  bytes: number;
  /** entries that could not be created (e.g. device nodes without permission) */
  skipped: string[];
}

// Paths here are byte strings (names.ts): fs gets their bytes, messages show them.
function isRealDir(p: string): boolean {
  try {
    return fs.lstatSync(bytes(p)).isDirectory();
  } catch {
    return false;
  }
}

/** A path (a byte string) for a one-line message: a name of thousands of bytes keeps its start and end. */
function brief(p: string): string {
  const s = shown(p);
  return s.length <= 240 ? s : `${s.slice(0, 120)}...${s.slice(-100)}`;
}

/**
 * An errno error from creating something under DEST, as a TARGET error that says
 * the restore is incomplete; a full file system (no space, no inodes, quota) says so.
 */
function targetError(e: unknown, doing: string, p: string): unknown {
  if (e instanceof TbError || !isErrno(e)) return e;
  if (isErrno(e, "ENOSPC", "EDQUOT")) return new TbError("TARGET", `the destination is full while ${doing} ${brief(p)}`, "free space and restore again", [], outcome.incomplete("extraction"));
  return new TbError("TARGET", `${doing} ${brief(p)} failed: ${errnoText(e)}`, "check the destination", [], outcome.incomplete("extraction"));
}

/** Linux's dev_t from major and minor (glibc gnu_dev_makedev). */
export function makeDev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffn) << 8n) | ((ma & ~0xfffn) << 32n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n);
}

/**
 * Seconds as utimes wants them: a number keeps sub-microsecond precision, but
 * node:fs reads a negative number as "now", so times before 1970 go as a Date (ms).
 */
function fsTime(secs: number): number | Date {
  return secs >= 0 ? secs : new Date(secs * 1000);
}

/** A numeric pax record (uid, gid) when present and sane, else the ustar value. */
function paxId(pax: Record<string, string>, key: string, fallback: number | undefined): number | undefined {
  const v = pax[key];
  return v !== undefined && /^\d{1,10}$/.test(v) && Number(v) <= 0xfffffffe ? Number(v) : fallback;
}

/** The archive name as a safe relative path, or an error saying why not. */
export function safeName(name: string): string | Error {
  const n = name.replace(/\/+$/, "");
  if (!n || n === ".") return new Error("empty name");
  if (n.startsWith("/")) return new Error("absolute name");
  const parts = n.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.some((p) => p === "..")) return new Error("name with '..'");
  if (n.includes("\0")) return new Error("name with a NUL byte");
  return parts.join("/");
}

export class Extractor {
  readonly stats: ExtractStats = { entries: 0, files: 0, bytes: 0, skipped: [] };
  private readonly root: string;
  private readonly ex = tarExtract();
  private failure: Error | null = null;
  private finished: Promise<void>;
  /**
   * directories' modes and times by path, set once everything inside them is written;
   * a later entry for the same directory updates it in place (children stay before parents)
   */
  private readonly dirTimes = new Map<string, { mode: number; mtime: number }>();
  private readonly isRoot = process.getuid?.() === 0;
  /** whether anything under DEST was created, replaced or removed yet (a failure before that changed nothing) */
  private changed = false;

  get changedAnything(): boolean {
    return this.changed;
  }

  constructor(
    dest: string,
    private readonly overwrite: boolean,
  ) {
    try {
      fs.mkdirSync(dest, { recursive: true });
      this.root = byteString(fs.realpathSync(dest));
    } catch (e) {
      throw new TbError("TARGET", `cannot use ${dest} as the destination: ${errnoText(e)}`, "choose a writable directory");
    }
    this.ex.on("entry", (header: Header, stream: AsyncIterable<unknown>, next: (e?: Error) => void) => {
      this.entry(header, stream as AsyncIterable<Buffer>).then(
        () => next(),
        (e: Error) => {
          this.failure ??= e;
          next(e);
        },
      );
    });
    this.finished = new Promise<void>((resolve, reject) => {
      this.ex.on("finish", () => resolve());
      this.ex.on("close", () => resolve());
      this.ex.on("error", (e: Error) => {
        // tar-stream's own errors mean the archive itself is not a valid tar stream
        this.failure ??= e instanceof TbError ? e : new TbError("CORRUPT", `the backup's tar stream is damaged: ${e.message}`, "check the backup with 'tbbackup verify'", [], outcome.incomplete("extraction"));
        reject(this.failure);
      });
    });
    this.finished.catch(() => {});
  }

  /** Feeds the next bytes of the tar stream (waits while the extractor is busy). */
  async write(data: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    if (!this.ex.write(Buffer.from(data))) {
      // wait for room, or for the extraction to fail (then no drain will come)
      await Promise.race([new Promise<void>((r) => this.ex.once("drain", () => r())), this.finished.catch(() => {})]);
    }
    if (this.failure) throw this.failure;
  }

  async end(): Promise<ExtractStats> {
    (this.ex as unknown as { end(): void }).end();
    await this.finished;
    if (this.failure) throw this.failure;
    // Directories reached from root through real directories only (nothing changes
    // under root from here on, so each is checked once; every p lies under root).
    const intact = new Set<string>([this.root]);
    const isIntact = (p: string): boolean => {
      if (intact.has(p)) return true;
      const parent = path.dirname(p);
      if (parent === p || !isIntact(parent) || !isRealDir(p)) return false;
      intact.add(p);
      return true;
    };
    for (const [p, d] of [...this.dirTimes].reverse()) {
      // A later entry may have replaced the directory, or one above it, with a symlink
      // (--overwrite): chmod and utimes follow symlinks, so every component is checked
      // again, as place() did, and only a directory still inside root is touched.
      if (!isIntact(p)) continue;
      try {
        fs.chmodSync(bytes(p), d.mode);
      } catch {}
      try {
        fs.utimesSync(bytes(p), fsTime(d.mtime), fsTime(d.mtime));
      } catch {}
    }
    return this.stats;
  }

  abort(): void {
    this.ex.destroy(new Error("restore stopped"));
  }

  private refuse(name: string, why: string): TbError {
    return new TbError("REFUSED", `refused archive entry ${JSON.stringify(brief(name))}: ${brief(why)}`, "the archive tries to write outside the destination; nothing was written outside it, and extraction stopped");
  }

  /** Resolves an archive name under root, checking that no existing component is a symlink. */
  private place(name: string): string {
    const rel = safeName(name);
    if (rel instanceof Error) throw this.refuse(name, rel.message);
    const parts = rel.split("/");
    let cur = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      cur = path.join(cur, parts[i]!);
      let st: fs.Stats | null = null;
      try {
        st = fs.lstatSync(bytes(cur));
      } catch {}
      if (!st) {
        try {
          this.changed = true;
          fs.mkdirSync(bytes(cur));
        } catch (e) {
          throw targetError(e, "creating", cur);
        }
      } else if (st.isSymbolicLink()) throw this.refuse(name, `it goes through the symlink ${path.relative(this.root, cur)}`);
      else if (!st.isDirectory()) throw this.refuse(name, `${path.relative(this.root, cur)} is not a directory`);
    }
    return path.join(cur, parts[parts.length - 1]!);
  }

  /** Makes room for a new entry at p, or refuses to replace what is there. */
  private clear(p: string, name: string, isDir: boolean): boolean {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(bytes(p));
    } catch {
      this.changed = true; // the caller creates p now
      return true;
    }
    if (isDir && st.isDirectory()) return false; // merge into an existing directory
    if (!this.overwrite)
      throw new TbError("TARGET", `${brief(path.join(this.root, safeName(name) as string))} already exists`, "restore into an empty directory, or pass --overwrite to replace existing files");
    this.changed = true;
    try {
      fs.rmSync(bytes(p), { recursive: st.isDirectory(), force: true });
    } catch (e) {
      throw targetError(e, "replacing", p);
    }
    if (st.isDirectory()) {
      // what was under the directory is gone: its saved modes and times must not
      // land on whatever takes its place (perhaps a symlink to outside root)
      for (const d of this.dirTimes.keys()) if (d === p || d.startsWith(p + "/")) this.dirTimes.delete(d);
    }
    return true;
  }

  private async entry(h: Header, stream: AsyncIterable<Buffer>): Promise<void> {
    this.stats.entries++;
    const pax = (h as Header & { pax?: Record<string, string> }).pax ?? {};
    const name = entryName(h.name, pax[PAX_RAW_PATH]);
    const p = this.place(name);
    try {
      await this.create(p, name, pax, h, stream);
    } catch (e) {
      // whatever the file system says no to (a name too long, no inodes left, a
      // read-only or vanished directory) leaves DEST incomplete: say so, in one line
      throw targetError(e, "creating", p);
    }
  }

  /** Makes entry `name` at p (both byte strings). */
  private async create(p: string, name: string, pax: Record<string, string>, h: Header, stream: AsyncIterable<Buffer>): Promise<void> {
    const linkname = entryName(h.linkname ?? "", pax[PAX_RAW_LINKPATH]);
    // seconds, with the sub-second part from the pax header when present
    const mtime: number = pax.mtime ? Number(pax.mtime) : (h.mtime ?? new Date()).getTime() / 1000;
    const type = h.type ?? "file";
    if (type !== "file" && type !== "contiguous-file") {
      // drain whatever data the entry has (normally none)
      for await (const _ of stream) void _;
    }
    switch (type) {
      case "directory":
        this.clear(p, name, true);
        fs.mkdirSync(bytes(p), { recursive: true });
        this.dirTimes.set(p, { mode: (h.mode ?? 0o755) & 0o7777, mtime });
        break;
      case "file":
      case "contiguous-file":
        this.clear(p, name, false);
        await this.writeFile(p, stream);
        this.stats.files++;
        break;
      case "symlink":
        this.clear(p, name, false);
        fs.symlinkSync(bytes(linkname), bytes(p));
        break;
      case "link": {
        const target = this.place(linkname);
        this.clear(p, name, false);
        try {
          fs.linkSync(bytes(target), bytes(p));
        } catch (e) {
          if (isErrno(e, "ENOSPC", "EDQUOT")) throw targetError(e, "creating", p);
          throw new TbError("TARGET", `cannot hard-link ${brief(name)} to ${brief(linkname)}: ${errnoText(e)}`, "", [], outcome.incomplete("extraction"));
        }
        break;
      }
      case "fifo":
      case "character-device":
      case "block-device": {
        this.clear(p, name, false);
        const px = await loadLibc();
        const mode = (h.mode ?? 0o644) & 0o7777;
        const dev = makeDev(h.devmajor ?? 0, h.devminor ?? 0);
        const kind = type === "fifo" ? 0o010000 : type === "character-device" ? 0o020000 : 0o060000;
        const rc = !px ? -1 : type === "fifo" ? px.mkfifo(bytes(p), mode) : px.mknod(bytes(p), kind | mode, dev);
        if (rc !== 0) {
          // a full file system is not a kind of entry this system cannot make
          const errno = px?.errno();
          if (errno === ENOSPC || errno === EDQUOT) throw new TbError("TARGET", `the destination is full while creating ${brief(p)}`, "free space and restore again", [], outcome.incomplete("extraction"));
          this.stats.skipped.push(`${brief(name)} (${type})`);
          return;
        }
        break;
      }
      default:
        this.stats.skipped.push(`${brief(name)} (${type})`);
        return;
    }
    this.setAttrs(p, h, pax, mtime, type);
  }

  private setAttrs(p: string, h: Header, pax: Record<string, string>, mtime: number, type: string): void {
    // A hard link shares its inode with the first name, whose attributes are set
    // already; and it may be a hard link to a symlink, which chmod/utimes would follow.
    if (type === "link") return;
    let link = type === "symlink";
    try {
      link ||= fs.lstatSync(bytes(p)).isSymbolicLink();
    } catch {
      return;
    }
    const uid = paxId(pax, "uid", h.uid);
    const gid = paxId(pax, "gid", h.gid);
    if (this.isRoot && uid !== undefined && gid !== undefined) {
      try {
        fs.lchownSync(bytes(p), uid, gid);
      } catch {}
    }
    // A directory keeps a writable mode until its entries are in (see end()).
    if (!link && type !== "directory") {
      try {
        fs.chmodSync(bytes(p), (h.mode ?? 0o644) & 0o7777);
      } catch {}
    }
    try {
      if (link) fs.lutimesSync(bytes(p), fsTime(mtime), fsTime(mtime));
      else if (type !== "directory") fs.utimesSync(bytes(p), fsTime(mtime), fsTime(mtime));
    } catch {}
  }

  private async writeFile(p: string, stream: AsyncIterable<Buffer>): Promise<void> {
    let fd: number;
    try {
      fd = fs.openSync(bytes(p), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    } catch (e) {
      if (isErrno(e, "ENOSPC", "EDQUOT")) throw targetError(e, "creating", p);
      throw new TbError("TARGET", `cannot create ${brief(p)}: ${errnoText(e)}`, "check the destination", [], outcome.incomplete("extraction"));
    }
    let off = 0;
    try {
      for await (const chunk of stream) {
        // Skip all-zero blocks so sparse files stay sparse; ftruncate fixes the length.
        for (let at = 0; at < chunk.length; at += ZERO_BLOCK.length) {
          const piece = chunk.subarray(at, Math.min(chunk.length, at + ZERO_BLOCK.length));
          if (!(piece.length === ZERO_BLOCK.length && piece.equals(ZERO_BLOCK))) {
            let done = 0;
            while (done < piece.length) done += fs.writeSync(fd, piece, done, piece.length - done, off + done);
          }
          off += piece.length;
        }
      }
      fs.ftruncateSync(fd, off);
      this.stats.bytes += off;
    } catch (e) {
      if (e instanceof TbError) throw e;
      if (isErrno(e, "ENOSPC", "EDQUOT")) throw new TbError("TARGET", `the destination is full while writing ${brief(p)}`, "free space and restore again", [], outcome.incomplete("extraction"));
      throw new TbError("TARGET", `writing ${brief(p)} failed: ${errnoText(e)}`, "", [], outcome.incomplete("extraction"));
    } finally {
      fs.closeSync(fd);
    }
  }
}
