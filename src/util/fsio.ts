// Positioned writes that do not stop short.
import * as fs from "node:fs";

/** pwrite all of `data` at `position` (a write may take less than asked: the rest follows); throws the write's error. */
export function pwriteAll(fd: number, data: Uint8Array, position: number): void {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, position + off);
}
