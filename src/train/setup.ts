/**
 * From resolved options to a ready run, and back: `setupRun` composes the device-free checks
 * (check_run.ts), the training data (training_data.ts) and the device, ranks and model
 * (build_model.ts), then takes the output folder and loads the weights, optimizer and history to
 * resume from; `teardownRun` gives all of it back. The training loop (trainer.ts) and one
 * optimizer step (step.ts) read the `Run` it returns.
 */
import { join } from "node:path";
import type { Tokenizer } from "../data/mod.ts";
import type { Dataset } from "../data/mod.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import type { DecoderModel } from "../model/decoder.ts";
import { initRandom, loadOptimizer, loadWeights, type ModelSource } from "../model/hf.ts";
import type { TrainOptions } from "./options.ts";
import { reportsToTensorBoard } from "./resolve_options.ts";
import type { StepMetrics } from "./metrics.ts";
import { type DocumentSplit, documentSplit, type ParallelLayout } from "../parallel/layout.ts";
import type { SequenceAttention } from "../parallel/sequence_attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { openBackend } from "../runtime/info.ts";
import { allReduceNumber } from "./ranks.ts";
import type { EvalMetrics } from "./eval.ts";
import { RunReport } from "./report.ts";
import { cutBackEventFiles } from "./tensorboard.ts";
import { logHistory, saveTrainingArgs, upgradeLogHistory } from "./state.ts";
import { optimizerFileName, recoverInterruptedSaves, writeTextSynced } from "./checkpoint.ts";
import { claimOutputDir, type OutputLock, outputRunId } from "./output_dir.ts";
import { checkRun } from "./check_run.ts";
import { isLaunchedRank } from "../launch/launcher.ts";
import { openTrainingData } from "./training_data.ts";
import { buildModel } from "./build_model.ts";

/** What a run holds that `teardownRun` gives back. */
export interface RunResources {
  device: Device;
  /** All ranks (null on one rank, and once aborted). */
  world: Communicator | null;
  /** The sequence-parallel attention (sp > 1 only). */
  attention: SequenceAttention | undefined;
  model: DecoderModel;
  /** A small device buffer for the sums over ranks (token counts, losses, barriers). */
  scratch: DeviceBuffer;
  /** Rank 0's hold on the output folder (null on the other ranks). */
  lock: OutputLock | null;
  /** metrics.jsonl and TensorBoard (null until opened). */
  report: RunReport | null;
}

/** A run ready to train: everything the loop and a step read. */
export interface Run extends RunResources {
  /** The resolved options. */
  options: TrainOptions;
  worldSize: number;
  rank: number;
  /** Rank 0: the rank that logs and writes the shared files. */
  isMain: boolean;
  /** Human-readable lines (rank 0 only unless the caller's hook says otherwise). */
  log: (line: string) => void;
  /** This rank's place in dp x sp, and how a batch is sliced for it. */
  parallel: ParallelLayout;
  /** How windows split into documents (`--attention-mask document`; undefined: causal). */
  documents: DocumentSplit | undefined;
  /** What `--model` resolved to. */
  source: ModelSource;
  /** The tokenizer of text data (undefined for synthetic and .npy token data). */
  tokenizer: Tokenizer | undefined;
  /** The training windows (without a held-out validation split). */
  dataset: Dataset;
  /** The validation windows (null without validation data). */
  evaluation: Dataset | null;
  /** Windows of one optimizer step on one data-parallel group (batch x accumulation). */
  windowsPerStep: number;
  stepsPerEpoch: number;
  /** Optimizer steps of the whole run (including those before a resume). */
  totalSteps: number;
  warmupSteps: number;
  /** Training tokens of one optimizer step, all data-parallel groups together. */
  tokensPerStep: number;
  /** Device bytes free before the run allocated, and the bytes its plan allocates. */
  memory: { freeBefore: number; planned: number };
  report: RunReport;
  /** The id of this run's output folder (run.json), which its checkpoints carry. */
  runId: string;
  /** This rank's optimizer file name inside a checkpoint. */
  optimizerFile: string;
  /** A collective that returns once every rank reached it. */
  barrier: () => Promise<void>;
  /** The checkpoint this run resumed from (null for a fresh run). */
  resumeDir: string | null;
  /** The first step to run (the resumed checkpoint's step, else 0). */
  startStep: number;
  /** Logged steps so far (a resumed checkpoint's history first); the loop appends. */
  history: StepMetrics[];
  /** Evaluations so far (a resumed checkpoint's history first); the loop appends. */
  evals: EvalMetrics[];
  /** DISTFLASH_DEBUG_GRADS=1: log per-unit gradient norms each step, to diagnose divergence. */
  debugGrads: boolean;
}

/**
 * Builds the run of resolved options `o` on this rank (WORLD_SIZE and RANK from the environment).
 * Every check that needs no device comes before the device is opened. Throws on bad options,
 * data or a run that does not fit; past the memory check, a failure gives back what was taken.
 * @param noEffect notes on options that have no effect, logged first
 * @param logHook where human-readable lines go (default: stderr on rank 0)
 */
export async function setupRun(
  o: TrainOptions,
  noEffect: readonly string[],
  logHook?: (line: string) => void,
): Promise<Run> {
  const worldSize = Number(Deno.env.get("WORLD_SIZE") ?? 1);
  const envRank = Number(Deno.env.get("RANK") ?? 0);
  if (o.nprocPerNode > 1 && worldSize <= 1) {
    throw new Error(
      `--nproc-per-node ${o.nprocPerNode}: start multi-rank runs through the command line ` +
        "(distflash train --nproc-per-node N ...), which launches one process per rank",
    );
  }
  // An explicit --device cuda without a usable GPU fails at once, before any data is read.
  if (o.device === "cuda") openBackend("cuda").close();
  // The checkpoint's content is verified once: by the launcher, else by rank 0.
  const { parallel, source, outputPlan, resumeState, resumeNotes } = await checkRun(
    o,
    worldSize,
    envRank,
    envRank === 0 && !isLaunchedRank(),
  );
  const { sp, dp, fullShard } = parallel;
  const isMain = envRank === 0;
  const log = logHook ?? ((line: string) => isMain && console.error(line));
  for (const note of noEffect) log(`note: ${note}`);
  if (o.fsdp && worldSize === 1) log(`note: --fsdp "${o.fsdp}" has no effect on a single device`);

  const cfg = source.config;
  for (const note of [...outputPlan.notes, ...resumeNotes]) log(`note: ${note}`);
  const resumeDir = outputPlan.resumeDir;
  // checkRun read resumeState where the files are now: a save that rank 0's recovery will rename
  // is not in place yet.
  const L = o.modelMaxLength;
  if (o.attentionHeadGroups > 1 && sp === 1) {
    log("note: --attention-head-groups applies to sequence-parallel attention (sp > 1): no effect");
  }
  if (L > cfg.maxPositionEmbeddings) {
    log(
      `note: --model-max-length ${L} exceeds the model's max_position_embeddings ` +
        `(${cfg.maxPositionEmbeddings}); RoPE extrapolates beyond it`,
    );
  }
  const data = await openTrainingData(o, source, parallel, log);
  const { tokenizer, dataset, evaluation, windowsPerStep, stepsPerEpoch, totalSteps } = data;

  if (resumeState && resumeState.global_step > totalSteps) {
    throw new Error(
      `--resume-from-checkpoint ${resumeDir}: its step ${resumeState.global_step} is past this ` +
        `run's ${totalSteps} steps; raise --max-steps or --num-train-epochs`,
    );
  }

  const { device, world, attention, model, memory } = await buildModel(
    o,
    worldSize,
    parallel,
    source,
    data,
    log,
  );
  const stats = device.alloc(64);
  let lock: OutputLock | null = null;

  try {
    // A collective that returns once every rank reached it (the checkpoint saves' barrier).
    const barrier = async () => {
      if (world) await allReduceNumber(world, stats, device, 0);
    };
    // Rank 0 takes the output folder (lock, run.json); the others read the run id it wrote.
    if (isMain) {
      lock = claimOutputDir(o.outputDir, outputPlan, o.overwriteOutputDir, log);
      for (const line of await recoverInterruptedSaves(o.outputDir, lock.runId)) {
        log(`note: ${line}`);
      }
    }
    await barrier();
    const runId = lock?.runId ?? outputRunId(o.outputDir);
    const optimizerFile = optimizerFileName(envRank, worldSize, fullShard);
    let startStep = 0;
    let history: StepMetrics[] = [], evals: EvalMetrics[] = [];
    if (resumeDir) {
      await loadWeights(model, resumeDir);
      await loadOptimizer(model, join(resumeDir, optimizerFile));
      startStep = resumeState!.global_step;
      const past = upgradeLogHistory<StepMetrics | EvalMetrics>(resumeState!.log_history);
      history = past.filter((e): e is StepMetrics => !("eval_loss" in e));
      evals = past.filter((e): e is EvalMetrics => "eval_loss" in e);
      log(`resumed from ${resumeDir} at step ${startStep}`);
    } else if (source.dir) {
      await loadWeights(model, source.dir);
    } else {
      initRandom(model, o.seed);
    }

    if (isMain) await saveTrainingArgs(o.outputDir, o);
    // A resumed run's metrics are the checkpoint's history: lines logged after it are dropped.
    // So are the TensorBoard event files (whether or not this run writes one): TensorBoard would
    // otherwise show the dead run's later steps beside the resumed ones.
    if (isMain && resumeDir) {
      await writeTextSynced(
        join(o.outputDir, "metrics.jsonl"),
        logHistory(history, evals).map((m) => JSON.stringify(m) + "\n").join(""),
      );
      for (const path of await cutBackEventFiles(join(o.outputDir, "runs"), startStep)) {
        log(`note: ${path}: events after step ${startStep} removed (the resumed run writes them)`);
      }
    }
    const report = await RunReport.open(o.outputDir, {
      active: isMain,
      fresh: !resumeDir,
      tensorboard: reportsToTensorBoard(o),
    });
    return {
      options: o,
      worldSize,
      rank: envRank,
      isMain,
      log,
      parallel,
      documents: documentSplit(o.attentionMask, source.config.bosTokenId),
      source,
      tokenizer,
      dataset,
      evaluation,
      windowsPerStep,
      stepsPerEpoch,
      totalSteps,
      warmupSteps: data.warmupSteps,
      tokensPerStep: windowsPerStep * L * dp, // all data-parallel groups together
      memory,
      device,
      world,
      attention,
      model,
      scratch: stats,
      lock,
      report,
      runId,
      optimizerFile,
      barrier,
      resumeDir,
      startStep,
      history,
      evals,
      debugGrads: Deno.env.get("DISTFLASH_DEBUG_GRADS") === "1",
    };
  } catch (error) {
    world?.abort(); // peers learn at once instead of waiting for a timeout
    await teardownRun({
      device,
      world: null,
      attention,
      model,
      scratch: stats,
      lock,
      report: null,
    });
    throw error;
  }
}

/** After a failure on this rank: tells the other ranks at once instead of leaving them to time out. */
export function abortRun(run: RunResources): void {
  run.world?.abort();
  run.world = null;
}

/** Gives back what a run holds: the report, the output folder, device memory, the ranks, the device. */
export async function teardownRun(run: RunResources): Promise<void> {
  run.report?.close();
  run.lock?.release();
  run.scratch.free();
  await run.model.params.settle().catch(() => {}); // no host thread may outlive the buffers
  run.model.free();
  run.attention?.free();
  await run.world?.close();
  run.device.close();
}
