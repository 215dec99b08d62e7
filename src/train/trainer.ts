/**
 * The training loop: options in, checkpoints and metrics.jsonl out. setup.ts builds the run,
 * step.ts runs one optimizer step; here are the epochs, logging, evaluation, checkpoints and the
 * stop on a signal.
 */
import { join } from "node:path";
import { ByteTokenizer } from "../data/mod.ts";
import { formatBytes } from "../runtime/memory.ts";
import { saveModel, saveOptimizer } from "../model/hf.ts";
import type { TrainOptions } from "./options.ts";
import { resolveTrainOptions } from "./resolve_options.ts";
import { Progress, StepProgress } from "./progress.ts";
import type { StepMetrics } from "./metrics.ts";
import { type EvalMetrics, evaluate, evaluationDue } from "./eval.ts";
import { logHistory, trainerState } from "./state.ts";
import {
  CheckpointSaver,
  pruneCheckpoints,
  TRAINER_STATE_FILE,
  writeTextSynced,
} from "./checkpoint.ts";
import { abortRun, type Run, setupRun, teardownRun } from "./setup.ts";
import { StopSignals } from "./signals.ts";
import { trainStep } from "./step.ts";
import { modelFlopsUtilisation, runPeakTflops, trainingFlopsPerToken } from "./mfu.ts";

export type { StepMetrics };

/** What `train` returns once the final model is saved. */
export interface TrainResult {
  /** Total optimizer steps of the run (including those before a resume). */
  steps: number;
  /** Loss of the last step run in this call (NaN when none ran). */
  finalLoss: number;
  /** Every logged step's metrics, including the history of a resumed checkpoint. */
  metrics: StepMetrics[];
  /** Every evaluation's metrics (empty without validation data), including a resumed history. */
  evalMetrics: EvalMetrics[];
  /** Where the final model, checkpoints and metrics.jsonl were written. */
  outputDir: string;
}

/**
 * Thrown when a run was stopped by Ctrl-C (SIGINT) or SIGTERM after saving a checkpoint of the
 * last finished step.
 */
export class TrainingInterrupted extends Error {
  /**
   * Records where the run stopped.
   * @param checkpoint the folder holding the checkpoint to resume from
   * @param step the last finished (and saved) optimizer step
   * @param signal the signal that stopped the run (on any rank)
   */
  constructor(
    readonly checkpoint: string,
    readonly step: number,
    readonly signal: "SIGINT" | "SIGTERM" = "SIGINT",
  ) {
    super(
      `stopped by ${
        signal === "SIGINT" ? "Ctrl-C" : "SIGTERM"
      } after step ${step}; resume with --resume-from-checkpoint ${checkpoint}`,
    );
    this.name = "TrainingInterrupted";
  }

  /** The exit code of a stopped run: 128 + the signal number (130 for SIGINT, 143 for SIGTERM). */
  get exitCode(): number {
    return this.signal === "SIGINT" ? 130 : 143;
  }
}

/** Optional callbacks of `train`. */
export interface TrainHooks {
  /** Called with every logged step (after it is written to metrics.jsonl). */
  onLog?: (m: StepMetrics) => void;
  /** Called with every evaluation (after it is written to metrics.jsonl). */
  onEval?: (m: EvalMetrics) => void;
  /** Where human-readable lines go (default: stderr). */
  log?: (line: string) => void;
  /** Seconds of a step after which, and between which, a line says which layer it is at (30). */
  withinStepSeconds?: number;
}

/** Trains as `distflash train` does. Throws on bad options before any device work. */
export async function train(
  input: Partial<Record<keyof TrainOptions, unknown>>,
  hooks: TrainHooks = {},
): Promise<TrainResult> {
  const { options: o, noEffect } = resolveTrainOptions(input);
  const run = await setupRun(o, noEffect, hooks.log);
  const { device, model, parallel, dataset, evaluation, isMain, log, history, evals } = run;
  const { totalSteps, stepsPerEpoch, startStep, tokensPerStep } = run;
  const dp = parallel.dp;
  let signals: StopSignals | null = null;

  try {
    const { save, writeModel, writeState } = checkpointing(run);
    signals = new StopSignals(log);

    const progress = new Progress(totalSteps, startStep, log);
    const evalPlacement = {
      device,
      model,
      world: run.world,
      scratch: run.scratch,
      batch: o.perDeviceTrainBatchSize,
      evalBatch: o.perDeviceEvalBatchSize,
      parallel,
      documents: run.documents,
    };
    if (evaluation && o.perDeviceEvalBatchSize % o.perDeviceTrainBatchSize !== 0) {
      log(
        `note: --per-device-eval-batch-size ${o.perDeviceEvalBatchSize} runs as forwards of ` +
          `--per-device-train-batch-size ${o.perDeviceTrainBatchSize} (the memory plan's); ` +
          "a multiple of it leaves none part empty",
      );
    }
    const within = new StepProgress(
      run.source.config.numLayers,
      hooks.withinStepSeconds ?? 30,
      (line) => progress.line(line),
    );
    if (isMain) model.onLayer = (phase, layer) => within.layer(phase, layer);
    const peakTflops = runPeakTflops(o.peakTflops, device.backend, device.props(0).name);
    const flopsPerToken = trainingFlopsPerToken(run.source.config, o.modelMaxLength);
    let order: Uint32Array | null = null, orderEpoch = -1;
    let windowStart = performance.now(), windowTokens = 0, lastLoss = NaN;
    const t0 = performance.now();

    for (let step = startStep; step < totalSteps; step++) {
      // The epoch's shuffled order of this data-parallel group's windows.
      const epoch = Math.floor(step / stepsPerEpoch);
      if (epoch !== orderEpoch) {
        order = dataset.indices({ epoch, seed: o.seed, rank: parallel.dpRank, worldSize: dp });
        orderEpoch = epoch;
      }
      const { loss, gradNorm, lr } = await trainStep(run, step, order!, within);
      lastLoss = loss;
      if (step === startStep && device.backend === "cuda") {
        // The plan against what the device really lost: the check of the memory planner.
        const used = run.memory.freeBefore - device.memInfo().free;
        const off = (100 * (used - run.memory.planned)) / run.memory.planned;
        log(
          `device memory in use after the first step: ${formatBytes(used)} (plan ${
            formatBytes(run.memory.planned)
          } with the workspace allowance, ${off >= 0 ? "+" : ""}${off.toFixed(1)}%)`,
        );
      }
      windowTokens += tokensPerStep;
      const done = step + 1;

      if (done % o.loggingSteps === 0 || done === totalSteps || done === startStep + 1) {
        const now = performance.now();
        const tokensPerS = windowTokens / ((now - windowStart) / 1000);
        const m: StepMetrics = {
          step: done,
          epoch: done / stepsPerEpoch,
          loss,
          learning_rate: lr,
          grad_norm: gradNorm,
          tokens_per_s: tokensPerS,
          ...(peakTflops === null ? {} : {
            mfu: modelFlopsUtilisation(flopsPerToken, tokensPerS, run.worldSize, peakTflops),
          }),
          memory_bytes: model.plan.totalBytes,
          elapsed_s: (now - t0) / 1000,
        };
        windowStart = now;
        windowTokens = 0;
        history.push(m);
        await run.report.step(m);
        if (isMain) progress.log(m);
        hooks.onLog?.(m);
      }
      if (evaluation && evaluationDue(o, done, totalSteps, stepsPerEpoch)) {
        const e = await evaluate(evaluation, evalPlacement, done, done / stepsPerEpoch);
        evals.push(e);
        await run.report.eval(e);
        if (isMain) {
          progress.line(
            `eval at step ${done}: eval_loss ${e.eval_loss.toFixed(4)} perplexity ${
              e.perplexity.toFixed(3)
            }`,
          );
        }
        hooks.onEval?.(e);
      }
      if (isMain) progress.tick(done, loss);

      const epochEnd = done % stepsPerEpoch === 0;
      const dueSave = (o.saveStrategy === "steps" && done % o.saveSteps === 0) ||
        (o.saveStrategy === "epoch" && epochEnd);
      let saved: string | null = null;
      if (dueSave && done < totalSteps) saved = await save(done);
      // The stop decision, taken together: a signal to one rank stops all at this step.
      const stop = await signals.decide(run.world, run.scratch, device);
      if (stop && done < totalSteps) {
        progress.finish();
        const dir = saved ?? await save(done);
        throw new TrainingInterrupted(dir, done, stop);
      }
    }
    progress.finish();
    if (o.saveStrategy !== "no") await save(totalSteps);
    if (o.saveFinalModel) {
      await model.params.settle();
      if (isMain || parallel.fullShard) await writeModel(o.outputDir);
      log(`saved the final model to ${o.outputDir}`);
    }
    // As HF's run_clm does with trainer.save_state(): the finished run's state beside its model.
    if (isMain) await writeState(o.outputDir, totalSteps);
    const chart = run.report.close();
    if (chart) log(chart);
    return {
      steps: totalSteps,
      finalLoss: lastLoss,
      metrics: history,
      evalMetrics: evals,
      outputDir: o.outputDir,
    };
  } catch (error) {
    abortRun(run); // peers learn at once instead of waiting for a timeout
    throw error;
  } finally {
    signals?.remove();
    await teardownRun(run);
  }
}

/**
 * How `run` writes its model and checkpoints. Replicated: rank 0 writes everything. Sharded:
 * every rank takes part in gathering the weights (rank 0 writes them) and writes its own
 * optimizer shard.
 */
function checkpointing(run: Run): {
  /** Saves the checkpoint of optimizer step `step` (a collective); returns its folder. */
  save: (step: number) => Promise<string>;
  /** Writes the model (weights, config, tokenizer) to `dir` (a collective when sharded). */
  writeModel: (dir: string) => Promise<void>;
  /** Rank 0: writes trainer_state.json of optimizer step `step` into `dir`. */
  writeState: (dir: string, step: number) => Promise<void>;
} {
  const { options: o, model, isMain, log, optimizerFile, runId } = run;
  const fullShard = run.parallel.fullShard;
  const writeModel = (dir: string) =>
    saveModel(model, dir, {
      dtype: o.saveDtype === "bf16" ? "bfloat16" : "float32",
      tokenizerFrom: run.source.dir,
      writer: isMain,
      byteTokenizer: run.tokenizer instanceof ByteTokenizer,
    });
  const checkpoints = new CheckpointSaver({
    outputDir: o.outputDir,
    runId,
    rank: run.rank,
    worldSize: run.worldSize,
    sharded: fullShard,
    barrier: run.barrier,
    overwrite: o.overwriteOutputDir,
  });
  const writeState = async (dir: string, step: number) => {
    const numbers = {
      globalStep: step,
      maxSteps: run.totalSteps,
      stepsPerEpoch: run.stepsPerEpoch,
      tokensSeen: step * run.tokensPerStep,
    };
    const state = trainerState(o, numbers, logHistory(run.history, run.evals));
    await writeTextSynced(join(dir, TRAINER_STATE_FILE), JSON.stringify(state, null, 2));
  };
  const save = async (step: number): Promise<string> => {
    await model.params.settle(); // the offloaded optimizer's last update has landed
    const dir = await checkpoints.save(step, async (dir) => {
      if (!isMain && !fullShard) return;
      await writeModel(dir);
      await saveOptimizer(model, join(dir, optimizerFile));
      if (!isMain) return;
      await writeState(dir, step);
    });
    if (isMain) {
      for (const name of await pruneCheckpoints(o.outputDir, runId, o.saveTotalLimit)) {
        log(`--save-total-limit ${o.saveTotalLimit}: deleted ${name}`);
      }
    }
    return dir;
  };
  return { save, writeModel, writeState };
}
