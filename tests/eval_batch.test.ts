// --per-device-eval-batch-size (src/train/eval.ts): evaluation batches of any size run as forwards
// of the training micro-batch; eval_loss over 5 windows (rows 0,1,0,1,0 of the mha fixture's
// reference input) equals transformers' loss of them (its stored logits, float64 here) for eval
// batches 1, 2 and 3 with a training micro-batch of 2, and on 2 data-parallel ranks (3 + 2
// windows: the second rank runs an empty forward).

import { assertEquals, assertLess } from "./assert.ts";
import { join } from "node:path";
import { openSafetensors } from "../src/io/safetensors.ts";
import { writeNpy } from "../src/io/npy.ts";
import { evalForwards } from "../src/train/eval.ts";
import { train } from "../src/train/trainer.ts";
import { runCli } from "./_util.ts";

const MHA = new URL("./fixtures/mha", import.meta.url).pathname;
const L = 28; // windows of 29 tokens: the first 29 of a 32-token reference row
const ROWS = [0, 1, 0, 1, 0];

/** Mean cross-entropy of HF's logits at positions [0, L) of `rows`, and each row's L + 1 ids. */
async function hfLoss(rows: number[]): Promise<{ loss: number; ids: number[][] }> {
  const ref = await openSafetensors(join(MHA, "reference.safetensors"));
  const all = Array.from(await ref.readFloat32("input_ids"));
  const logits = await ref.readFloat32("logits");
  ref.close();
  const T = 32, V = 256;
  let sum = 0;
  for (const b of rows) {
    for (let t = 0; t < L; t++) {
      const row = Array.from(logits.subarray((b * T + t) * V, (b * T + t + 1) * V));
      const max = Math.max(...row);
      const z = row.reduce((a, x) => a + Math.exp(x - max), 0);
      sum += max + Math.log(z) - row[all[b * T + t + 1]];
    }
  }
  return { loss: sum / (rows.length * L), ids: rows.map((b) => all.slice(b * T, b * T + L + 1)) };
}

Deno.test("eval batch: forwards per evaluation batch, the same count on every data-parallel group", () => {
  const shape = (f: Uint32Array[]) => f.map((ids) => Array.from(ids));
  const w = Uint32Array.from([10, 11, 12, 13, 14]);
  // Batches of 3 in forwards of 2: [10 11] [12] | [13 14].
  assertEquals(shape(evalForwards(w, 5, 3, 2)), [[10, 11], [12], [13, 14]]);
  assertEquals(shape(evalForwards(w, 5, 1, 2)), [[10], [11], [12], [13], [14]]);
  assertEquals(shape(evalForwards(w, 5, 4, 2)), [[10, 11], [12, 13], [14]]);
  // A group with 2 windows where another has 3: as many forwards as that one (2 with batch 3).
  assertEquals(shape(evalForwards(w.subarray(0, 2), 3, 3, 2)), [[10, 11], []]);
});

Deno.test("eval batch: eval_loss equals transformers' for eval batches 1, 2, 3 and 2 dp ranks", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const ref = await hfLoss(ROWS);
    const data = join(tmp, "rows.npy");
    await writeNpy(data, Int32Array.from(ref.ids.flat()));
    for (const evalBatch of [1, 2, 3]) {
      // lr 0: the step leaves HF's weights; 2 windows per forward (the memory plan's batch).
      const r = await train({
        model: MHA,
        dataPath: data,
        evalDataPath: data,
        modelMaxLength: L,
        maxSteps: 1,
        learningRate: 0,
        perDeviceTrainBatchSize: 2,
        perDeviceEvalBatchSize: evalBatch,
        device: "cpu",
        saveStrategy: "no",
        saveFinalModel: false,
        outputDir: join(tmp, `b${evalBatch}`),
      }, { log: () => {} });
      const e = r.evalMetrics[0];
      // fp32 forward vs float64 logits: 1e-5 relative is ~100x the fp32 error of this tiny model.
      assertLess(Math.abs(e.eval_loss - ref.loss) / ref.loss, 1e-5, `batch ${evalBatch}`);
      assertEquals(e.eval_tokens, ROWS.length * L);
    }
    const out = join(tmp, "dp2");
    const r = await runCli([
      "train",
      "--nproc-per-node=2",
      "--sp-size=1",
      `--model=${MHA}`,
      `--data-path=${data}`,
      `--eval-data-path=${data}`,
      `--model-max-length=${L}`,
      "--max-steps=1",
      "--learning-rate=0",
      "--per-device-train-batch-size=2",
      "--per-device-eval-batch-size=3",
      "--device=cpu",
      "--save-strategy=no",
      "--save-final-model=false",
      `--output-dir=${out}`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const e = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).find((m) => "eval_loss" in m);
    assertLess(Math.abs(e.eval_loss - ref.loss) / ref.loss, 1e-5, `2 dp ranks ${e.eval_loss}`);
    assertEquals(e.eval_tokens, ROWS.length * L);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("eval batch: eval_loss with --offload-checkpoints and --offload-optimizer equals the plain run's", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const ref = await hfLoss(ROWS);
    const data = join(tmp, "rows.npy");
    await writeNpy(data, Int32Array.from(ref.ids.flat()));
    const losses: Record<string, number[]> = {};
    for (
      const [name, extra] of [
        ["plain", {}],
        ["checkpoints", { offloadCheckpoints: true }],
        ["optimizer", { offloadOptimizer: true }],
      ] as const
    ) {
      // 2 steps at a real learning rate: the second evaluation sees weights the optimizer moved.
      const r = await train({
        model: MHA,
        dataPath: data,
        evalDataPath: data,
        evaluationStrategy: "steps",
        evalSteps: 1,
        modelMaxLength: L,
        maxSteps: 2,
        learningRate: 1e-2,
        perDeviceTrainBatchSize: 2,
        perDeviceEvalBatchSize: 3,
        device: "cpu",
        saveStrategy: "no",
        saveFinalModel: false,
        outputDir: join(tmp, name),
        ...extra,
      }, { log: () => {} });
      losses[name] = r.evalMetrics.map((e) => e.eval_loss);
    }
    // Each evaluation follows an update that moved the loss away from HF's untrained one and
    // from the previous evaluation's (so the comparison below sees the optimizer's work).
    assertLess(1e-3, Math.abs(losses.plain[0] - ref.loss) / ref.loss);
    assertLess(1e-3, Math.abs(losses.plain[1] - losses.plain[0]) / ref.loss);
    // The offloads are exact (same operations, other memory): equal to fp32 rounding of the
    // host AdamW against the device one (1e-6 relative).
    for (const name of ["checkpoints", "optimizer"]) {
      assertEquals(losses[name].length, 2);
      for (let i = 0; i < 2; i++) {
        const d = Math.abs(losses[name][i] - losses.plain[i]) / losses.plain[i];
        assertLess(d, 1e-6, `${name} eval ${i}: ${losses[name][i]} vs ${losses.plain[i]}`);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
