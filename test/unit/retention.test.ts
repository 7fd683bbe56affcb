// The --keep-* policy on dates alone: the rules restic's forget has for last,
// daily, weekly and monthly, and "the newest is always kept".
import { describe, expect, test } from "bun:test";
import { applyPolicy, timeFromName } from "../../src/core/retention.ts";

const at = (name: string) => ({ id: name, time: timeFromName(name)! });
const none = { last: 0, daily: 0, weekly: 0, monthly: 0 };

describe("applyPolicy", () => {
  const backups = ["20261206T100000Z", "20261206T080000Z", "20261205T230000Z", "20261130T120000Z", "20261129T120000Z", "20261115T120000Z", "20261001T120000Z"].map(at);

  test("no rule: only the newest stays", () => {
    const r = applyPolicy(backups, none);
    expect([...r].filter(([, why]) => why.length).map(([id]) => id)).toEqual(["20261206T100000Z"]);
  });

  test("weekly buckets are ISO weeks (Monday to Sunday)", () => {
    const r = applyPolicy(backups, { ...none, weekly: 3 });
    // 6 Dec 2026 is a Sunday: week 49 runs 30 Nov - 6 Dec; 29 Nov is week 48
    expect(r.get("20261206T100000Z")).toEqual(["newest", "weekly 2026-W49"]);
    expect(r.get("20261130T120000Z")).toEqual([]);
    expect(r.get("20261129T120000Z")).toEqual(["weekly 2026-W48"]);
    expect(r.get("20261115T120000Z")).toEqual(["weekly 2026-W46"]);
    expect(r.get("20261001T120000Z")).toEqual([]);
  });

  test("daily counts days that have a backup, newest of each; rules add up", () => {
    const r = applyPolicy(backups, { ...none, last: 2, daily: 3 });
    expect(r.get("20261206T100000Z")).toEqual(["newest", "last 2", "daily 2026-12-06"]);
    expect(r.get("20261206T080000Z")).toEqual(["last 2"]);
    expect(r.get("20261205T230000Z")).toEqual(["daily 2026-12-05"]);
    expect(r.get("20261130T120000Z")).toEqual(["daily 2026-11-30"]);
    expect(r.get("20261129T120000Z")).toEqual([]);
  });

  test("ISO week of early January can belong to the year before", () => {
    const r = applyPolicy([at("20270101T000000Z")], { ...none, weekly: 1 });
    expect(r.get("20270101T000000Z")).toContain("weekly 2026-W53");
  });

  test("names that are not timestamps give no date", () => {
    expect(timeFromName("20261206T100000Z-1")).not.toBeNull();
    expect(timeFromName("20261206T100000Z.partial")).not.toBeNull();
    expect(timeFromName("latest")).toBeNull();
  });
});
