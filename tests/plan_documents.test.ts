/**
 * `plan`'s synthetic documents (randomDocumentStarts, which `plan --doc-length` and the document
 * work lines use) have the mean length asked for, statistically: lengths uniform in
 * [1, 2m - 1], so mean m and variance ((2m - 1)^2 - 1) / 12. Over n complete documents (the last
 * one of each window is cut by the window's end and left out) the sample mean is within 5 standard
 * errors of m: a fixed seed makes the test deterministic, and a 5-sigma band would wrongly fail a
 * correct generator with probability below 1e-6 for any seed, while one whose mean is off by half
 * a token (lengths in [1, 2m] or [0, 2m - 2]) is over 30 standard errors away at m = 2 and 7.
 */
import { assert, assertLess } from "./assert.ts";
import { randomDocumentStarts } from "../src/parallel/document_work.ts";
import { sees } from "../src/model/documents.ts";
import { runCli } from "./_util.ts";
import { fileURLToPath } from "node:url";

Deno.test("plan documents: random document lengths have the mean asked for, within 5 standard errors", () => {
  for (const mean of [1, 2, 7, 64, 500]) {
    const length = 1 << 17;
    const lengths: number[] = [];
    for (let seed = 0; lengths.length < 60_000 && seed < 4000; seed++) {
      const starts = randomDocumentStarts(length, mean, seed);
      assert(starts[0] === 0, `mean ${mean}: the first document starts at 0`);
      for (let i = 1; i < starts.length; i++) lengths.push(starts[i] - starts[i - 1]);
    }
    const n = lengths.length;
    assert(n >= 60_000, `mean ${mean}: ${n} documents`);
    const max = 2 * mean - 1;
    assert(lengths.every((d) => Number.isInteger(d) && d >= 1 && d <= max), `mean ${mean}: range`);
    const sample = lengths.reduce((a, b) => a + b, 0) / n;
    const se = Math.sqrt(((max * max - 1) / 12) / n);
    if (mean === 1) assert(sample === 1, "mean 1: every document has one token");
    else assertLess(Math.abs(sample - mean), 5 * se, `mean ${mean}: ${sample} over ${n}`);
    // Every length in the range occurs (the uniform's support), for the small means.
    if (mean <= 64) assert(new Set(lengths).size === max, `mean ${mean}: support`);
  }
});

Deno.test("plan documents: with a window on some layers, the documents' work is the layers' mean (brute force)", async () => {
  // tests/fixtures/qwen2-window: 2 layers, the second under a window of 8. plan packs each
  // 64-token window with randomDocumentStarts(64, 16) (seed 0), as recomputed here.
  const L = 64, W = 8, starts = randomDocumentStarts(L, 16);
  let plain = 0, windowed = 0;
  for (let p = 0; p < L; p++) {
    for (let s = 0; s <= p; s++) {
      if (sees(starts, p, s)) plain++;
      if (sees(starts, p, s, W)) windowed++;
    }
  }
  const share = ((plain + windowed) / 2 / ((L * (L + 1)) / 2)).toFixed(3);
  const model = fileURLToPath(new URL("./fixtures/qwen2-window", import.meta.url));
  // deno-fmt-ignore
  const r = await runCli(["plan", "--model", model, "--model-max-length", `${L}`,
    "--attention-mask", "document", "--doc-length", "16"]);
  const want = `attention work with documents, share of causal's (random lengths): ${share}`;
  assert(r.stdout.includes(want), `${want} in:\n${r.stdout}`);
});
