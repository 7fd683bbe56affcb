// The few libc calls Node's fs lacks (flock, mknod, mkfifo, posix_fadvise,
// lseek, the BLKZEROOUT and FICLONERANGE ioctls, and unix sockets as plain descriptors),
// through bun:ffi, loaded once on first use. null where libc cannot be loaded:
// callers fall back or report what they could not do.
export interface Libc {
  flock(fd: number, op: number): number;
  /** a path as a string (UTF-8) or as its bytes */
  mknod(path: string | Uint8Array, mode: number, dev: bigint): number;
  mkfifo(path: string | Uint8Array, mode: number): number;
  /** advice on a byte range; POSIX_FADV_DONTNEED drops clean cached pages */
  fadvise(fd: number, offset: number, length: number, advice: number): number;
  /** the new offset, or -1 (SEEK_DATA past the last data: ENXIO) */
  lseek(fd: number, offset: number, whence: number): number;
  socket(domain: number, type: number, protocol: number): number;
  connect(fd: number, addr: Uint8Array): number;
  bind(fd: number, addr: Uint8Array): number;
  listen(fd: number, backlog: number): number;
  /** a connection from the queue (a non-blocking, close-on-exec descriptor), or -1 */
  accept(fd: number): number;
  shutdown(fd: number, how: number): number;
  /** clears O_NONBLOCK on a descriptor */
  makeBlocking(fd: number): number;
  /** sets O_NONBLOCK on a descriptor */
  makeNonBlocking(fd: number): number;
  /** BLKZEROOUT: the block device zeroes [offset, offset + length) itself; 0, or -1 (errno) */
  blkZeroOut(fd: number, offset: number, length: number): number;
  /** FICLONERANGE: dest shares src's blocks [srcOffset, srcOffset + length) at destOffset (btrfs, XFS with reflink); 0, or -1 (errno) */
  cloneRange(destFd: number, srcFd: number, srcOffset: number, length: number, destOffset: number): number;
  /** errno of the last failed call on this thread */
  errno(): number;
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
export const POSIX_FADV_NORMAL = 0;
export const POSIX_FADV_RANDOM = 1;
export const POSIX_FADV_DONTNEED = 4;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SHUT_RDWR = 2;
/** _IO(0x12, 127) */
const BLKZEROOUT = 0x127f;
/** _IOW(0x94, 13, struct file_clone_range): 32 bytes, {s64 src_fd, u64 src_offset, u64 src_length, u64 dest_offset} */
const FICLONERANGE = 0x4020940d;
const F_GETFL = 3;
const F_SETFL = 4; // O_NONBLOCK has the value of SOCK_NONBLOCK

let libc: Libc | null | undefined;

export async function loadLibc(): Promise<Libc | null> {
  if (libc !== undefined) return libc;
  libc = null;
  try {
    const { dlopen, FFIType, read } = await import("bun:ffi");
    for (const name of ["libc.so.6", "libc.so", "libc.musl-x86_64.so.1"]) {
      try {
        const lib = dlopen(name, {
          flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
          mknod: { args: [FFIType.ptr, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
          mkfifo: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
          posix_fadvise: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.i32], returns: FFIType.i32 },
          lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64 },
          socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
          connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
          bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
          listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
          accept4: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
          shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
          fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
          ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
          __errno_location: { args: [], returns: FFIType.ptr },
        });
        const cstr = (s: string | Uint8Array) => (typeof s === "string" ? new TextEncoder().encode(s + "\0") : Buffer.concat([s, new Uint8Array(1)]));
        libc = {
          flock: (fd, op) => lib.symbols.flock(fd, op) as number,
          mknod: (p, mode, dev) => lib.symbols.mknod(cstr(p), mode, dev) as number,
          mkfifo: (p, mode) => lib.symbols.mkfifo(cstr(p), mode) as number,
          fadvise: (fd, off, len, adv) => lib.symbols.posix_fadvise(fd, BigInt(off), BigInt(len), adv) as number,
          lseek: (fd, off, whence) => Number(lib.symbols.lseek(fd, BigInt(off), whence)),
          socket: (d, t, p) => lib.symbols.socket(d, t, p) as number,
          connect: (fd, addr) => lib.symbols.connect(fd, addr, addr.length) as number,
          bind: (fd, addr) => lib.symbols.bind(fd, addr, addr.length) as number,
          listen: (fd, backlog) => lib.symbols.listen(fd, backlog) as number,
          accept: (fd) => lib.symbols.accept4(fd, null, null, SOCK_CLOEXEC | SOCK_NONBLOCK) as number,
          shutdown: (fd, how) => lib.symbols.shutdown(fd, how) as number,
          makeBlocking: (fd) => {
            const flags = lib.symbols.fcntl(fd, F_GETFL, 0) as number;
            return flags < 0 ? flags : (lib.symbols.fcntl(fd, F_SETFL, flags & ~SOCK_NONBLOCK) as number);
          },
          makeNonBlocking: (fd) => {
            const flags = lib.symbols.fcntl(fd, F_GETFL, 0) as number;
            return flags < 0 ? flags : (lib.symbols.fcntl(fd, F_SETFL, flags | SOCK_NONBLOCK) as number);
          },
          blkZeroOut: (fd, offset, length) => lib.symbols.ioctl(fd, BigInt(BLKZEROOUT), new BigUint64Array([BigInt(offset), BigInt(length)])) as number,
          cloneRange: (destFd, srcFd, srcOffset, length, destOffset) =>
            lib.symbols.ioctl(destFd, BigInt(FICLONERANGE), new BigUint64Array([BigInt(srcFd), BigInt(srcOffset), BigInt(length), BigInt(destOffset)])) as number,
          errno: () => read.i32(lib.symbols.__errno_location()!, 0),
        };
        break;
      } catch {}
    }
  } catch {}
  return libc;
}
