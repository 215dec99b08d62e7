/**
 * The Mistral family without a sliding window (Mistral 7B v0.2 / v0.3: `sliding_window` null):
 * Llama's decoder under another name. A window (v0.1: 4096) is refused: distflash computes full
 * causal attention.
 *
 * @module
 */
import type { ModelFamily } from "../registry.ts";

export const MISTRAL: ModelFamily = {
  modelType: "mistral",
  architecture: "MistralForCausalLM",
  title: "Mistral 7B v0.2 / v0.3, without a sliding window",
  parse(j, source, base) {
    if (j.sliding_window !== undefined && j.sliding_window !== null) {
      throw new Error(
        `${source}: "sliding_window" is ${JSON.stringify(j.sliding_window)}; distflash computes ` +
          `full causal attention only (Mistral v0.2 and later have sliding_window null)`,
      );
    }
    return { ...base, modelType: "mistral" };
  },
  toHf(_cfg, out) {
    delete out.attention_bias;
    delete out.mlp_bias;
    delete out.pretraining_tp;
    out.sliding_window = null;
  },
  presets: Object.freeze({}),
};
