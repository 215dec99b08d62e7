/**
 * The per-step metrics record, shared by the trainer that fills it and the progress display
 * that prints it (a file of its own so that neither imports the other).
 *
 * @module
 */

/** One logged training step: a line of metrics.jsonl and an entry of log_history (HF's names). */
export interface StepMetrics {
  /** Optimizer steps done, counting this one. */
  step: number;
  /** Epochs done, fractional (step / steps per epoch). */
  epoch: number;
  /** Mean loss over the step's labelled tokens, before the step's update. */
  loss: number;
  /** Learning rate of the step's update, after the schedule. */
  learning_rate: number;
  /** Global gradient norm of the step, before clipping. */
  grad_norm: number;
  /** Training tokens per second since the previous logged step, over all data-parallel groups. */
  tokens_per_s: number;
  /**
   * Model-FLOPs utilisation over the window of tokens_per_s (0..1): training FLOPs (6 N per token
   * plus causal attention) over the devices' bf16 peak; absent where the peak is not known.
   */
  mfu?: number;
  /** Device memory held by the memory plan, bytes. */
  memory_bytes: number;
  /** Seconds since this run's training loop started (a resumed run restarts the clock). */
  elapsed_s: number;
}
