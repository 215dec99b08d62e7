/**
 * A checkpoint of a model distflash has trained loads in transformers with the same logits:
 * trains debug-tiny for a few steps, saves it, computes logits of a batch with distflash, writes
 * them as a reference and runs `tests/reference/make_fixtures.py check-checkpoint` on it (needs a
 * python3 with torch and transformers: the GPU host has them, or tests/reference's venv).
 *
 *   deno run -A scripts/check_trained_checkpoint.ts [python3 | --no-transformers]
 *
 * --no-transformers stops once the reference is written (CI runs it so on the CPU: everything but
 * the Python comparison, which is what a GPU-only script broke last time).
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { train } from "../src/train/trainer.ts";
import { readHfConfig } from "../src/model/hf_config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { loadWeights } from "../src/model/hf.ts";
import { writeSafetensors } from "../src/io/safetensors.ts";
import { openBackend } from "../src/runtime/info.ts";
import { DType } from "../src/runtime/ops.ts";

const noTransformers = Deno.args[0] === "--no-transformers";
const python = noTransformers ? "" : Deno.args[0] ?? "python3";
const dir = await Deno.makeTempDir({ prefix: "distflash-ckpt-" });
await train({
  model: "debug-tiny",
  synthetic: true,
  modelMaxLength: 32,
  perDeviceTrainBatchSize: 2,
  maxSteps: 5,
  learningRate: 1e-2,
  saveStrategy: "no",
  outputDir: dir,
  device: "auto",
}, { log: () => {} });

const device = openBackend("auto");
const config = await readHfConfig(dir);
const model = new DecoderModel(device, config, {
  dtype: DType.f32,
  batch: 1,
  seqLen: 32,
});
model.allocate();
await loadWeights(model, dir);
const V = config.vocabSize; // the saved model's, never a constant (debug-tiny's grew to 259)
const ids = Int32Array.from({ length: 32 }, (_, i) => (i * 29 + 7) % V);
model.setBatch(ids, ids);
await model.forward();
const logits = model.fullLogits();
model.free();
const ref = join(dir, "reference.safetensors");
await writeSafetensors(ref, [
  { name: "input_ids", dtype: "I64", shape: [1, 32], data: BigInt64Array.from(ids, BigInt) },
  { name: "logits", dtype: "F32", shape: [1, 32, V], data: logits },
]);
if (noTransformers) {
  console.log(`reference written: ${ref} (the transformers comparison skipped)`);
  await Deno.remove(dir, { recursive: true });
  Deno.exit(0);
}
const script = fileURLToPath(new URL("../tests/reference/make_fixtures.py", import.meta.url));
const out = await new Deno.Command(python, { args: [script, "check-checkpoint", dir, ref] })
  .output();
console.log(new TextDecoder().decode(out.stdout).trim());
if (!out.success) {
  console.error(new TextDecoder().decode(out.stderr).slice(-2000));
  Deno.exit(1);
}
console.log(`trained checkpoint ${dir} matches transformers (${device.backend})`);
