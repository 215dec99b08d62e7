/**
 * The Llama model configuration: parsing Hugging Face `config.json` (classic and transformers 5
 * spellings), writing it back, presets, parameter shapes and the RoPE inverse frequencies.
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

/** A Llama (2 / 3 / 3.1 / TinyLlama) decoder-only model. */
export interface LlamaConfig {
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

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function posInt(j: Json, key: string, source: string, dflt?: number): number {
  const v = j[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new Error(`${source}: missing required key "${key}"`);
  }
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    throw new Error(`${source}: "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function posNum(v: unknown, key: string, source: string, dflt?: number): number {
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new Error(`${source}: missing required key "${key}"`);
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new Error(`${source}: "${key}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function tokenId(v: unknown, key: string, source: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new Error(`${source}: "${key}" must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Reads RoPE scaling from an object holding `rope_type` (or the older `type`) and its parameters:
 * a classic `rope_scaling` or a transformers 5 `rope_parameters`. `key` names it in errors.
 */
function parseRope(r: Json, key: string, source: string): RopeScaling {
  const rawType = r.rope_type ?? r.type ?? "default";
  if (typeof rawType !== "string") {
    throw new Error(
      `${source}: "${key}.rope_type" must be a string, got ${JSON.stringify(rawType)}`,
    );
  }
  const at = (k: string) => `${key}.${k}`;
  switch (rawType) {
    case "default":
      return null;
    case "linear":
      return { type: "linear", factor: posNum(r.factor, at("factor"), source) };
    case "llama3": {
      const s = {
        type: "llama3" as const,
        factor: posNum(r.factor, at("factor"), source),
        lowFreqFactor: posNum(r.low_freq_factor, at("low_freq_factor"), source),
        highFreqFactor: posNum(r.high_freq_factor, at("high_freq_factor"), source),
        originalMaxPositionEmbeddings: posNum(
          r.original_max_position_embeddings,
          at("original_max_position_embeddings"),
          source,
        ),
      };
      if (!(s.lowFreqFactor < s.highFreqFactor)) {
        throw new Error(
          `${source}: "${key}": low_freq_factor (${s.lowFreqFactor}) must be below ` +
            `high_freq_factor (${s.highFreqFactor})`,
        );
      }
      return s;
    }
    default:
      throw new Error(
        `${source}: "${key}.rope_type" is "${rawType}", which distflash does not support ` +
          `(supported: ${SUPPORTED_ROPE_TYPES.join(", ")})`,
      );
  }
}

/**
 * Checks the invariants of a config; throws naming `source` on the first violation.
 */
export function validateConfig(cfg: LlamaConfig, source = "config"): void {
  const ints: (keyof LlamaConfig)[] = [
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
}

/**
 * Parses a Hugging Face Llama `config.json` (already JSON-parsed). `source` (usually the file
 * path) is named in every error. Accepts the classic keys (`rope_theta`, `rope_scaling` with
 * `rope_type` or `type`) and transformers 5's `rope_parameters`.
 */
export function parseHfConfig(json: unknown, source: string): LlamaConfig {
  if (!isObj(json)) throw new Error(`${source}: config is not a JSON object`);
  const j = json;
  const archs = Array.isArray(j.architectures) ? j.architectures : [];
  const isLlama = j.model_type === "llama" ||
    (j.model_type === undefined && archs.includes("LlamaForCausalLM"));
  if (!isLlama) {
    throw new Error(
      `${source}: not a Llama model (model_type ${JSON.stringify(j.model_type)}, ` +
        `architectures ${JSON.stringify(j.architectures ?? null)}); distflash trains ` +
        `model_type "llama" / LlamaForCausalLM only`,
    );
  }
  if (j.hidden_act !== undefined && j.hidden_act !== "silu") {
    throw new Error(`${source}: "hidden_act" is ${JSON.stringify(j.hidden_act)}; only "silu"`);
  }
  for (const k of ["attention_bias", "mlp_bias"]) {
    if (j[k] === true) throw new Error(`${source}: "${k}" is true; biases are not supported`);
  }
  const hidden = posInt(j, "hidden_size", source);
  const heads = posInt(j, "num_attention_heads", source);
  const kvHeads = posInt(j, "num_key_value_heads", source, heads);
  if (j.head_dim === undefined || j.head_dim === null) {
    if (hidden % heads !== 0) {
      throw new Error(
        `${source}: hidden_size (${hidden}) is not divisible by num_attention_heads (${heads}) ` +
          `and no head_dim is given`,
      );
    }
  }
  const headDim = posInt(j, "head_dim", source, hidden / heads);

  let ropeTheta: number;
  let ropeScaling: RopeScaling;
  if (j.rope_parameters !== undefined && j.rope_parameters !== null) {
    const rp = j.rope_parameters;
    if (!isObj(rp)) throw new Error(`${source}: "rope_parameters" must be an object`);
    if (!("rope_theta" in rp) && !("rope_type" in rp) && !("type" in rp)) {
      throw new Error(
        `${source}: "rope_parameters" looks per-layer-type (keys ${Object.keys(rp).join(", ")}); ` +
          `Llama uses one set`,
      );
    }
    ropeTheta = posNum(rp.rope_theta ?? j.rope_theta, "rope_parameters.rope_theta", source, 10000);
    ropeScaling = parseRope(rp, "rope_parameters", source);
  } else {
    ropeTheta = posNum(j.rope_theta, "rope_theta", source, 10000);
    if (j.rope_scaling === undefined || j.rope_scaling === null) ropeScaling = null;
    else if (!isObj(j.rope_scaling)) {
      throw new Error(`${source}: "rope_scaling" must be an object or null`);
    } else ropeScaling = parseRope(j.rope_scaling, "rope_scaling", source);
  }

  let eos: number | number[] | undefined;
  if (Array.isArray(j.eos_token_id)) {
    eos = j.eos_token_id.map((v, i) => tokenId(v, `eos_token_id[${i}]`, source)!);
  } else eos = tokenId(j.eos_token_id, "eos_token_id", source);
  const bos = tokenId(j.bos_token_id, "bos_token_id", source);

  const cfg: LlamaConfig = {
    vocabSize: posInt(j, "vocab_size", source),
    hiddenSize: hidden,
    intermediateSize: posInt(j, "intermediate_size", source),
    numLayers: posInt(j, "num_hidden_layers", source),
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    rmsNormEps: posNum(j.rms_norm_eps, "rms_norm_eps", source, 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: posInt(j, "max_position_embeddings", source, 2048),
    tieWordEmbeddings: j.tie_word_embeddings === true,
  };
  if (j.tie_word_embeddings !== undefined && typeof j.tie_word_embeddings !== "boolean") {
    throw new Error(`${source}: "tie_word_embeddings" must be true or false`);
  }
  if (bos !== undefined) cfg.bosTokenId = bos;
  if (eos !== undefined) cfg.eosTokenId = eos;
  validateConfig(cfg, source);
  return cfg;
}

/** Reads and parses `config.json` from a model folder (or a path to the file itself). */
export async function readHfConfig(path: string): Promise<LlamaConfig> {
  let file = path;
  try {
    if ((await Deno.stat(path)).isDirectory) file = `${path.replace(/\/+$/, "")}/config.json`;
  } catch (e) {
    throw new Error(`${path}: cannot read model config (${(e as Error).message})`);
  }
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new Error(`${file}: cannot read model config (${(e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseHfConfig(json, file);
}

/**
 * Options for {@link toHfConfig}.
 */
export interface HfConfigOptions {
  /** The dtype the weights are stored in (torch spelling); default "bfloat16". */
  dtype?: "bfloat16" | "float16" | "float32";
}

/**
 * A classic transformers `config.json` object for `cfg` (rope_theta + rope_scaling), loadable by
 * transformers 4.43+ (llama3 rope) and 5 (which converts it to rope_parameters itself). Writes
 * both `torch_dtype` (transformers 4) and `dtype` (transformers 5), from `opts.dtype` (the dtype
 * the weights are stored in: "bfloat16" (default), "float16" or "float32").
 */
export function toHfConfig(cfg: LlamaConfig, opts: HfConfigOptions = {}): Record<string, unknown> {
  validateConfig(cfg);
  let ropeScaling: Record<string, unknown> | null = null;
  const rs = cfg.ropeScaling;
  if (rs?.type === "linear") ropeScaling = { rope_type: "linear", factor: rs.factor };
  else if (rs?.type === "llama3") {
    ropeScaling = {
      rope_type: "llama3",
      factor: rs.factor,
      low_freq_factor: rs.lowFreqFactor,
      high_freq_factor: rs.highFreqFactor,
      original_max_position_embeddings: rs.originalMaxPositionEmbeddings,
    };
  }
  const dtype = opts.dtype ?? "bfloat16";
  const out: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
  };
  if (cfg.bosTokenId !== undefined) out.bos_token_id = cfg.bosTokenId;
  if (cfg.eosTokenId !== undefined) {
    out.eos_token_id = Array.isArray(cfg.eosTokenId) ? [...cfg.eosTokenId] : cfg.eosTokenId;
  }
  Object.assign(out, {
    head_dim: cfg.headDim,
    hidden_act: "silu",
    hidden_size: cfg.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: cfg.numHeads,
    num_hidden_layers: cfg.numLayers,
    num_key_value_heads: cfg.numKvHeads,
    pretraining_tp: 1,
    rms_norm_eps: cfg.rmsNormEps,
    rope_scaling: ropeScaling,
    rope_theta: cfg.ropeTheta,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: dtype,
    dtype,
    use_cache: true,
    vocab_size: cfg.vocabSize,
  });
  return out;
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
export function ropeInvFreq(cfg: LlamaConfig, opts: RopeOptions = {}): Float64Array {
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

// ---------------------------------------------------------------------------------------------
// Presets

function preset(c: LlamaConfig): Readonly<LlamaConfig> {
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
export const PRESETS: Readonly<Record<string, Readonly<LlamaConfig>>> = Object.freeze({
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

/** Whether `name` is a preset name (case-insensitive). */
export function isPreset(name: string): boolean {
  return Object.hasOwn(PRESETS, name.toLowerCase());
}

/** A fresh, mutable copy of preset `name` (case-insensitive: "Llama-2-7b" works). */
export function presetConfig(name: string): LlamaConfig {
  const p = PRESETS[name.toLowerCase()];
  if (!Object.hasOwn(PRESETS, name.toLowerCase()) || !p) {
    throw new Error(
      `unknown model preset ${JSON.stringify(name)}; presets: ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const c: LlamaConfig = { ...p, ropeScaling: p.ropeScaling ? { ...p.ropeScaling } : null };
  if (Array.isArray(p.eosTokenId)) c.eosTokenId = [...p.eosTokenId];
  return c;
}

// ---------------------------------------------------------------------------------------------
// Parameters

/** One parameter: Hugging Face name and shape as transformers stores it ([out, in] for linears). */
export interface ParamShape {
  name: string;
  shape: number[];
}

/**
 * Every parameter in Hugging Face naming and order: embeddings, per layer (input norm, q, k, v, o,
 * post-attention norm, gate, up, down), final norm, then `lm_head.weight` unless tied.
 */
export function parameterShapes(cfg: LlamaConfig): ParamShape[] {
  const h = cfg.hiddenSize, qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const inter = cfg.intermediateSize;
  const out: ParamShape[] = [{ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, h] }];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      { name: `${p}.input_layernorm.weight`, shape: [h] },
      { name: `${p}.self_attn.q_proj.weight`, shape: [qDim, h] },
      { name: `${p}.self_attn.k_proj.weight`, shape: [kvDim, h] },
      { name: `${p}.self_attn.v_proj.weight`, shape: [kvDim, h] },
      { name: `${p}.self_attn.o_proj.weight`, shape: [h, qDim] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [h] },
      { name: `${p}.mlp.gate_proj.weight`, shape: [inter, h] },
      { name: `${p}.mlp.up_proj.weight`, shape: [inter, h] },
      { name: `${p}.mlp.down_proj.weight`, shape: [h, inter] },
    );
  }
  out.push({ name: "model.norm.weight", shape: [h] });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, h] });
  return out;
}

/** Number of parameters (tied embeddings counted once). */
export function paramCount(cfg: LlamaConfig): number {
  let n = 0;
  for (const p of parameterShapes(cfg)) n += p.shape.reduce((a, b) => a * b, 1);
  return n;
}
