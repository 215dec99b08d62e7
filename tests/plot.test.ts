// `distflash plot`: an SVG with one panel per metric and one point per logged value, rendered
// by Vega from metrics.jsonl (training steps and evaluations).

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { runCli } from "./_util.ts";
import { lossChart } from "../src/train/report.ts";

Deno.test("plot: the SVG has a panel per metric and every logged point", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines = [];
    for (let s = 1; s <= 10; s++) {
      lines.push({
        step: s,
        loss: 5 - 0.3 * s,
        learning_rate: 1e-3 * s,
        grad_norm: 1 / s,
        tokens_per_s: 1000 + s,
        memory_bytes: 2 ** 30,
      });
    }
    lines.push({ step: 5, eval_loss: 4, perplexity: 54.6 }, { step: 10, eval_loss: 3 });
    await Deno.writeTextFile(
      join(dir, "metrics.jsonl"),
      lines.map((l) => JSON.stringify(l)).join("\n"),
    );
    const r = await runCli(["plot", dir]);
    assertEquals(r.code, 0, r.stderr);
    const svg = await Deno.readTextFile(join(dir, "curves.svg"));
    assert(svg.startsWith("<svg"), svg.slice(0, 100));
    // Points per panel: loss 10 + eval_loss 2, then 10 for each of the other four metrics.
    const points = [
      ...svg.matchAll(/<g class="mark-symbol role-mark concat_(\d+)[^>]*>(.*?)<\/g>/g),
    ]
      .map((m) => [Number(m[1]), m[2].split("<path").length - 1]);
    assertEquals(points, [[0, 12], [1, 10], [2, 10], [3, 10], [4, 10]]);
    const texts = [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
    for (
      const t of ["loss", "eval_loss", "learning_rate", "grad_norm", "tokens/s", "memory (GiB)"]
    ) {
      assert(texts.includes(t), `no "${t}" in the SVG`);
    }
    // No run there: a clear error.
    const none = await runCli(["plot", join(dir, "nothing")]);
    assert(none.code !== 0 && none.stderr.includes("no metrics.jsonl"), none.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("plot: the terminal chart spans the losses it draws", () => {
  const chart = lossChart([4, 3, 2, 1.5], 60, 4);
  const labels = [...chart.matchAll(/(\d+\.\d{3})\s*[┤┼]/g)].map((m) => Number(m[1]));
  assertEquals(Math.max(...labels), 4);
  assertEquals(Math.min(...labels), 1.5);
});
