/**
 * The Llama family's named sizes: published Llama sizes and small debug models for tests and
 * development.
 */
import type { ModelConfig } from "../../config.ts";

function preset(c: ModelConfig): Readonly<ModelConfig> {
  return Object.freeze(c);
}

const LLAMA2_BASE = {
  vocabSize: 32000,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: false,
  bosTokenId: 1,
  eosTokenId: 2,
} as const;

const DEBUG_BASE = {
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 131072,
  tieWordEmbeddings: false,
  // The debug sizes train with the byte tokenizer (src/data/tokenizer.ts): BOS 0, EOS 1.
  bosTokenId: 0,
  eosTokenId: 1,
} as const;

/**
 * Named model sizes (random initialisation). Published sizes for the Llama models; the debug
 * presets are small models for tests and development.
 */
export const LLAMA_PRESETS: Readonly<Record<string, Readonly<ModelConfig>>> = Object.freeze({
  "llama-2-7b": preset({
    ...LLAMA2_BASE,
    hiddenSize: 4096,
    intermediateSize: 11008,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 32,
    headDim: 128,
  }),
  "llama-2-13b": preset({
    ...LLAMA2_BASE,
    hiddenSize: 5120,
    intermediateSize: 13824,
    numLayers: 40,
    numHeads: 40,
    numKvHeads: 40,
    headDim: 128,
  }),
  "llama-3-8b": preset({
    vocabSize: 128256,
    hiddenSize: 4096,
    intermediateSize: 14336,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: null,
    maxPositionEmbeddings: 8192,
    tieWordEmbeddings: false,
    bosTokenId: 128000,
    eosTokenId: 128001,
  }),
  // meta-llama/Llama-3.1-8B config.json: vocab_size 128256, hidden_size 4096, intermediate_size
  // 14336, 32 layers, 32 heads, 8 KV heads, rms_norm_eps 1e-5, rope_theta 500000, rope_scaling
  // llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings
  // 8192), max_position_embeddings 131072, bos 128000, eos 128001.
  "llama-3.1-8b": preset({
    vocabSize: 128256,
    hiddenSize: 4096,
    intermediateSize: 14336,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: {
      type: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
    maxPositionEmbeddings: 131072,
    tieWordEmbeddings: false,
    bosTokenId: 128000,
    eosTokenId: 128001,
  }),
  "tinyllama-1.1b": preset({
    ...LLAMA2_BASE,
    hiddenSize: 2048,
    intermediateSize: 5632,
    numLayers: 22,
    numHeads: 32,
    numKvHeads: 4,
    headDim: 64,
    maxPositionEmbeddings: 2048,
  }),
  "debug-tiny": preset({
    ...DEBUG_BASE,
    vocabSize: 259, // the byte tokenizer's vocabulary
    hiddenSize: 64,
    intermediateSize: 176,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
  }),
  "debug-small": preset({
    ...DEBUG_BASE,
    vocabSize: 4096,
    hiddenSize: 256,
    intermediateSize: 688,
    numLayers: 4,
    numHeads: 8,
    numKvHeads: 4,
    headDim: 32,
  }),
  "debug-medium": preset({
    ...DEBUG_BASE,
    vocabSize: 32000,
    hiddenSize: 1024,
    intermediateSize: 2752,
    numLayers: 8,
    numHeads: 16,
    numKvHeads: 16,
    headDim: 64,
  }),
});
