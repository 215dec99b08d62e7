/**
 * What a run leaves for Hugging Face tools to read: trainer_state.json with the fields
 * transformers' TrainerState has, the log history under HF's metric names, and the run's
 * arguments as training_args.json.
 */
import { join } from "node:path";
import type { TrainOptions } from "./options.ts";
import type { EvalMetrics } from "./eval.ts";
import type { StepMetrics } from "./metrics.ts";

/** The training loop's numbers that trainer_state.json reports. */
export interface StateNumbers {
  /** Optimizer steps done. */
  globalStep: number;
  /** Steps of the whole run. */
  maxSteps: number;
  /** Steps per epoch of this run's data. */
  stepsPerEpoch: number;
  /** Training tokens read so far, all ranks. */
  tokensSeen: number;
}

/**
 * trainer_state.json as transformers' TrainerState writes it (best_metric and friends stay null:
 * no best-model tracking here), plus distflash's own `seed` and `model`.
 */
export function trainerState(
  o: TrainOptions,
  n: StateNumbers,
  logHistory: readonly object[],
): Record<string, unknown> {
  return {
    best_global_step: null,
    best_metric: null,
    best_model_checkpoint: null,
    epoch: n.globalStep / n.stepsPerEpoch,
    eval_steps: o.evalSteps ?? o.loggingSteps,
    global_step: n.globalStep,
    is_hyper_param_search: false,
    is_local_process_zero: true,
    is_world_process_zero: true,
    log_history: logHistory,
    logging_steps: o.loggingSteps,
    max_steps: n.maxSteps,
    num_input_tokens_seen: n.tokensSeen,
    num_train_epochs: Math.ceil(n.maxSteps / n.stepsPerEpoch),
    save_steps: o.saveSteps,
    stateful_callbacks: {},
    total_flos: 0,
    train_batch_size: o.perDeviceTrainBatchSize,
    trial_name: null,
    trial_params: null,
    seed: o.seed,
    model: o.model,
  };
}

/**
 * A log_history read back from a checkpoint, under today's names: checkpoints written before
 * the rename say `lr` where HF (and now distflash) say `learning_rate`.
 */
export function upgradeLogHistory<T>(entries: readonly Record<string, unknown>[]): T[] {
  return entries.map((e) => {
    if (!("lr" in e) || "learning_rate" in e) return e as T;
    const { lr, ...rest } = e;
    return { ...rest, learning_rate: lr } as T;
  });
}

/** Writes the resolved options (snake_case, HF's TrainingArguments names) as training_args.json. */
export async function saveTrainingArgs(dir: string, o: TrainOptions): Promise<void> {
  const args: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(o)) {
    if (value === undefined) continue;
    args[key.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase())] = value;
  }
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "training_args.json"), JSON.stringify(args, null, 2) + "\n");
}

/** log_history as HF orders it: by step, a step's training entry before its evaluation. */
export function logHistory(
  steps: StepMetrics[],
  evals: EvalMetrics[],
): (StepMetrics | EvalMetrics)[] {
  const all: (StepMetrics | EvalMetrics)[] = [...steps, ...evals];
  return all.sort((a, b) => a.step - b.step || Number("eval_loss" in a) - Number("eval_loss" in b));
}
