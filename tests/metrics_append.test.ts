/**
 * A failed append to metrics.jsonl (a full disk, injected by the test-only hook
 * DISTFLASH_TEST_FAIL_APPEND after half the line was written) leaves the file as it was before
 * that append: whole lines only, which a resumed run can append to and `plot` reads without a
 * note; the error reaches the caller and the CLI's user naming the file.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { runCli, SAVING_RUN, trainFlags } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { readRunRecords } from "../src/train/plot.ts";
import { appendWhole, TEST_FAIL_APPEND_ENV } from "../src/io/files.ts";
import { join } from "node:path";

const run = { ...SAVING_RUN, maxSteps: 4, saveStrategy: "no" } as const;

/** Checks that metrics.jsonl holds exactly `steps` whole lines, steps 1.., and nothing else. */
async function checkWholeLines(dir: string, steps: number): Promise<void> {
  const metrics = join(dir, "metrics.jsonl");
  const text = await Deno.readTextFile(metrics);
  assert(text.endsWith("\n"), `metrics.jsonl ends in half a line: ${JSON.stringify(text)}`);
  const lines = text.slice(0, -1).split("\n");
  assertEquals(
    lines.map((l) => JSON.parse(l).step),
    Array.from({ length: steps }, (_, i) => i + 1),
  );
  // A resumed run appends after it; plot reads every line, with no note of a cut-short one.
  await appendWhole(metrics, JSON.stringify({ step: steps + 1, loss: 1 }) + "\n");
  const notes: string[] = [];
  const records = await readRunRecords(dir, (n) => notes.push(n));
  assertEquals(records.length, steps + 1);
  assertEquals(notes, []);
}

Deno.test("metrics append: a full disk mid-line leaves whole lines and an error naming the file", async () => {
  const out = await Deno.makeTempDir({ prefix: "distflash-metrics-" });
  Deno.env.set(TEST_FAIL_APPEND_ENV, "metrics.jsonl:3");
  try {
    const e = await assertRejects(() => train({ ...run, outputDir: out }, { log: () => {} }));
    assert(e.message.includes(join(out, "metrics.jsonl")), e.message);
    assert(e.message.includes("No space left on device"), e.message);
  } finally {
    Deno.env.delete(TEST_FAIL_APPEND_ENV);
  }
  await checkWholeLines(out, 2);
  await Deno.remove(out, { recursive: true });
});

Deno.test("metrics append: the CLI's user is told which file the full disk hit", async () => {
  const out = await Deno.makeTempDir({ prefix: "distflash-metrics-cli-" });
  const r = await runCli(["train", ...trainFlags({ ...run, outputDir: out })], {
    [TEST_FAIL_APPEND_ENV]: "metrics.jsonl:2",
  });
  assertEquals(r.code, 1, r.stderr);
  assert(r.stderr.includes(`${join(out, "metrics.jsonl")}: No space left on device`), r.stderr);
  await checkWholeLines(out, 1);
  await Deno.remove(out, { recursive: true });
});
