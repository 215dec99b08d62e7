/**
 * The registry of model families, keyed by Hugging Face `model_type`. A family owns what is its
 * own: the config.json keys it adds or refuses (on top of the keys every Llama-shaped decoder
 * shares, parsed in ../hf_config.ts), the options it sets in the shared config (config.ts: q/k/v
 * biases, q/k norms), its class name in saved checkpoints, and its named presets. The per-layer
 * parameter table (config.ts, LAYER_PARAMS) and the decoder layer's forward and backward
 * (layer.ts) are shared: a family that only combines existing options is one folder under
 * families/ and one line in families/mod.ts.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";

/** A parsed config.json object. */
export type HfJson = Record<string, unknown>;

/** One model family. */
export interface ModelFamily {
  /** Hugging Face `model_type` ("llama", "qwen2", ...). */
  modelType: string;
  /** The transformers class a checkpoint names in `architectures` ("LlamaForCausalLM", ...). */
  architecture: string;
  /** Human name for messages and docs ("Qwen2 / Qwen2.5"). */
  title: string;
  /**
   * Checks the family's own keys of `json` and returns `base` (the shared keys, already parsed)
   * with the family's options set. Throws naming `source` and the key on anything unsupported.
   */
  parse(json: HfJson, source: string, base: ModelConfig): ModelConfig;
  /**
   * The family's keys of a saved config.json: `out` holds the shared keys (Llama's spelling);
   * the family adds, overrides or deletes.
   */
  toHf(cfg: ModelConfig, out: HfJson): void;
  /** Named model sizes of this family (`--model NAME`, `plan`). */
  presets: Readonly<Record<string, Readonly<ModelConfig>>>;
}

const FAMILIES = new Map<string, ModelFamily>();

/**
 * Families distflash knows and refuses, with the reason (the Hugging Face model_type as key).
 */
const REFUSED: Readonly<Record<string, string>> = {
  gemma: "Gemma scales embeddings and uses GeGLU and (1 + weight) norms",
  gemma2: "Gemma 2 uses soft-capping, sliding windows and extra norms",
  gemma3: "Gemma 3 uses soft-capping, sliding windows and extra norms",
  mixtral: "Mixtral is a mixture of experts",
  qwen2_moe: "Qwen2-MoE is a mixture of experts",
  qwen3_moe: "Qwen3-MoE is a mixture of experts",
  deepseek_v2: "DeepSeek-V2 is a mixture of experts with latent attention",
  deepseek_v3: "DeepSeek-V3 is a mixture of experts with latent attention",
  llama4: "Llama 4 is a mixture of experts",
  phi3: "Phi-3 fuses its projections (qkv_proj, gate_up_proj)",
};

/** Registers a family under its model_type (src/model/families/mod.ts calls this once each). */
export function registerFamily(f: ModelFamily): void {
  if (FAMILIES.has(f.modelType)) throw new Error(`model family ${f.modelType} registered twice`);
  FAMILIES.set(f.modelType, f);
}

/** Every registered family, in registration order (llama first). */
export function families(): ModelFamily[] {
  return [...FAMILIES.values()];
}

/** "llama (Llama 2 / 3 / 3.1), qwen2 (Qwen2 / Qwen2.5), ...": for messages. */
export function supportedFamilies(): string {
  return families().map((f) => `${f.modelType} (${f.title})`).join(", ");
}

/** The family of a config (its modelType; absent: llama). */
export function familyOf(cfg: ModelConfig): ModelFamily {
  const t = cfg.modelType ?? "llama";
  const f = FAMILIES.get(t);
  if (!f) throw new Error(`model family ${JSON.stringify(t)} is not registered`);
  return f;
}

/**
 * The family of a config.json: by `model_type`, or by `architectures` when model_type is absent.
 * Throws naming `source`, the family and the supported ones otherwise.
 */
export function familyForJson(j: HfJson, source: string): ModelFamily {
  const archs = Array.isArray(j.architectures) ? j.architectures : [];
  let f: ModelFamily | undefined;
  if (typeof j.model_type === "string") f = FAMILIES.get(j.model_type);
  else if (j.model_type === undefined) {
    f = families().find((x) => archs.includes(x.architecture));
  }
  if (f) return f;
  const t = typeof j.model_type === "string" ? j.model_type : undefined;
  const why = t && Object.hasOwn(REFUSED, t) ? ` (${REFUSED[t]})` : "";
  throw new Error(
    `${source}: model_type ${JSON.stringify(j.model_type ?? null)}${why}, architectures ` +
      `${JSON.stringify(j.architectures ?? null)}: distflash does not train this family; it ` +
      `trains dense decoder-only models of the families ${supportedFamilies()}`,
  );
}
