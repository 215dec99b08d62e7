/**
 * The decoder configuration every model family shares (Llama-shaped, with the per-family options
 * Qwen2's q/k/v biases and Qwen3's q/k norms): its fields and invariants, the one table of
 * per-layer parameters in Hugging Face names, parameter shapes and the RoPE inverse frequencies.
 * Families (src/model/families/) parse their own config.json keys into it. Hugging Face `config.json` reading and writing is in hf_config.ts, and the named
 * sizes in presets.ts.
 *
 * @module
 */

/**
 * RoPE frequency scaling (null: none).
 */
export type RopeScaling =
  | null
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  }
  | { type: "linear"; factor: number };

/**
 * A Llama-shaped decoder-only model: Llama 2 / 3 / 3.1, TinyLlama, and the families registered in
 * src/model/families/ (Qwen2 / Qwen2.5, Qwen3, Mistral with or without a sliding window).
 */
export interface ModelConfig {
  /**
   * The Hugging Face `model_type` of the family (src/model/families/registry.ts); absent:
   * "llama".
   */
  modelType?: string;
  /** Biases on the q, k and v projections (Qwen2 / Qwen2.5). Default false. */
  qkvBias?: boolean;
  /** RMSNorm over each head of q and of k before RoPE (Qwen3's q_norm, k_norm). Default false. */
  qkNorm?: boolean;
  /**
   * Sliding-window attention (Mistral's `sliding_window`): the query at p sees the key at s only
   * when p - s < slidingWindow (src/model/documents.ts has the rule). Absent or null: none.
   */
  slidingWindow?: number | null;
  /**
   * The first layer the sliding window applies to (Qwen2's `max_window_layers`: the layers before
   * it attend causally over the whole sequence). Absent: every layer (Mistral). `layerWindow` is
   * the rule.
   */
  windowFromLayer?: number;
  /** Vocabulary size: rows of the embedding and of the LM head (`vocab_size`). */
  vocabSize: number;
  /** Model width (`hidden_size`). */
  hiddenSize: number;
  /** Width of the SwiGLU MLP (`intermediate_size`). */
  intermediateSize: number;
  /** Decoder layers (`num_hidden_layers`). */
  numLayers: number;
  /** Query heads (`num_attention_heads`). */
  numHeads: number;
  /** Key/value heads (`num_key_value_heads`); fewer than numHeads is grouped-query attention. */
  numKvHeads: number;
  /** Width of one attention head (`head_dim`; default hiddenSize / numHeads). Even. */
  headDim: number;
  /** Epsilon of RMSNorm (`rms_norm_eps`). */
  rmsNormEps: number;
  /** RoPE base frequency (`rope_theta`). */
  ropeTheta: number;
  /**
   * RoPE frequency scaling (`rope_scaling` / `rope_parameters`): null for none, `{ type: "linear",
   * factor }`, or `{ type: "llama3", factor, lowFreqFactor, highFreqFactor,
   * originalMaxPositionEmbeddings }`.
   */
  ropeScaling: RopeScaling;
  /** The context length the model was trained for (`max_position_embeddings`). */
  maxPositionEmbeddings: number;
  /** Whether the LM head shares the embedding's weights (`tie_word_embeddings`). */
  tieWordEmbeddings: boolean;
  /** Beginning-of-sequence token id (`bos_token_id`), when given. */
  bosTokenId?: number;
  /** End-of-sequence token id or ids (`eos_token_id`), when given. */
  eosTokenId?: number | number[];
}

/** RoPE types this implementation computes. */
export const SUPPORTED_ROPE_TYPES = ["default", "linear", "llama3"] as const;

/**
 * Checks the invariants of a config; throws naming `source` on the first violation.
 */
export function validateConfig(cfg: ModelConfig, source = "config"): void {
  const ints: (keyof ModelConfig)[] = [
    "vocabSize",
    "hiddenSize",
    "intermediateSize",
    "numLayers",
    "numHeads",
    "numKvHeads",
    "headDim",
    "maxPositionEmbeddings",
  ];
  for (const k of ints) {
    const v = cfg[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw new Error(`${source}: ${k} must be a positive integer, got ${JSON.stringify(v)}`);
    }
  }
  if (!(cfg.rmsNormEps > 0)) throw new Error(`${source}: rmsNormEps must be positive`);
  if (!(cfg.ropeTheta > 0)) throw new Error(`${source}: ropeTheta must be positive`);
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    throw new Error(
      `${source}: num_attention_heads (${cfg.numHeads}) is not a multiple of ` +
        `num_key_value_heads (${cfg.numKvHeads})`,
    );
  }
  if (cfg.headDim % 2 !== 0) throw new Error(`${source}: head_dim (${cfg.headDim}) must be even`);
  const w = cfg.slidingWindow;
  if (w !== undefined && w !== null && (!Number.isSafeInteger(w) || w <= 0)) {
    throw new Error(
      `${source}: sliding_window must be a positive integer or null, got ${JSON.stringify(w)}`,
    );
  }
  const from = cfg.windowFromLayer;
  if (from !== undefined && (!Number.isSafeInteger(from) || from < 0 || from > cfg.numLayers)) {
    throw new Error(
      `${source}: the first windowed layer (max_window_layers) must be an integer in 0..` +
        `${cfg.numLayers} (num_hidden_layers), got ${JSON.stringify(from)}`,
    );
  }
  checkConfigSizes(cfg, source);
}

/**
 * The sliding window of layer `layer` (0: none, full causal attention): the config's window from
 * its first windowed layer on. The one place that says which layers use the window.
 */
export function layerWindow(cfg: ModelConfig, layer: number): number {
  const w = cfg.slidingWindow ?? 0;
  return w > 0 && layer >= (cfg.windowFromLayer ?? 0) ? w : 0;
}

/**
 * The window in words for headers and plans: "sliding window of 4096 tokens", with "on layers
 * 1..27" when the first layers attend over the whole sequence; "" without a window on any layer.
 */
export function windowDescription(cfg: ModelConfig): string {
  const n = windowedLayers(cfg);
  if (n === 0) return "";
  const on = n === cfg.numLayers ? "" : ` on layers ${cfg.numLayers - n}..${cfg.numLayers - 1}`;
  return `sliding window of ${cfg.slidingWindow} tokens${on}`;
}

/** How many of the config's layers attend under the sliding window. */
export function windowedLayers(cfg: ModelConfig): number {
  let n = 0;
  for (let l = 0; l < cfg.numLayers; l++) if (layerWindow(cfg, l) > 0) n++;
  return n;
}

/**
 * The largest size of each config field distflash builds a model for, far above any Llama (Llama
 * 3.1 405B: 126 layers, hidden 16384, MLP 53248, vocabulary 128256, 128 heads): a bigger value is
 * a typo or a damaged file, and building it would exhaust memory or time (one object per layer).
 */
export const CONFIG_LIMITS: Readonly<Record<string, [keyof ModelConfig, number]>> = Object.freeze({
  num_hidden_layers: ["numLayers", 1024],
  hidden_size: ["hiddenSize", 131072],
  intermediate_size: ["intermediateSize", 1 << 20],
  vocab_size: ["vocabSize", 1 << 24],
  num_attention_heads: ["numHeads", 4096],
  num_key_value_heads: ["numKvHeads", 4096],
  head_dim: ["headDim", 4096],
  max_position_embeddings: ["maxPositionEmbeddings", 1 << 30],
});

/** Parameters of the largest model distflash builds (2^41, about 2.2 trillion). */
export const MAX_PARAMETERS = 2 ** 41;

/**
 * Refuses sizes no run can hold, by arithmetic on the config alone (before any per-layer object
 * or buffer exists), naming the config.json field: each field at most its CONFIG_LIMITS entry and
 * the parameter count at most MAX_PARAMETERS.
 */
export function checkConfigSizes(cfg: ModelConfig, source = "config"): void {
  for (const [field, [key, limit]] of Object.entries(CONFIG_LIMITS)) {
    const v = cfg[key] as number;
    if (v > limit) {
      throw new Error(
        `${source}: ${field} ${v} is larger than distflash builds (at most ${limit}; Llama 3.1 ` +
          "405B has 126 layers, hidden_size 16384): the config is mistyped or damaged",
      );
    }
  }
  const { hiddenSize: h, intermediateSize: m, numLayers: n, vocabSize: v } = cfg;
  const q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  const perLayer = h * (q + 2 * kv) + q * h + 3 * h * m + 2 * h + q + 2 * kv;
  const total = n * perLayer + v * h * (cfg.tieWordEmbeddings ? 1 : 2) + h;
  if (!(total <= MAX_PARAMETERS)) {
    throw new Error(
      `${source}: num_hidden_layers ${n}, hidden_size ${h}, intermediate_size ${m} and ` +
        `vocab_size ${v} make ${total.toExponential(2)} parameters, more than distflash builds ` +
        `(at most ${MAX_PARAMETERS.toExponential(2)}): the config is mistyped or damaged`,
    );
  }
}

/** Options for {@link ropeInvFreq}. */
export interface RopeOptions {
  /**
   * Round every intermediate to float32 as transformers' torch code does (its buffers are
   * float32). Default false: float64 throughout (differences are at the 1e-7 relative level).
   */
  float32?: boolean;
}

/**
 * RoPE inverse frequencies, length headDim/2, as transformers' `ROPE_INIT_FUNCTIONS` computes them:
 * - default: inv[i] = 1 / theta^(2i / headDim)
 * - linear: default / factor
 * - llama3: with wavelen = 2*pi / inv, lowWl = orig / lowFreqFactor, highWl = orig / highFreqFactor:
 *   wavelen < highWl keeps inv; wavelen > lowWl gives inv / factor; otherwise, with
 *   s = (orig / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor),
 *   (1 - s) * inv / factor + s * inv.
 * The attention scaling factor of all three types is 1.
 */
export function ropeInvFreq(cfg: ModelConfig, opts: RopeOptions = {}): Float64Array {
  const r: (x: number) => number = opts.float32 ? Math.fround : (x) => x;
  const dim = cfg.headDim;
  const half = dim >> 1;
  const inv = new Float64Array(half);
  const theta = r(cfg.ropeTheta);
  for (let i = 0; i < half; i++) inv[i] = r(1 / r(Math.pow(theta, r(r(2 * i) / dim))));
  const rs = cfg.ropeScaling;
  if (rs === null) return inv;
  if (rs.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = r(inv[i] / rs.factor);
    return inv;
  }
  const orig = rs.originalMaxPositionEmbeddings;
  const lowWl = orig / rs.lowFreqFactor;
  const highWl = orig / rs.highFreqFactor;
  // Operation order follows transformers (`a / t` on a tensor is `t.reciprocal() * a` in torch),
  // so that with float32 rounding the results match its buffers.
  const twoPi = r(2 * Math.PI);
  for (let i = 0; i < half; i++) {
    const f = inv[i];
    const wavelen = r(r(1 / f) * twoPi);
    if (wavelen < highWl) continue;
    if (wavelen > lowWl) {
      inv[i] = r(f / rs.factor);
      continue;
    }
    const s = r(
      r(r(r(1 / wavelen) * orig) - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor),
    );
    inv[i] = r(r(r(r(1 - s) * f) / rs.factor) + r(s * f));
  }
  return inv;
}

/** One parameter: Hugging Face name and shape as transformers stores it ([out, in] for linears). */
export interface ParamShape {
  name: string;
  shape: number[];
}

/** The slot of each per-layer weight in a decoder layer (src/model/layer.ts). */
export type LayerParamKey =
  | "ln1"
  | "q"
  | "qBias"
  | "k"
  | "kBias"
  | "v"
  | "vBias"
  | "qNorm"
  | "kNorm"
  | "o"
  | "ln2"
  | "gate"
  | "up"
  | "down";

/** One per-layer parameter: its slot, its Hugging Face name after `model.layers.N.`, its shape. */
export interface LayerParam {
  key: LayerParamKey;
  name: string;
  shape: (cfg: ModelConfig) => number[];
  /** Present only when this holds (absent: always). */
  when?: (cfg: ModelConfig) => boolean;
}

const qDimOf = (c: ModelConfig) => c.numHeads * c.headDim;
const kvDimOf = (c: ModelConfig) => c.numKvHeads * c.headDim;

/**
 * The one table of per-layer parameters, in Hugging Face names and order (transformers' module
 * order: input norm, q, k, v with their biases, q/k norms, o, post-attention norm, gate, up,
 * down). Every family's layer is a subset of it, chosen by the config's options.
 */
export const LAYER_PARAMS: readonly LayerParam[] = Object.freeze([
  { key: "ln1", name: "input_layernorm.weight", shape: (c) => [c.hiddenSize] },
  { key: "q", name: "self_attn.q_proj.weight", shape: (c) => [qDimOf(c), c.hiddenSize] },
  {
    key: "qBias",
    name: "self_attn.q_proj.bias",
    shape: (c) => [qDimOf(c)],
    when: (c) => !!c.qkvBias,
  },
  { key: "k", name: "self_attn.k_proj.weight", shape: (c) => [kvDimOf(c), c.hiddenSize] },
  {
    key: "kBias",
    name: "self_attn.k_proj.bias",
    shape: (c) => [kvDimOf(c)],
    when: (c) => !!c.qkvBias,
  },
  { key: "v", name: "self_attn.v_proj.weight", shape: (c) => [kvDimOf(c), c.hiddenSize] },
  {
    key: "vBias",
    name: "self_attn.v_proj.bias",
    shape: (c) => [kvDimOf(c)],
    when: (c) => !!c.qkvBias,
  },
  {
    key: "qNorm",
    name: "self_attn.q_norm.weight",
    shape: (c) => [c.headDim],
    when: (c) => !!c.qkNorm,
  },
  {
    key: "kNorm",
    name: "self_attn.k_norm.weight",
    shape: (c) => [c.headDim],
    when: (c) => !!c.qkNorm,
  },
  { key: "o", name: "self_attn.o_proj.weight", shape: (c) => [c.hiddenSize, qDimOf(c)] },
  { key: "ln2", name: "post_attention_layernorm.weight", shape: (c) => [c.hiddenSize] },
  { key: "gate", name: "mlp.gate_proj.weight", shape: (c) => [c.intermediateSize, c.hiddenSize] },
  { key: "up", name: "mlp.up_proj.weight", shape: (c) => [c.intermediateSize, c.hiddenSize] },
  { key: "down", name: "mlp.down_proj.weight", shape: (c) => [c.hiddenSize, c.intermediateSize] },
]);

/** The per-layer parameters of `cfg`'s layers (LAYER_PARAMS filtered by its options). */
export function layerParams(cfg: ModelConfig): LayerParam[] {
  return LAYER_PARAMS.filter((p) => !p.when || p.when(cfg));
}

/**
 * Every parameter in Hugging Face naming and order: embeddings, per layer (layerParams), final
 * norm, then `lm_head.weight` unless tied.
 */
export function parameterShapes(cfg: ModelConfig): ParamShape[] {
  const h = cfg.hiddenSize, layer = layerParams(cfg);
  const out: ParamShape[] = [{ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, h] }];
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const p of layer) out.push({ name: `model.layers.${i}.${p.name}`, shape: p.shape(cfg) });
  }
  out.push({ name: "model.norm.weight", shape: [h] });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, h] });
  return out;
}

/** Number of parameters (tied embeddings counted once). */
export function paramCount(cfg: ModelConfig): number {
  let n = 0;
  for (const p of parameterShapes(cfg)) n += p.shape.reduce((a, b) => a * b, 1);
  return n;
}
