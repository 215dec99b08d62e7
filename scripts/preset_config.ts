/**
 * Prints a preset's config.json as transformers reads it, for the PyTorch peer run on its own
 * (bench/hf_fsdp_cp_train.py --config-json; `bench train` writes the same file itself).
 * Usage: deno run -A scripts/preset_config.ts NAME > config.json
 */
import { presetConfig } from "../src/model/presets.ts";
import { toHfConfig } from "../src/model/hf_config.ts";

if (Deno.args.length !== 1) {
  console.error("usage: deno run -A scripts/preset_config.ts NAME");
  Deno.exit(2);
}
console.log(JSON.stringify(toHfConfig(presetConfig(Deno.args[0])), null, 2));
