// Key files for tcp: authentication: 32 random bytes written as one line of
// hex, mode 0600. A key file that group or others may read is refused: the
// key is the only thing between the network and the backups.
import * as fs from "node:fs";
import { randomBytes } from "node:crypto";
import { KEY_BYTES } from "../protocol/auth.ts";
import { TbError, errnoText } from "./errors.ts";

/** A new key as the line a key file holds. */
export function newKeyLine(): string {
  return randomBytes(KEY_BYTES).toString("hex") + "\n";
}

/** Writes a new key file (never over an existing file), mode 0600. */
export function writeKeyFile(file: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (e) {
    throw new TbError(
      "DEST",
      `cannot create ${file}: ${errnoText(e)}`,
      (e as NodeJS.ErrnoException).code === "EEXIST" ? "it exists already: choose another name, or remove it first (a key in use stops working)" : "check the path and permissions",
    );
  }
  try {
    fs.fchmodSync(fd, 0o600); // whatever the umask
    fs.writeSync(fd, newKeyLine());
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads a key file: one line, 64 hex digits or the base64 of 32 bytes, readable by its owner only. */
export function readKeyFile(file: string): Uint8Array {
  let st: fs.Stats;
  let text: string;
  try {
    st = fs.statSync(file);
    if (!st.isFile()) throw new TbError("USAGE", `the key file ${file} is not a regular file`, "give a file made by 'tbbackup keygen FILE'");
    if (st.size > 4096) throw new TbError("USAGE", `${file} is too large to be a key file`, "give a file made by 'tbbackup keygen FILE'");
    text = fs.readFileSync(file, "utf8").trim();
  } catch (e) {
    if (e instanceof TbError) throw e;
    throw new TbError("USAGE", `cannot read the key file ${file}: ${errnoText(e)}`, "give a file made by 'tbbackup keygen FILE'");
  }
  if ((st.mode & 0o077) !== 0)
    throw new TbError("REFUSED", `the key file ${file} can be read by others (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")})`, `make it private: chmod 600 ${file}`);
  let key: Buffer | null = null;
  if (/^[0-9a-fA-F]{64}$/.test(text)) key = Buffer.from(text, "hex");
  else if (/^[A-Za-z0-9+/]{43}=$/.test(text)) key = Buffer.from(text, "base64");
  if (!key || key.length !== KEY_BYTES) throw new TbError("USAGE", `${file} does not hold a key (one line: 64 hex digits, or 32 bytes in base64)`, "make one with 'tbbackup keygen FILE'");
  return key;
}
