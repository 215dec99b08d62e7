/**
 * The Mistral family: Llama's decoder under another name, with an optional sliding window
 * (`sliding_window`: 4096 in Mistral 7B v0.1, null in v0.2 / v0.3). A query at position p sees the
 * key at s when it is causal and p - s < sliding_window (transformers' sliding_window_overlay,
 * kv_idx > q_idx - sliding_window); src/model/documents.ts owns the rule, and it combines with
 * document masking.
 *
 * @module
 */
import type { ModelConfig } from "../../config.ts";
import type { ModelFamily } from "../registry.ts";

// mistralai/Mistral-7B-v0.1 config.json: vocab_size 32000, hidden_size 4096, intermediate_size
// 14336, 32 layers, 32 heads (head size 128), 8 KV heads, rms_norm_eps 1e-5, rope_theta 10000,
// max_position_embeddings 32768, sliding_window 4096, tie_word_embeddings false, bos 1, eos 2.
const MISTRAL_7B_V01: ModelConfig = {
  modelType: "mistral",
  slidingWindow: 4096,
  vocabSize: 32000,
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 32768,
  tieWordEmbeddings: false,
  bosTokenId: 1,
  eosTokenId: 2,
};

export const MISTRAL: ModelFamily = {
  modelType: "mistral",
  architecture: "MistralForCausalLM",
  title: "Mistral 7B v0.1 (sliding window) / v0.2 / v0.3",
  parse(j, source, base) {
    const w = j.sliding_window;
    if (w === undefined || w === null) return { ...base, modelType: "mistral" };
    if (typeof w !== "number" || !Number.isSafeInteger(w) || w <= 0) {
      throw new Error(
        `${source}: "sliding_window" is ${JSON.stringify(w)}; it must be a positive integer ` +
          `(the window of sliding-window attention) or null (none)`,
      );
    }
    return { ...base, modelType: "mistral", slidingWindow: w };
  },
  toHf(cfg, out) {
    delete out.attention_bias;
    delete out.mlp_bias;
    delete out.pretraining_tp;
    out.sliding_window = cfg.slidingWindow ?? null;
  },
  presets: Object.freeze({ "mistral-7b-v0.1": Object.freeze(MISTRAL_7B_V01) }),
};
