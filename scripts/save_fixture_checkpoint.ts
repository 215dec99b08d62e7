/**
 * Loads a fixture model (tests/fixtures/FIXTURE, default gqa; qwen2, qwen3 and mistral are the other
 * families), saves it with distflash's checkpoint writer (bf16 and fp32 copies are both possible;
 * fp32 here so the transformers check can use a 1e-4 bound), for `make_fixtures.py
 * check-checkpoint` (or make_family_fixtures.py's, which also checks the class).
 * Usage: deno run -A scripts/save_fixture_checkpoint.ts DIR [FIXTURE]
 */
import { fileURLToPath } from "node:url";
import { readHfConfig } from "../src/model/hf_config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { loadWeights, saveModel } from "../src/model/hf.ts";
import { openBackend } from "../src/runtime/info.ts";
import { DType } from "../src/runtime/ops.ts";

const out = Deno.args[0] ?? "/tmp/ckpt";
const fixture = fileURLToPath(
  new URL(`../tests/fixtures/${Deno.args[1] ?? "gqa"}`, import.meta.url),
);
const device = openBackend("auto");
const model = new DecoderModel(device, await readHfConfig(fixture), {
  dtype: DType.f32,
  batch: 1,
  seqLen: 8,
});
model.allocate();
await loadWeights(model, fixture);
await saveModel(model, out, { dtype: "float32", tokenizerFrom: null });
model.free();
console.log(`saved ${out} from ${device.backend}`);
