/**
 * The named model sizes `--model` accepts besides a folder: every registered family's presets
 * (src/model/families/), e.g. published Llama, Qwen2.5 and Qwen3 sizes and small debug models.
 */
import type { ModelConfig } from "./config.ts";
import { families } from "./families/mod.ts";

/**
 * Named model sizes (random initialisation), of every registered family: published sizes and the
 * debug presets (small Llamas for tests and development).
 */
export const PRESETS: Readonly<Record<string, Readonly<ModelConfig>>> = Object.freeze(
  Object.assign({}, ...families().map((f) => f.presets)),
);

/** Whether `name` is a preset name (case-insensitive). */
export function isPreset(name: string): boolean {
  return Object.hasOwn(PRESETS, name.toLowerCase());
}

/** A fresh, mutable copy of preset `name` (case-insensitive: "Llama-2-7b" works). */
export function presetConfig(name: string): ModelConfig {
  const p = PRESETS[name.toLowerCase()];
  if (!Object.hasOwn(PRESETS, name.toLowerCase()) || !p) {
    throw new Error(
      `unknown model preset ${JSON.stringify(name)}; presets: ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const c: ModelConfig = { ...p, ropeScaling: p.ropeScaling ? { ...p.ropeScaling } : null };
  if (Array.isArray(p.eosTokenId)) c.eosTokenId = [...p.eosTokenId];
  return c;
}
