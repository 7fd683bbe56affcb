// StoreError: the store says what kind of trouble it found (damaged, newer
// format, not a backup) by code, and core decides on the code.
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { StoreError, storeKind } from "../../src/store/errors.ts";
import { readManifest, MANIFEST_FORMAT } from "../../src/store/manifest.ts";
import { ImageReader, parseChunkLine } from "../../src/store/image-reader.ts";
import { parseFooter } from "../../src/store/seekable.ts";
import { within } from "../../src/store/layout.ts";
import { locateBackup } from "../../src/core/verify.ts";
import { TbError, isErrno } from "../../src/errors.ts";
import { tempDir, cleanup } from "../helpers/cli.ts";

const dir = tempDir("store-errors");
afterAll(() => cleanup(dir));

function codeOf(f: () => unknown): string | null {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(StoreError);
    return storeKind(e);
  }
  throw new Error("did not throw");
}

function backupWithManifest(name: string, text: string): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, "manifest.json"), text);
  return d;
}

test("manifests: newer format, not a manifest, damaged JSON; the text is as before", () => {
  const newer = backupWithManifest("newer", JSON.stringify({ format: MANIFEST_FORMAT + 1 }));
  expect(codeOf(() => readManifest(newer))).toBe("NEWER_FORMAT");
  expect(() => readManifest(newer)).toThrow(`manifest format ${MANIFEST_FORMAT + 1} is newer than this tbbackup understands`);
  expect(codeOf(() => readManifest(backupWithManifest("notone", JSON.stringify({ hello: 1 }))))).toBe("NOT_A_BACKUP");
  expect(codeOf(() => readManifest(backupWithManifest("null", "null")))).toBe("NOT_A_BACKUP");
  expect(codeOf(() => readManifest(backupWithManifest("cut", '{"format": 2, "id"')))).toBe("DAMAGED");
  // a missing manifest is the file system's error, not the store's
  expect(storeKind((() => { try { readManifest(path.join(dir, "nothing")); } catch (e) { return e; } })())).toBeNull();
});

test("images, seek tables and chunk lists: damage is DAMAGED", () => {
  const tiny = path.join(dir, "tiny.zst");
  fs.writeFileSync(tiny, "0123");
  expect(codeOf(() => ImageReader.open(tiny))).toBe("DAMAGED");
  const noTable = path.join(dir, "notable.zst");
  fs.writeFileSync(noTable, new Uint8Array(64));
  expect(codeOf(() => ImageReader.open(noTable))).toBe("DAMAGED");
  expect(codeOf(() => parseFooter(new Uint8Array(3)))).toBe("DAMAGED");
  expect(codeOf(() => parseChunkLine("0 0 1048576 zz"))).toBe("DAMAGED");
  expect(() => parseChunkLine("0 0 1048576 zz")).toThrow("malformed line in chunk list: 0 0 1048576 zz");
  expect(codeOf(() => within(dir, "..", "elsewhere"))).toBe("LAYOUT");
  // not mistaken for a file-system error (errnoText would print its kind instead of its text)
  expect(isErrno(new StoreError("DAMAGED", "x"))).toBe(false);
});

test("core maps by code: a newer manifest says to upgrade (exit 6), a damaged one stays a verify failure (exit 10)", () => {
  const newer = backupWithManifest("newer2", JSON.stringify({ format: MANIFEST_FORMAT + 5 }));
  let err: unknown;
  try {
    locateBackup(newer);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(TbError);
  expect((err as TbError).code).toBe("PROTOCOL");
  expect((err as TbError).exitCode).toBe(6);
  expect((err as TbError).oneLine()).toContain("is newer than this tbbackup understands; upgrade tbbackup to read this backup");
  const cut = backupWithManifest("cut2", "{");
  try {
    locateBackup(cut);
    err = null;
  } catch (e) {
    err = e;
  }
  expect((err as TbError).code).toBe("VERIFY");
  expect((err as TbError).oneLine()).toMatch(/manifest\.json is unreadable: .*; the backup's manifest is damaged$/);
});
