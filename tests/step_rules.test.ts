/**
 * The optimizer step's rules that the training reference (train_reference.test.ts: cosine schedule,
 * clipping active at every step) does not reach: the other learning-rate schedules and the warmup
 * ratio, against values worked out by hand from transformers' definitions (get_scheduler:
 * get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup with num_cycles 0.5,
 * get_constant_schedule[_with_warmup]; TrainingArguments.get_warmup_steps rounds the ratio up),
 * and gradient clipping left inactive below --max-grad-norm (torch's clip_grad_norm_ clamps its
 * factor max_norm / (norm + 1e-6) at 1).
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { join } from "node:path";
import { lrMultiplier, warmupStepsFor } from "../src/train/lr.ts";
import { train } from "../src/train/trainer.ts";
import { SafetensorsFile } from "../src/io/safetensors.ts";

const close = (got: number, want: number, what: string) =>
  assertLess(Math.abs(got - want), 1e-12, `${what}: ${got} vs ${want}`);

Deno.test("lr schedules: 10 steps, 2 of warmup, multipliers worked out by hand", () => {
  // Warmup: step / warmup for steps 0 and 1, whatever the schedule after it.
  for (const type of ["linear", "cosine", "constant_with_warmup"] as const) {
    close(lrMultiplier(type, 0, 10, 2), 0, `${type} step 0`);
    close(lrMultiplier(type, 1, 10, 2), 0.5, `${type} step 1`);
  }
  // linear: (10 - step) / (10 - 2) after warmup: 1 at step 2, 1/2 at step 6, 1/8 at step 9.
  close(lrMultiplier("linear", 2, 10, 2), 1, "linear step 2");
  close(lrMultiplier("linear", 6, 10, 2), 0.5, "linear step 6");
  close(lrMultiplier("linear", 9, 10, 2), 0.125, "linear step 9");
  close(lrMultiplier("linear", 10, 10, 2), 0, "linear step 10");
  // cosine: (1 + cos(pi p)) / 2 with p = (step - 2) / 8: 1 at p = 0, (1 + 1/sqrt 2) / 2 at
  // p = 1/4, 1/2 at p = 1/2, (1 - 1/sqrt 2) / 2 at p = 3/4.
  close(lrMultiplier("cosine", 2, 10, 2), 1, "cosine step 2");
  close(lrMultiplier("cosine", 4, 10, 2), 0.8535533905932737, "cosine step 4");
  close(lrMultiplier("cosine", 6, 10, 2), 0.5, "cosine step 6");
  close(lrMultiplier("cosine", 8, 10, 2), 0.14644660940672624, "cosine step 8");
  close(lrMultiplier("constant_with_warmup", 7, 10, 2), 1, "constant_with_warmup step 7");
  // constant: no warmup at all (transformers' get_constant_schedule ignores it).
  close(lrMultiplier("constant", 0, 10, 2), 1, "constant step 0");
  // No warmup: linear starts at 1 and loses 1/10 a step.
  close(lrMultiplier("linear", 0, 10, 0), 1, "linear no warmup step 0");
  close(lrMultiplier("linear", 3, 10, 0), 0.7, "linear no warmup step 3");
});

Deno.test("lr schedules: the warmup ratio rounds up; explicit warmup steps win", () => {
  assertEquals(warmupStepsFor(10, 0, 0.03), 1); // 0.3 -> 1
  assertEquals(warmupStepsFor(100, 0, 0.03), 3);
  assertEquals(warmupStepsFor(101, 0, 0.03), 4); // 3.03 -> 4
  assertEquals(warmupStepsFor(10, 4, 0.5), 4);
  assertEquals(warmupStepsFor(10, 0, 0), 0);
});

/** The final weights of a 3-step run at `maxGradNorm` (debug-tiny, synthetic data). */
async function finalWeights(maxGradNorm: number): Promise<{
  weights: Map<string, Float32Array>;
  gradNorms: number[];
}> {
  const out = await Deno.makeTempDir({ prefix: "distflash-clip-" });
  try {
    await train({
      model: "debug-tiny",
      synthetic: true,
      modelMaxLength: 16,
      perDeviceTrainBatchSize: 1,
      maxSteps: 3,
      learningRate: 1e-2,
      weightDecay: 0,
      maxGradNorm,
      loggingSteps: 1,
      outputDir: out,
      device: "cpu",
      seed: 3,
      saveStrategy: "no",
    }, { log: () => {} });
    const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n");
    const gradNorms = lines.map((l) => JSON.parse(l).grad_norm as number);
    const f = await SafetensorsFile.open(join(out, "model.safetensors"));
    try {
      const weights = new Map<string, Float32Array>();
      for (const n of f.names()) weights.set(n, await f.readFloat32(n));
      return { weights, gradNorms };
    } finally {
      f.close();
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

Deno.test("clipping: a --max-grad-norm above every step's norm changes nothing; below it does", async () => {
  const off = await finalWeights(0), high = await finalWeights(1e6);
  assert(off.gradNorms.every((n) => n > 0.05 && n < 1e6), `grad norms ${off.gradNorms}`);
  // Clip factor min(1, 1e6 / norm) = 1: the same arithmetic, so the same bits.
  for (const [name, w] of off.weights) {
    assertEquals(high.weights.get(name), w, `${name}: max_grad_norm 1e6 vs no clipping`);
  }
  // The setup can tell: clipping at a tenth of the smallest norm moves the weights.
  const low = await finalWeights(Math.min(...off.gradNorms) / 10);
  let moved = 0;
  for (const [name, w] of off.weights) {
    const v = low.weights.get(name)!;
    for (let i = 0; i < w.length; i++) moved = Math.max(moved, Math.abs(v[i] - w[i]));
  }
  assert(moved > 1e-6, `clipping below the norm moved the weights by at most ${moved}`);
});
