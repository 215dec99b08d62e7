/**
 * The Qwen2 family (Qwen2, Qwen2.5): Llama's decoder with biases on the q, k and v projections;
 * tied or untied embeddings. `use_sliding_window`: the last layers (from `max_window_layers` on, or
 * as `layer_types` lists them) attend under `sliding_window` (../common.ts, qwenWindow).
 *
 * @module
 */
import type { ModelConfig } from "../../config.ts";
import { qwenWindow, qwenWindowToHf } from "../common.ts";
import type { ModelFamily } from "../registry.ts";

// Qwen/Qwen2.5-7B config.json: vocab_size 152064, hidden_size 3584, intermediate_size 18944,
// 28 layers, 28 heads (head size 128), 4 KV heads, rms_norm_eps 1e-6, rope_theta 1e6,
// max_position_embeddings 131072, tie_word_embeddings false, bos/eos 151643,
// use_sliding_window false.
const QWEN25_7B: ModelConfig = {
  modelType: "qwen2",
  qkvBias: true,
  vocabSize: 152064,
  hiddenSize: 3584,
  intermediateSize: 18944,
  numLayers: 28,
  numHeads: 28,
  numKvHeads: 4,
  headDim: 128,
  rmsNormEps: 1e-6,
  ropeTheta: 1e6,
  ropeScaling: null,
  maxPositionEmbeddings: 131072,
  tieWordEmbeddings: false,
  bosTokenId: 151643,
  eosTokenId: 151643,
};

// Qwen/Qwen2.5-0.5B config.json: vocab_size 151936, hidden_size 896, intermediate_size 4864,
// 24 layers, 14 heads (head size 64), 2 KV heads, rms_norm_eps 1e-6, rope_theta 1e6,
// max_position_embeddings 32768, tie_word_embeddings true, bos/eos 151643. A small model of the
// family (head size 64) for one-GPU benchmarks.
const QWEN25_05B: ModelConfig = {
  ...QWEN25_7B,
  vocabSize: 151936,
  hiddenSize: 896,
  intermediateSize: 4864,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  headDim: 64,
  maxPositionEmbeddings: 32768,
  tieWordEmbeddings: true,
};

export const QWEN2: ModelFamily = {
  modelType: "qwen2",
  architecture: "Qwen2ForCausalLM",
  title: "Qwen2 / Qwen2.5",
  parse(j, source, base) {
    return { ...base, ...qwenWindow(j, source, base.numLayers), modelType: "qwen2", qkvBias: true };
  },
  toHf(cfg, out) {
    // transformers' Qwen2 always has q/k/v biases and no o/MLP biases: no keys for them.
    delete out.attention_bias;
    delete out.mlp_bias;
    delete out.pretraining_tp;
    qwenWindowToHf(cfg, out);
  },
  presets: Object.freeze({
    "qwen2.5-7b": Object.freeze(QWEN25_7B),
    "qwen2.5-0.5b": Object.freeze(QWEN25_05B),
  }),
};
