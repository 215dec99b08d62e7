/**
 * From resolved options to a ready run, and back: `setupRun` checks the options, reads the data,
 * joins the ranks, builds the parallel layout, the sequence attention and the model with its
 * parameter store, checks that the run fits in memory, takes the output folder and loads the
 * weights, optimizer and history to resume from; `teardownRun` gives all of it back. The training
 * loop (trainer.ts) and one optimizer step (step.ts) read the `Run` it returns.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ByteTokenizer, loadTokenizer, openDataset, type Tokenizer } from "../data/mod.ts";
import type { Dataset } from "../data/mod.ts";
import { openBackend } from "../runtime/info.ts";
import { formatBytes } from "../runtime/memory.ts";
import { DType } from "../runtime/ops.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import { LlamaModel } from "../model/llama.ts";
import {
  initRandom,
  loadOptimizer,
  loadWeights,
  type ModelSource,
  resolveModel,
} from "../model/hf.ts";
import { warmupStepsFor } from "./lr.ts";
import type { TrainOptions } from "./options.ts";
import { reportsToTensorBoard } from "./resolve_options.ts";
import { tokenizingProgress } from "./progress.ts";
import type { StepMetrics } from "./metrics.ts";
import {
  formatPlan,
  hostAvailableBytes,
  modelOptions,
  nodeHostBytes,
  WORKSPACE_ALLOWANCE_BYTES,
} from "./plan.ts";
import { initDistributed } from "../comm/env.ts";
import { type DocumentSplit, documentSplit, ParallelLayout } from "../parallel/layout.ts";
import { allReduceNumber } from "./ranks.ts";
import { type EvalMetrics, splitEvalData } from "./eval.ts";
import { RunReport } from "./report.ts";
import { logHistory, saveTrainingArgs, upgradeLogHistory } from "./state.ts";
import {
  buildSequenceAttention,
  checkHeadGroups,
  type SequenceAttention,
} from "../parallel/sequence_attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { SelfComm } from "../comm/self_comm.ts";
import { selectAttentionKernel } from "../runtime/attention_kernel.ts";
import {
  optimizerFileName,
  readTrainerState,
  recoverInterruptedSaves,
  writeTextSynced,
} from "./checkpoint.ts";
import {
  checkOutputDir,
  claimOutputDir,
  type OutputDirPlan,
  type OutputLock,
  outputRunId,
} from "./output_dir.ts";

/** What a run holds that `teardownRun` gives back. */
export interface RunResources {
  device: Device;
  /** All ranks (null on one rank, and once aborted). */
  world: Communicator | null;
  /** The sequence-parallel attention (sp > 1 only). */
  attention: SequenceAttention | undefined;
  model: LlamaModel;
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
 * The checks of a run of `worldSize` ranks that need no device and read no data: the
 * sequence-parallel split, the model, the head groups, the data path, the output folder (see
 * output_dir.ts). The launcher calls it before starting any rank; every rank calls it again.
 */
export async function checkRun(o: TrainOptions, worldSize: number, rank = 0): Promise<{
  parallel: ParallelLayout;
  source: ModelSource;
  outputPlan: OutputDirPlan;
}> {
  const parallel = new ParallelLayout(worldSize, rank, o);
  parallel.checkLength(o.modelMaxLength);
  const source = await resolveModel(o.model);
  checkHeadGroups(source.config, o.attentionHeadGroups);
  documentSplit(o.attentionMask, source.config.bosTokenId);
  if (o.dataPath && !existsSync(o.dataPath)) {
    throw new Error(`--data-path ${o.dataPath}: no such file or folder`);
  }
  // Not the model's folder, not in use, not another run's; the checkpoint to resume.
  const outputPlan = checkOutputDir({
    outputDir: o.outputDir,
    modelDir: source.dir,
    resumeFromCheckpoint: o.resumeFromCheckpoint,
    overwriteOutputDir: o.overwriteOutputDir,
  });
  return { parallel, source, outputPlan };
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
  const { parallel, source, outputPlan } = await checkRun(o, worldSize, envRank);
  const { sp, dp, fullShard } = parallel;
  const isMain = envRank === 0;
  const log = logHook ?? ((line: string) => isMain && console.error(line));
  for (const note of noEffect) log(`note: ${note}`);
  if (o.fsdp && worldSize === 1) log(`note: --fsdp "${o.fsdp}" has no effect on a single device`);

  const cfg = source.config;
  for (const note of outputPlan.notes) log(`note: ${note}`);
  const resumeDir = outputPlan.resumeDir;
  // Read where the files are now: a save that rank 0's recovery will rename is not in place yet.
  const resumeState = resumeDir ? readTrainerState(outputPlan.resumeSource ?? resumeDir) : null;
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
    if (isMain && resumeDir) {
      await writeTextSynced(
        join(o.outputDir, "metrics.jsonl"),
        logHistory(history, evals).map((m) => JSON.stringify(m) + "\n").join(""),
      );
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

/** The training and evaluation data of a run, and the step counts they give. */
interface TrainingData {
  tokenizer: Tokenizer | undefined;
  dataset: Dataset;
  evaluation: Dataset | null;
  windowsPerStep: number;
  stepsPerEpoch: number;
  totalSteps: number;
  warmupSteps: number;
}

/**
 * The tokenizer (text data only), the training data and the evaluation data, checked against the
 * model's vocabulary, and the run's step counts (at least one step per epoch).
 */
async function openTrainingData(
  o: TrainOptions,
  source: ModelSource,
  parallel: ParallelLayout,
  log: (line: string) => void,
): Promise<TrainingData> {
  const cfg = source.config, L = o.modelMaxLength, dp = parallel.dp;
  let tokenizer: Tokenizer | undefined;
  if (!o.synthetic && !o.dataPath!.endsWith(".npy")) {
    const hasTokenizer = source.dir && existsSync(join(source.dir, "tokenizer.json"));
    tokenizer = hasTokenizer ? await loadTokenizer(source.dir!) : new ByteTokenizer();
    if (tokenizer.vocabSize > cfg.vocabSize) {
      throw new Error(
        `the tokenizer (${tokenizer.name}) has ${tokenizer.vocabSize} tokens but the model's ` +
          `vocabulary has ${cfg.vocabSize}; choose a model with a larger vocabulary`,
      );
    }
  }
  const allData: Dataset = await openDataset({
    dataPath: o.dataPath,
    synthetic: o.synthetic,
    tokenizer,
    vocabSize: cfg.vocabSize,
    seqLen: L,
    textField: o.textField,
    seed: o.seed,
    onProgress: tokenizingProgress(log),
  });
  if (allData.stats.maxTokenId >= cfg.vocabSize) {
    throw new Error(
      `--data-path: token id ${allData.stats.maxTokenId} is outside the model's vocabulary (${cfg.vocabSize})`,
    );
  }
  const { training: dataset, evaluation } = await splitEvalData(o, allData, tokenizer, log);
  if (evaluation && evaluation.stats.maxTokenId >= cfg.vocabSize) {
    throw new Error(
      `--eval-data-path: token id ${evaluation.stats.maxTokenId} is outside the model's vocabulary`,
    );
  }
  const B = o.perDeviceTrainBatchSize, accum = o.gradientAccumulationSteps;
  const windowsPerStep = B * accum;
  // Each data-parallel group reads its own windows; the sp ranks of a group share them.
  const stepsPerEpoch = Math.floor(Math.floor(dataset.numWindows / dp) / windowsPerStep);
  if (stepsPerEpoch < 1) {
    throw new Error(
      `--data-path holds ${dataset.numWindows} sequences of ${L + 1} tokens, fewer than one step ` +
        `needs (${windowsPerStep} = batch ${B} x accumulation ${accum})`,
    );
  }
  const totalSteps = o.maxSteps > 0 ? o.maxSteps : Math.ceil(o.numTrainEpochs * stepsPerEpoch);
  const warmup = warmupStepsFor(totalSteps, o.warmupSteps, o.warmupRatio);
  return {
    tokenizer,
    dataset,
    evaluation,
    windowsPerStep,
    stepsPerEpoch,
    totalSteps,
    warmupSteps: warmup,
  };
}

/**
 * Opens the device, joins the ranks (sp subgroup, sequence attention), builds the model with the
 * parameter store the layout chooses, and allocates them once the memory check passed.
 */
async function buildModel(
  o: TrainOptions,
  worldSize: number,
  parallel: ParallelLayout,
  source: ModelSource,
  data: TrainingData,
  log: (line: string) => void,
): Promise<{
  device: Device;
  world: Communicator | null;
  attention: SequenceAttention | undefined;
  model: LlamaModel;
  memory: { freeBefore: number; planned: number };
}> {
  const cfg = source.config, L = o.modelMaxLength, sp = parallel.sp;
  const B = o.perDeviceTrainBatchSize, accum = o.gradientAccumulationSteps;
  const { dataset, totalSteps, stepsPerEpoch } = data;
  // The device, the ranks and the memory plan.
  const device = openBackend(o.device);
  const attentionKernelLine = selectAttentionKernel(device, o.attentionKernel);
  const dtype = o.bf16 ? DType.bf16 : DType.f32;
  let world: Communicator | null = null, attention: SequenceAttention | undefined;
  const S = parallel.tokensPerRank(L); // tokens of a sequence on this rank
  if (worldSize > 1) {
    const ctx = await initDistributed({ backend: device.backend, device });
    world = ctx.world;
    // DistAttn gets a communicator of its own even when sp spans the world: its exchanges run on
    // its communication stream, concurrently with the parameter store's collectives over `world`
    // (on the store's stream); one communicator serves one stream at a time here.
    const spComm = await world.subgroup(parallel.spGroup());
    if (sp > 1) {
      // Allocated after the memory check below.
      attention = buildSequenceAttention(device, cfg, S, dtype, spComm, {
        layout: o.distattnLayout,
        balanced: o.distattnBalanced,
        overlap: o.distattnOverlap,
        headGroups: o.attentionHeadGroups,
      });
    }
    const how = o.distattnLayout === "zigzag"
      ? "zigzag ring"
      : `DistAttn ${o.distattnBalanced ? "balanced" : "unbalanced"}, ${
        o.distattnOverlap ? "overlapped" : "not overlapped"
      }`;
    log(
      `ranks: ${parallel.describe()}; ${how}; ${S} tokens per rank`,
    );
  }
  // The model makes no communicators: on one device, offloading shards over a world of one.
  const paramComm = world ?? (o.offloadOptimizer ? new SelfComm(device) : null);
  const params = parallel.paramStore(paramComm, o.offloadOptimizer);
  const model = new LlamaModel(device, cfg, modelOptions(o, S, params), attention);
  const props = device.props(0);
  log(
    `distflash train: ${source.name} (${(model.layout.count / 1e6).toFixed(1)}M parameters) on ` +
      `${device.backend} (${props.name}), ${
        o.bf16 ? "bf16" : "fp32"
      }, ${B}x${L} tokens x ${accum} ` +
      `accumulation, ${totalSteps} steps (${stepsPerEpoch} per epoch), ${dataset.describe()}`,
  );
  log(attentionKernelLine);
  const totals = model.plan.totals();
  if (attention) totals.push(...attention.plan.totals());
  log(
    `memory plan: ${totals.map((t) => `${t.kind} ${formatBytes(t.bytes)}`).join(", ")}; total ` +
      formatBytes(totals.reduce((a, t) => a + t.bytes, 0)),
  );
  const free = device.memInfo().free;
  // The same allowance for library workspaces (NCCL, cuBLASLt) as the plan: without it a run the
  // plan rejects got past this check and ran out of memory in its first collective.
  const planned = model.plan.totalBytes + (attention?.plan.totalBytes ?? 0);
  const needed = planned + (device.backend === "cuda" ? WORKSPACE_ALLOWANCE_BYTES : 0);
  const hostNeeded = nodeHostBytes(model.hostBytes, planned, o, device.backend);
  const hostFree = hostAvailableBytes();
  if (needed > free || hostNeeded > hostFree) {
    // The planner's report names the options that would make the run fit.
    const host = { bytes: hostFree, source: "available on this host" };
    const { text } = formatPlan(cfg, o, worldSize, free, "free on this device", host);
    const where = needed > free ? "this device's memory" : "this host's memory";
    throw new Error(`the run does not fit in ${where}\n${text}`);
  }
  attention?.allocate();
  model.allocate();
  return { device, world, attention, model, memory: { freeBefore: free, planned } };
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
