/**
 * Checks several families share.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import type { HfJson } from "./registry.ts";

/**
 * Qwen2's and Qwen3's sliding window, as transformers reads their config.json: `use_sliding_window`
 * switches it on with `sliding_window` tokens; the layers it applies to are `layer_types`' entries
 * "sliding_attention" when the list is given, else the layers numbered from `max_window_layers`
 * (default 28) on. distflash takes the windowed layers as a suffix of the stack (`windowFromLayer`;
 * the families' checkpoints all are); interleaved lists are refused, as are sliding layers without
 * the switch. Returns the config keys to set (none without a window).
 */
export function qwenWindow(
  j: HfJson,
  source: string,
  numLayers: number,
): { slidingWindow?: number; windowFromLayer?: number } {
  const types = j.layer_types;
  let from = numLayers; // the first sliding layer (numLayers: none)
  if (types !== undefined && types !== null) {
    const ok = Array.isArray(types) && types.length === numLayers &&
      types.every((t) => t === "full_attention" || t === "sliding_attention");
    if (!ok) {
      throw new Error(
        `${source}: "layer_types" must list "full_attention" or "sliding_attention" for each of ` +
          `the ${numLayers} layers, got ${JSON.stringify(types)}`,
      );
    }
    from = (types as string[]).indexOf("sliding_attention");
    if (from < 0) from = numLayers;
    if ((types as string[]).slice(from).some((t) => t !== "sliding_attention")) {
      throw new Error(
        `${source}: "layer_types" interleaves full and sliding-window layers; distflash takes the ` +
          `sliding-window layers as the last ones of the stack only`,
      );
    }
  }
  if (j.use_sliding_window !== true) {
    if (from < numLayers) {
      throw new Error(
        `${source}: "layer_types" has sliding_attention layers but "use_sliding_window" is ` +
          `${JSON.stringify(j.use_sliding_window ?? null)}: transformers would give them no ` +
          `window; set one of the two consistently`,
      );
    }
    return {};
  }
  const w = j.sliding_window;
  if (typeof w !== "number" || !Number.isSafeInteger(w) || w <= 0) {
    throw new Error(
      `${source}: "use_sliding_window" is true but "sliding_window" is ${JSON.stringify(w)}; it ` +
        `must be a positive integer (the window in tokens)`,
    );
  }
  if (types === undefined || types === null) {
    const m = j.max_window_layers ?? 28;
    if (typeof m !== "number" || !Number.isSafeInteger(m) || m < 0) {
      throw new Error(
        `${source}: "max_window_layers" must be a non-negative integer, got ${JSON.stringify(m)}`,
      );
    }
    from = Math.min(m, numLayers);
  }
  return from < numLayers ? { slidingWindow: w, windowFromLayer: from } : {};
}

/** The Qwen window keys of a saved config.json, consistent with `layer_types` (see qwenWindow). */
export function qwenWindowToHf(cfg: ModelConfig, out: HfJson): void {
  const w = cfg.slidingWindow ?? 0, from = w > 0 ? cfg.windowFromLayer ?? 0 : cfg.numLayers;
  Object.assign(out, {
    use_sliding_window: w > 0,
    sliding_window: w > 0 ? w : null,
    max_window_layers: from,
    layer_types: Array.from(
      { length: cfg.numLayers },
      (_, l) => (l >= from ? "sliding_attention" : "full_attention"),
    ),
  });
}

/** Refuses a true boolean key with `why`. */
export function refuseTrue(j: HfJson, key: string, source: string, why: string): void {
  if (j[key] === true) throw new Error(`${source}: "${key}" is true; ${why}`);
}
