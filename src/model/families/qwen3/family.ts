/**
 * The Qwen3 family (dense Qwen3): Llama's decoder with an RMSNorm over each head of q and of k
 * before RoPE (`q_norm`, `k_norm`) and an explicit `head_dim` (heads x head_dim may differ from
 * hidden_size). `attention_bias` true is refused. `use_sliding_window` (the last layers from
 * `max_window_layers` on attend under `sliding_window`) as in Qwen2 (../common.ts, qwenWindow).
 *
 * @module
 */
import type { ModelConfig } from "../../config.ts";
import { qwenWindow, qwenWindowToHf, refuseTrue } from "../common.ts";
import type { ModelFamily } from "../registry.ts";

// Qwen/Qwen3-8B config.json: vocab_size 151936, hidden_size 4096, intermediate_size 12288,
// 36 layers, 32 heads, 8 KV heads, head_dim 128, rms_norm_eps 1e-6, rope_theta 1e6,
// max_position_embeddings 40960, tie_word_embeddings false, bos 151643, eos 151645.
const QWEN3_8B: ModelConfig = {
  modelType: "qwen3",
  qkNorm: true,
  vocabSize: 151936,
  hiddenSize: 4096,
  intermediateSize: 12288,
  numLayers: 36,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  rmsNormEps: 1e-6,
  ropeTheta: 1e6,
  ropeScaling: null,
  maxPositionEmbeddings: 40960,
  tieWordEmbeddings: false,
  bosTokenId: 151643,
  eosTokenId: 151645,
};

// Qwen/Qwen3-0.6B config.json: vocab_size 151936, hidden_size 1024, intermediate_size 3072,
// 28 layers, 16 heads, 8 KV heads, head_dim 128 (heads x head_dim = 2048 != hidden), rms_norm_eps
// 1e-6, rope_theta 1e6, max_position_embeddings 40960, tie_word_embeddings true, bos 151643,
// eos 151645. A small model of the family for one-GPU benchmarks.
const QWEN3_06B: ModelConfig = {
  ...QWEN3_8B,
  vocabSize: 151936,
  hiddenSize: 1024,
  intermediateSize: 3072,
  numLayers: 28,
  numHeads: 16,
  numKvHeads: 8,
  headDim: 128,
  tieWordEmbeddings: true,
};

export const QWEN3: ModelFamily = {
  modelType: "qwen3",
  architecture: "Qwen3ForCausalLM",
  title: "Qwen3 (dense)",
  parse(j, source, base) {
    refuseTrue(j, "attention_bias", source, "Qwen3 with attention biases is not supported");
    return { ...base, ...qwenWindow(j, source, base.numLayers), modelType: "qwen3", qkNorm: true };
  },
  toHf(cfg, out) {
    delete out.mlp_bias;
    delete out.pretraining_tp;
    qwenWindowToHf(cfg, out);
  },
  presets: Object.freeze({
    "qwen3-8b": Object.freeze(QWEN3_8B),
    "qwen3-0.6b": Object.freeze(QWEN3_06B),
  }),
};
