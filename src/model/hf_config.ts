/**
 * Hugging Face `config.json` for every registered model family (src/model/families/): the keys
 * Llama-shaped decoders share are parsed here, the family (by `model_type`) checks its own; parsing it (classic and transformers 5 spellings)
 * into a ModelConfig with errors naming the file and key, and writing one transformers loads.
 */
import {
  type ModelConfig,
  type RopeScaling,
  SUPPORTED_ROPE_TYPES,
  validateConfig,
} from "./config.ts";
import { familyForJson, familyOf } from "./families/mod.ts";

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
 * Parses a Hugging Face `config.json` (already JSON-parsed) of a registered family (Llama, Qwen2,
 * Qwen3, Mistral; others are refused naming the supported ones). `source` (usually the file
 * path) is named in every error. Accepts the classic keys (`rope_theta`, `rope_scaling` with
 * `rope_type` or `type`) and transformers 5's `rope_parameters`.
 */
export function parseHfConfig(json: unknown, source: string): ModelConfig {
  if (!isObj(json)) throw new Error(`${source}: config is not a JSON object`);
  const j = json;
  const family = familyForJson(j, source);
  if (j.hidden_act !== undefined && j.hidden_act !== "silu") {
    throw new Error(`${source}: "hidden_act" is ${JSON.stringify(j.hidden_act)}; only "silu"`);
  }
  if (j.mlp_bias === true) throw new Error(`${source}: "mlp_bias" is true; not supported`);
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

  const cfg: ModelConfig = {
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
  const out = family.parse(j, source, cfg);
  validateConfig(out, source);
  return out;
}

/** Reads and parses `config.json` from a model folder (or a path to the file itself). */
export async function readHfConfig(path: string): Promise<ModelConfig> {
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
 * A classic transformers `config.json` object for `cfg` (rope_theta + rope_scaling), with its
 * family's class name, model_type and keys, loadable by
 * transformers 4.43+ (llama3 rope) and 5 (which converts it to rope_parameters itself). Writes
 * both `torch_dtype` (transformers 4) and `dtype` (transformers 5), from `opts.dtype` (the dtype
 * the weights are stored in: "bfloat16" (default), "float16" or "float32").
 */
export function toHfConfig(cfg: ModelConfig, opts: HfConfigOptions = {}): Record<string, unknown> {
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
  const family = familyOf(cfg);
  const out: Record<string, unknown> = {
    architectures: [family.architecture],
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
    model_type: family.modelType,
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
  family.toHf(cfg, out);
  return out;
}
