/**
 * The Llama family (Llama 2 / 3 / 3.1, TinyLlama): the shared decoder as is, no biases.
 *
 * @module
 */
import type { ModelFamily } from "../registry.ts";
import { LLAMA_PRESETS } from "./presets.ts";

export const LLAMA: ModelFamily = {
  modelType: "llama",
  architecture: "LlamaForCausalLM",
  title: "Llama 2 / 3 / 3.1, TinyLlama",
  parse(j, source, base) {
    for (const k of ["attention_bias", "mlp_bias"]) {
      if (j[k] === true) throw new Error(`${source}: "${k}" is true; biases are not supported`);
    }
    return base;
  },
  toHf() {},
  presets: LLAMA_PRESETS,
};
