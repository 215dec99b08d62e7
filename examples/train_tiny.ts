/**
 * Trains a debug-size Llama on the bundled corpus through the library API (mod.ts), then prints
 * the first and last logged loss.
 *
 *   deno run -A examples/train_tiny.ts [steps]
 */
import { train } from "../mod.ts";
import { fileURLToPath } from "node:url";

const steps = Number(Deno.args[0] ?? 30);
const result = await train({
  model: "debug-small",
  dataPath: fileURLToPath(new URL("./corpus/tiny.jsonl", import.meta.url)),
  outputDir: "outputs/example",
  maxSteps: steps,
  perDeviceTrainBatchSize: 8,
  modelMaxLength: 128,
  learningRate: 2e-3,
  warmupSteps: 3,
  lrSchedulerType: "cosine",
  loggingSteps: 5,
  saveStrategy: "no",
});
const [first, last] = [result.metrics[0], result.metrics.at(-1)!];
console.log(
  `loss ${first.loss.toFixed(3)} (step ${first.step}) -> ${
    last.loss.toFixed(3)
  } (step ${last.step})`,
);
