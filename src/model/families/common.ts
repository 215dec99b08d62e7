/**
 * Checks several families share.
 *
 * @module
 */
import type { HfJson } from "./registry.ts";

/**
 * Refuses sliding-window attention (Qwen2's `use_sliding_window`, a `layer_types` entry other than
 * "full_attention"), naming the key: distflash computes full causal attention.
 */
export function refuseSlidingWindow(j: HfJson, source: string): void {
  if (j.use_sliding_window === true) {
    throw new Error(
      `${source}: "use_sliding_window" is true; distflash computes full causal attention only ` +
        `(sliding-window attention is not supported): set it to false`,
    );
  }
  if (Array.isArray(j.layer_types) && j.layer_types.some((t) => t !== "full_attention")) {
    throw new Error(
      `${source}: "layer_types" has ${
        JSON.stringify(j.layer_types.find((t) => t !== "full_attention"))
      } layers; distflash computes full causal attention only`,
    );
  }
}

/** Refuses a true boolean key with `why`. */
export function refuseTrue(j: HfJson, key: string, source: string, why: string): void {
  if (j[key] === true) throw new Error(`${source}: "${key}" is true; ${why}`);
}
