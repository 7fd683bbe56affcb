// TbError's outcome: the words that say what a failure left behind lead the hint,
// and callers decide on the outcome's kind, not on the hint's text.
import { expect, test } from "bun:test";
import { TbError, outcome, saysUnfinished } from "../../src/errors.ts";

test("an outcome's words lead the hint; advice keeps the rest", () => {
  const e = new TbError("CLOSED", "the stream was cut", "run the command again", [], outcome.incomplete("backup"));
  expect(e.hint).toBe("the backup is incomplete; run the command again");
  expect(e.advice).toBe("run the command again");
  expect(e.oneLine()).toBe("the stream was cut; the backup is incomplete; run the command again");
  expect(new TbError("TARGET", "x", "", [], outcome.incomplete("extraction")).hint).toBe("the extraction is incomplete");
  expect(new TbError("TARGET", "x", "restore again", [], outcome.target()).hint).toBe("the target is now incomplete; restore again");
  expect(new TbError("TARGET", "x", "restore again", [], outcome.target("/dev/sdb")).hint).toBe("the target /dev/sdb is now incomplete; restore again");
  expect(new TbError("TARGET", "x", "a; b", [], outcome.removed("/tmp/d.img")).hint).toBe("the unfinished /tmp/d.img was removed; a; b");
});

test("without an outcome the hint is as given", () => {
  const e = new TbError("USAGE", "bad", "see --help");
  expect(e.hint).toBe("see --help");
  expect(e.advice).toBe("see --help");
  expect(e.outcome).toBeUndefined();
  expect(new TbError("USAGE", "bad").hint).toBe("");
});

test("saysUnfinished: incomplete, target incomplete and unconfirmed say it; the others do not", () => {
  expect(saysUnfinished(outcome.incomplete("transfer"))).toBe(true);
  expect(saysUnfinished(outcome.target())).toBe(true);
  expect(saysUnfinished(outcome.unconfirmed("the backup is not confirmed"))).toBe(true);
  expect(saysUnfinished(outcome.unchanged("nothing was written"))).toBe(false);
  expect(saysUnfinished(outcome.removed("/x"))).toBe(false);
  expect(saysUnfinished(undefined)).toBe(false);
  // words alone decide nothing: a hint that mentions "incomplete" has no outcome
  expect(saysUnfinished(new TbError("VERIFY", "x", "the backup is incomplete").outcome)).toBe(false);
});
