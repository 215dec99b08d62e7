// Evaluation (src/train/eval.ts) against transformers: eval_loss of the mha fixture model over
// windows of its reference input_ids equals the cross-entropy of HF's stored logits for them
// (float64 here), on 1 rank, on 2 sequence-parallel CPU ranks, and for a held-out split.

import { assert, assertEquals, assertLess } from "./assert.ts";
import { join } from "node:path";
import { openSafetensors } from "../src/io/safetensors.ts";
import { writeNpy } from "../src/io/npy.ts";
import { train } from "../src/train/trainer.ts";
import { runCli } from "./_util.ts";

const MHA = new URL("./fixtures/mha", import.meta.url).pathname;
const L = 28; // windows of 29 tokens: the first 29 of each 32-token reference row
const quiet = { log: () => {} };

/** Mean cross-entropy of HF's logits at positions [0, L) of the chosen rows, in float64. */
async function hfLoss(rows: number[]): Promise<{ loss: number; ids: number[][] }> {
  const ref = await openSafetensors(join(MHA, "reference.safetensors"));
  const ids = Array.from(await ref.readFloat32("input_ids"));
  const logits = await ref.readFloat32("logits");
  ref.close();
  const T = 32, V = 256;
  let sum = 0, n = 0;
  for (const b of rows) {
    for (let t = 0; t < L; t++) {
      const row = logits.subarray((b * T + t) * V, (b * T + t + 1) * V);
      let max = -Infinity;
      for (const x of row) max = Math.max(max, x);
      let z = 0;
      for (const x of row) z += Math.exp(x - max);
      sum += max + Math.log(z) - row[ids[b * T + t + 1]];
      n++;
    }
  }
  return { loss: sum / n, ids: [0, 1].map((b) => ids.slice(b * T, b * T + L + 1)) };
}

Deno.test("eval: eval_loss equals transformers' loss of the same windows, 1 and 2 ranks", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const both = await hfLoss([0, 1]);
    const data = join(tmp, "rows.npy");
    await writeNpy(data, Int32Array.from(both.ids.flat()));
    // lr 0: the one training step leaves the weights as HF's (AdamW moves nothing at lr 0).
    const common = {
      model: MHA,
      dataPath: data,
      modelMaxLength: L,
      maxSteps: 1,
      learningRate: 0,
      device: "cpu",
      saveStrategy: "no",
      saveFinalModel: false,
    };
    const one = await train({ ...common, evalDataPath: data, outputDir: join(tmp, "one") }, quiet);
    assertEquals(one.evalMetrics.length, 1);
    const e = one.evalMetrics[0];
    // fp32 forward vs float64 logits: 1e-5 relative is ~100x the fp32 error of this tiny model.
    assertLess(Math.abs(e.eval_loss - both.loss) / both.loss, 1e-5, `1 rank ${e.eval_loss}`);
    assertEquals(e.eval_tokens, 2 * L);
    assertLess(Math.abs(e.perplexity - Math.exp(both.loss)) / Math.exp(both.loss), 1e-5);

    // A 50% split holds out the first window (row 0) and trains on the second.
    const first = await hfLoss([0]);
    const split = await train({
      ...common,
      validationSplitPercentage: 50,
      outputDir: join(tmp, "split"),
    }, quiet);
    const s = split.evalMetrics[0];
    assertLess(Math.abs(s.eval_loss - first.loss) / first.loss, 1e-5, `split ${s.eval_loss}`);
    assertEquals(s.eval_tokens, L);

    // 2 sequence-parallel ranks (zigzag), evaluation every step and at the end, TensorBoard on.
    const out = join(tmp, "two");
    const r = await runCli([
      "train",
      "--nproc-per-node",
      "2",
      "--model",
      MHA,
      "--data-path",
      data,
      "--eval-data-path",
      data,
      "--evaluation-strategy",
      "steps",
      "--eval-steps",
      "1",
      "--model-max-length",
      `${L}`,
      "--max-steps",
      "2",
      "--learning-rate",
      "0",
      "--device",
      "cpu",
      "--save-strategy",
      "no",
      "--report-to",
      "tensorboard",
      "--output-dir",
      out,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    const evals = lines.filter((m) => "eval_loss" in m);
    assertEquals(evals.map((m) => m.step), [1, 2]);
    for (const m of evals) {
      assertLess(Math.abs(m.eval_loss - both.loss) / both.loss, 1e-5, `2 ranks ${m.eval_loss}`);
    }
    const runs = [...Deno.readDirSync(join(out, "runs"))].map((e) => e.name);
    assertEquals(runs.length, 1);
    assert(runs[0].startsWith("events.out.tfevents."), runs[0]);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
