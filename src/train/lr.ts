/**
 * Learning-rate schedules with the semantics of transformers' get_scheduler: the multiplier for
 * the optimizer step with 0-based index `step` (so with warmup the first update uses lr 0, as the
 * Hugging Face Trainer does).
 */
import type { LrSchedulerType } from "./options.ts";

/** Warmup steps: explicit steps win over the ratio, which rounds up (as transformers does). */
export function warmupStepsFor(
  totalSteps: number,
  warmupSteps: number,
  warmupRatio: number,
): number {
  return warmupSteps > 0 ? warmupSteps : Math.ceil(totalSteps * warmupRatio);
}

export function lrMultiplier(
  type: LrSchedulerType,
  step: number,
  totalSteps: number,
  warmup: number,
): number {
  if (type === "constant") return 1;
  if (step < warmup) return step / Math.max(1, warmup);
  if (type === "constant_with_warmup") return 1;
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  if (type === "linear") return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmup));
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress))); // cosine, half a cycle
}
