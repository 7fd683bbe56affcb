// push --files: a directory tree as a tar stream (tar-stream, pax headers),
// read chunk by chunk like an image. Unreadable files are skipped and listed,
// parts of files that cannot be read are stored as zeros and the file listed;
// files that change while being read are reported. The walk stays on each
// root's file system unless told to cross mounts.
import * as fs from "node:fs";
import * as path from "node:path";
import { pack as tarPack, type Header } from "tar-stream";
import type { FilesSummary } from "../../protocol/messages.ts";
import type { PushSource } from "../push.ts";
import { TbError, errnoText } from "../errors.ts";
import { PAX_RAW_LINKPATH, PAX_RAW_PATH, asciiStandIn, byteString, bytes, encodePax, isText, paxHeaderBlocks, shown } from "./names.ts";
import { POSIX_FADV_DONTNEED, POSIX_FADV_NORMAL, POSIX_FADV_RANDOM, loadLibc, type Libc } from "../../util/libc.ts";

const FILE_READ = 1024 * 1024;
/** After a read error, a range is read again in pieces of this size (a page: what the kernel reads or fails at once). */
const PIECE = 4096;
/** Failed pieces in a row after which a bad area is probed instead of read piece by piece. */
const SKIP_AFTER = 16;

type Hdr = Partial<Header> & { name: string; pax?: Record<string, string> };
type EntryStream = { write(b: Uint8Array): boolean; end(): void; destroy(e?: Error): void; once(ev: "drain", f: () => void): void };

export interface TarSourceOptions {
  roots: string[];
  strict: boolean;
  label: string | null;
  /** walk into file systems mounted inside the roots (otherwise only their mount points are archived) */
  crossMounts: boolean;
}

/**
 * How an absolute root appears in the archive: its base name ("/" contributes
 * its children). A root that is a symlink to a directory is walked through: the
 * directory it points to is stored under the symlink's name.
 */
export function archiveRoots(roots: string[]): { root: string; name: string }[] {
  const out: { root: string; name: string }[] = [];
  const seen = new Map<string, string>();
  for (const r of roots) {
    const abs = path.resolve(r);
    let root = abs;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(abs);
      if (st.isSymbolicLink()) {
        root = fs.realpathSync(abs);
        st = fs.statSync(root);
      }
    } catch (e) {
      throw new TbError("SOURCE", `cannot read ${r}: ${errnoText(e)}`, "check the path (is the file system mounted?)");
    }
    if (!st.isDirectory()) throw new TbError("SOURCE", `${r} is not a directory`, "give directories to push --files");
    const name = abs === "/" ? "" : path.basename(abs);
    if (seen.has(name)) throw new TbError("USAGE", `two roots are both named '${name || "/"}' in the archive`, "push them separately or from their common parent");
    seen.set(name, r);
    out.push({ root, name });
  }
  // "/" stores its children under their own names: another root must not use one of them
  if (seen.has("") && out.length > 1) {
    const inSlash = (name: string) => {
      try {
        fs.lstatSync(path.join("/", name));
        return true;
      } catch {
        return false;
      }
    };
    for (const [name, r] of seen) {
      if (name && inSlash(name))
        throw new TbError("USAGE", `/ and ${r} would both store '${name}' in the archive`, "push them separately");
    }
  }
  return out;
}

/** A pax time: seconds with up to nine decimals ("-1.25" is 1.25 s before the epoch). */
export function paxTime(ns: bigint): string {
  const neg = ns < 0n;
  const a = neg ? -ns : ns;
  const frac = (a % 1_000_000_000n).toString().padStart(9, "0").replace(/0+$/, "");
  return `${neg ? "-" : ""}${a / 1_000_000_000n}${frac ? "." + frac : ""}`;
}

/** The ustar fields hold what tar-stream can encode; pax records carry the exact values. */
const USTAR_ID_MAX = 0o777777; // tar-stream writes 6 octal digits and clamps larger ids
const USTAR_TIME_MAX = 2 ** 31 - 1; // tar-stream truncates the ustar mtime to 32 bits

/** Linux's dev_t split (glibc gnu_dev_major/gnu_dev_minor). */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  return {
    major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n)),
    minor: Number((rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n)),
  };
}

export function tarSource(opts: TarSourceOptions): PushSource {
  const roots = archiveRoots(opts.roots);
  const summary: FilesSummary = { roots: roots.map((r) => r.root), count: 0, bytes: 0, unreadable: [], changed: [], mounts: [] };
  const pack = tarPack();
  // its errors reach the reader through failure/read(); one after close (the
  // receiver never came) must not surface as an uncaught error event
  pack.on("error", () => {});
  const links = new Map<string, string>();
  const names = new Map<number, string>();
  const groups = new Map<number, string>();
  let failure: Error | null = null;
  let libc: Libc | null = null;
  /**
   * What each file is read into, one after another (what goes into the
   * archive is a copy): a fresh zeroed megabyte per file cost a push of a
   * tree of small files its memory and a tenth of its CPU.
   */
  const fileBuf = new Uint8Array(FILE_READ);

  const userName = (uid: number) => lookup(names, uid, "/etc/passwd");
  const groupName = (gid: number) => lookup(groups, gid, "/etc/group");

  /** Writes one entry; its name and linkname are byte strings (names.ts). */
  async function writeEntry(header: Hdr, body?: (w: EntryStream) => Promise<void>): Promise<void> {
    const name = header.name;
    const link = header.linkname ?? undefined;
    if (isText(name) && (link === undefined || isText(link))) {
      header = { ...header, name: shown(name), ...(link !== undefined ? { linkname: shown(link) } : {}) };
    } else {
      // Not UTF-8: the raw bytes go in a pax header of our own, the ustar fields get a stand-in.
      const records: [string, Uint8Array | string][] = [["hdrcharset", "BINARY"], ["path", bytes(name)]];
      if (!isText(name)) records.push([PAX_RAW_PATH, bytes(name).toString("base64")]);
      if (link !== undefined) {
        records.push(["linkpath", bytes(link)]);
        if (!isText(link)) records.push([PAX_RAW_LINKPATH, bytes(link).toString("base64")]);
      }
      for (const [k, v] of Object.entries(header.pax ?? {})) records.push([k, v]);
      // between two entries, so the blocks land right before the entry they describe
      (pack as unknown as { push(b: Uint8Array): boolean }).push(paxHeaderBlocks(encodePax(records), Math.floor((header.mtime?.getTime() ?? 0) / 1000)));
      header = { ...header, name: asciiStandIn(name), ...(link !== undefined ? { linkname: asciiStandIn(link) } : {}), pax: undefined };
    }
    await new Promise<void>((resolve, reject) => {
      const entry = pack.entry(header as Header, (err?: Error | null) => (err ? reject(err) : resolve())) as unknown as EntryStream;
      if (!body) return;
      body(entry).then(
        () => entry.end(),
        (e) => {
          entry.destroy(e);
          reject(e);
        },
      );
    });
  }

  /** A file skipped (nothing archived), or with `zeroed` bytes stored as zeros where reads failed. */
  function unreadable(p: string, e: unknown, zeroed?: number): void {
    if (opts.strict) throw new TbError("SOURCE", `cannot read ${shown(p)}: ${errnoText(e)}`, "without --strict, unreadable files are skipped and listed at the end");
    summary.unreadable.push(zeroed === undefined ? `${shown(p)}: ${errnoText(e)}` : `${shown(p)}: stored with ${zeroed} bytes zeroed (${errnoText(e)})`);
  }

  /** False when the file could not be opened (nothing was archived for it). */
  async function addFile(abs: string, name: string, st: fs.BigIntStats, header: Hdr): Promise<boolean> {
    let fd: number;
    try {
      fd = fs.openSync(bytes(abs), "r");
    } catch (e) {
      unreadable(abs, e);
      return false;
    }
    try {
      const size = Number(st.size);
      header.size = size;
      let readError: unknown = null;
      let zeroed = 0;
      let eof = false;
      /** Reads buf[at, at+len) from the file at off+at, whole; false (and zeros) where it fails. */
      const readPiece = (buf: Uint8Array, at: number, len: number, off: number): boolean => {
        let got = 0;
        try {
          while (got < len) {
            const n = fs.readSync(fd, buf, at + got, len - got, off + at + got);
            if (n === 0) {
              eof = true;
              break;
            }
            got += n;
          }
        } catch (e) {
          readError ??= e;
          buf.fill(0, at + got, at + len);
          zeroed += len - got;
          return false;
        }
        buf.fill(0, at + got, at + len);
        return true;
      };
      /**
       * Fills buf[0, want) from the file at `off`. After a failed read the range
       * is read again in PIECE-aligned pieces, and only the pieces that fail
       * become zeros. A failing disk can take seconds per failed read, so after
       * SKIP_AFTER failures in a row the rest of a bad area is not read piece by
       * piece: probes at doubling distances find where readable data starts
       * again, and the pieces before that probe are read backwards until one
       * fails (a bad area is usually one stretch). Pieces left unread there are
       * counted as zeroed. The next range starts with a full read. The header
       * promised `size` bytes, so what lies past an early end of file is zeros.
       */
      const readRange = (buf: Uint8Array, want: number, off: number): void => {
        const [zeroedBefore, errorBefore] = [zeroed, readError];
        if (readPiece(buf, 0, want, off)) return;
        // counted piece by piece below (the pieces may all read now)
        [zeroed, readError] = [zeroedBefore, errorBefore];
        // The page cache holds the failed read as one folio (up to the readahead
        // window): drop it and read without readahead, so each piece fails alone.
        libc?.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        libc?.fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
        const bounds: [number, number][] = [];
        for (let at = 0; at < want; ) {
          const len = Math.min(want - at, PIECE - ((off + at) % PIECE));
          bounds.push([at, len]);
          at += len;
        }
        const piece = (k: number) => readPiece(buf, bounds[k]![0], bounds[k]![1], off);
        const unread = (from: number, to: number) => {
          for (let k = from; k < to; k++) {
            buf.fill(0, bounds[k]![0], bounds[k]![0] + bounds[k]![1]);
            zeroed += bounds[k]![1];
          }
        };
        let failedInRow = 0;
        let k = 0;
        while (k < bounds.length && !eof) {
          if (piece(k++)) {
            failedInRow = 0;
            continue;
          }
          if (++failedInRow < SKIP_AFTER) continue;
          // pieces k.. lie in a bad area, probably: probe ahead
          let lastFailed = k - 1;
          let good = -1;
          for (let stride = 2; k - 1 + stride < bounds.length; stride *= 2) {
            const j = k - 1 + stride;
            if (piece(j)) {
              good = j;
              break;
            }
            unread(lastFailed + 1, j);
            lastFailed = j;
          }
          if (good < 0) {
            unread(lastFailed + 1, bounds.length);
            break;
          }
          // back from the readable probe to the end of the bad area
          let back = good - 1;
          while (back > lastFailed && piece(back)) back--;
          unread(lastFailed + 1, back);
          k = good + 1;
          failedInRow = 0;
        }
        // past an early end of file: zeros (the piece that met it filled its own rest)
        if (eof && k < bounds.length) buf.fill(0, bounds[k]![0], want);
        libc?.fadvise(fd, 0, 0, POSIX_FADV_NORMAL);
      };
      await writeEntry(header, async (w) => {
        const buf = fileBuf;
        let off = 0;
        while (off < size) {
          const want = Math.min(buf.length, size - off);
          readRange(buf, want, off);
          off += want;
          if (!w.write(buf.slice(0, want))) await new Promise<void>((r) => w.once("drain", r));
        }
      });
      if (readError) unreadable(abs, readError, zeroed);
      const after = fs.fstatSync(fd, { bigint: true });
      // ended before its size (truncated while read, or a sysfs file): stored padded with zeros
      if (eof || after.size !== st.size || after.mtimeNs !== st.mtimeNs) summary.changed.push(shown(name));
      summary.bytes += size;
      return true;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** `dev`: the root's file system, which the walk stays on (null: --cross-mounts). */
  async function walk(abs: string, name: string, dev: bigint | null): Promise<void> {
    if (failure) return;
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(bytes(abs), { bigint: true });
    } catch (e) {
      unreadable(abs, e);
      return;
    }
    const uid = Number(st.uid);
    const gid = Number(st.gid);
    const uname = userName(uid);
    const gname = groupName(gid);
    const pax: Record<string, string> = { mtime: paxTime(st.mtimeNs) };
    // Values the ustar fields cannot hold go into pax records (GNU tar and the extractor read them).
    if (uid > USTAR_ID_MAX) pax.uid = String(uid);
    if (gid > USTAR_ID_MAX) pax.gid = String(gid);
    if (Buffer.byteLength(uname) > 31) pax.uname = uname;
    if (Buffer.byteLength(gname) > 31) pax.gname = gname;
    const secs = Number(st.mtimeNs / 1_000_000_000n);
    const header: Hdr = {
      name,
      // with the file-type bits: tar-stream masks them off, but would turn a plain 0 (chmod 000) into 0644
      mode: Number(st.mode),
      uid: Math.min(uid, USTAR_ID_MAX),
      gid: Math.min(gid, USTAR_ID_MAX),
      uname: pax.uname ? "" : uname,
      gname: pax.gname ? "" : gname,
      mtime: new Date(Math.min(Math.max(secs, 0), USTAR_TIME_MAX) * 1000),
      pax,
    };
    if (dev !== null && st.dev !== dev) {
      // another file system mounted here (/proc under /, a tmpfs, a bind mount):
      // its mount point is archived as an empty directory, its contents are not
      summary.mounts!.push(shown(abs));
      if (st.isDirectory()) {
        summary.count++;
        await writeEntry({ ...header, type: "directory" });
      }
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    const linked = !st.isDirectory() && st.nlink > 1n;
    if (linked) {
      const first = links.get(key);
      if (first) {
        summary.count++;
        await writeEntry({ ...header, type: "link", linkname: first, size: 0 });
        return;
      }
    }
    // Later names of this inode become links to this one, once it is in the archive.
    const archived = () => {
      if (linked) links.set(key, name);
    };
    if (st.isDirectory()) {
      let children: string[];
      try {
        children = fs.readdirSync(bytes(abs), { encoding: "buffer" }).map(byteString).sort();
      } catch (e) {
        unreadable(abs, e);
        return;
      }
      if (name) {
        summary.count++;
        await writeEntry({ ...header, type: "directory" });
      }
      for (const c of children) await walk(`${abs === "/" ? "" : abs}/${c}`, name ? `${name}/${c}` : c, dev);
      return;
    }
    summary.count++;
    if (st.isFile()) {
      if (await addFile(abs, name, st, { ...header, type: "file" })) archived();
      else summary.count--;
      return;
    }
    if (st.isSymbolicLink()) {
      let target: string;
      try {
        target = byteString(fs.readlinkSync(bytes(abs), { encoding: "buffer" }));
      } catch (e) {
        summary.count--;
        unreadable(abs, e);
        return;
      }
      await writeEntry({ ...header, type: "symlink", linkname: target });
      return archived();
    }
    if (st.isFIFO()) {
      await writeEntry({ ...header, type: "fifo" });
      return archived();
    }
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      const { major, minor } = splitDev(st.rdev);
      await writeEntry({ ...header, type: st.isCharacterDevice() ? "character-device" : "block-device", devmajor: major, devminor: minor });
      return archived();
    }
    summary.count--; // sockets are not archived
  }

  const producer = (async () => {
    try {
      libc = await loadLibc();
      for (const r of roots) {
        let dev: bigint | null = null;
        if (!opts.crossMounts) {
          try {
            dev = fs.statSync(r.root, { bigint: true }).dev;
          } catch {} // walk() reports it
        }
        await walk(byteString(r.root), byteString(r.name), dev);
      }
      pack.finalize();
    } catch (e) {
      failure = e as Error;
      pack.destroy(e as Error);
    }
  })();
  void producer;

  // Consumer side: fill chunk buffers from the pack stream.
  const iterator = (pack as unknown as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  let pending: Uint8Array | null = null;
  let ended = false;

  const label = opts.label ?? `files-${roots.map((r) => r.name || "root").join("+")}`;
  return {
    size: null,
    content: "files",
    disk: { path: roots.map((r) => r.root).join(" "), kind: "files", name: label, size: 0, model: null, serial: null, wwn: null, logicalBlockSize: null, partitionTable: null },
    async read(buf) {
      let filled = 0;
      while (filled < buf.length) {
        if (!pending || pending.length === 0) {
          if (ended) break;
          let r: IteratorResult<Uint8Array>;
          try {
            r = await iterator.next();
          } catch (e) {
            throw failure instanceof TbError ? failure : new TbError("SOURCE", `reading the file tree failed: ${(failure ?? (e as Error)).message}`, "check the source file system");
          }
          if (r.done) {
            ended = true;
            if (failure) throw failure;
            break;
          }
          pending = r.value;
        }
        const take = Math.min(pending.length, buf.length - filled);
        buf.set(pending.subarray(0, take), filled);
        pending = pending.subarray(take);
        filled += take;
      }
      return filled;
    },
    summary: () => ({ files: summary }),
    close: () => {
      pack.destroy(); // (with an error, streamx hands it to whoever waits: the producer and its entry)
    },
  };
}

/** uid/gid -> name from the source system's passwd/group files (no NSS in an initramfs). */
function lookup(cache: Map<number, string>, id: number, file: string): string {
  if (cache.size === 0) {
    try {
      for (const line of fs.readFileSync(file, "utf8").split("\n")) {
        const [name, , num] = line.split(":");
        if (name && num !== undefined && !cache.has(Number(num))) cache.set(Number(num), name);
      }
    } catch {}
    if (cache.size === 0) cache.set(-1, "");
  }
  return cache.get(id) ?? "";
}
