/**
 * The training loop on one device: options in, checkpoints and metrics.jsonl out.
 *
 * One optimizer step = gradientAccumulationSteps micro-batches of perDeviceTrainBatchSize
 * sequences; the loss is the mean over every labelled token of the step, so the gradient is the
 * same whatever the split into micro-batches.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ByteTokenizer, loadTokenizer, openDataset, type Tokenizer } from "../data/mod.ts";
import type { Dataset } from "../data/mod.ts";
import { openBackend } from "../runtime/info.ts";
import { formatBytes } from "../runtime/memory.ts";
import { DType } from "../runtime/ops.ts";
import { LlamaModel } from "../model/llama.ts";
import {
  initRandom,
  loadOptimizer,
  loadWeights,
  resolveModel,
  saveModel,
  saveOptimizer,
} from "../model/hf.ts";
import { lrMultiplier, warmupStepsFor } from "./lr.ts";
import { reportsToTensorBoard, resolveTrainOptions, type TrainOptions } from "./options.ts";
import { Progress, StepProgress } from "./progress.ts";
import type { StepMetrics } from "./metrics.ts";
import { formatPlan, hostAvailableBytes, modelOptions, WORKSPACE_ALLOWANCE_BYTES } from "./plan.ts";
import { initDistributed } from "../comm/env.ts";
import { ParallelLayout } from "../parallel/layout.ts";
import { allReduceNumber } from "./ranks.ts";
import { type EvalMetrics, evaluate, evaluationDue, splitEvalData } from "./eval.ts";
import { RunReport } from "./report.ts";
import { saveTrainingArgs, trainerState, upgradeLogHistory } from "./state.ts";
import {
  buildSequenceAttention,
  checkHeadGroups,
  type SequenceAttention,
} from "../parallel/sequence_attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { SelfComm } from "../comm/self_comm.ts";
import { selectAttentionKernel } from "../runtime/attention_kernel.ts";
import {
  CheckpointSaver,
  optimizerFileName,
  pruneCheckpoints,
  readTrainerState,
  recoverInterruptedSaves,
  TRAINER_STATE_FILE,
  writeTextSynced,
} from "./checkpoint.ts";
import {
  checkOutputDir,
  claimOutputDir,
  type OutputDirPlan,
  type OutputLock,
  outputRunId,
} from "./output_dir.ts";

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

/**
 * The checks of a run of `worldSize` ranks that need no device and read no data: the
 * sequence-parallel split, the model, the head groups, the data path, the output folder (see
 * output_dir.ts). The launcher calls it before starting any rank; every rank calls it again.
 */
export async function checkRun(o: TrainOptions, worldSize: number, rank = 0): Promise<{
  parallel: ParallelLayout;
  source: Awaited<ReturnType<typeof resolveModel>>;
  outputPlan: OutputDirPlan;
}> {
  const parallel = new ParallelLayout(worldSize, rank, o);
  parallel.checkLength(o.modelMaxLength);
  const source = await resolveModel(o.model);
  checkHeadGroups(source.config, o.attentionHeadGroups);
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

/** Trains as `distflash train` does. Throws on bad options before any device work. */
export async function train(
  input: Partial<Record<keyof TrainOptions, unknown>>,
  hooks: TrainHooks = {},
): Promise<TrainResult> {
  const { options: o, noEffect } = resolveTrainOptions(input);
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
  const log = hooks.log ?? ((line: string) => isMain && console.error(line));
  for (const note of noEffect) log(`note: ${note}`);
  if (o.fsdp && worldSize === 1) log(`note: --fsdp "${o.fsdp}" has no effect on a single device`);

  const cfg = source.config;
  for (const note of outputPlan.notes) log(`note: ${note}`);
  const resumeDir = outputPlan.resumeDir;
  const resumeState = resumeDir ? readTrainerState(resumeDir) : null;
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

  if (resumeState && resumeState.global_step > totalSteps) {
    throw new Error(
      `--resume-from-checkpoint ${resumeDir}: its step ${resumeState.global_step} is past this ` +
        `run's ${totalSteps} steps; raise --max-steps or --num-train-epochs`,
    );
  }

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
  const hostNeeded = model.hostBytes * o.nprocPerNode, hostFree = hostAvailableBytes();
  if (needed > free || hostNeeded > hostFree) {
    // The planner's report names the options that would make the run fit.
    const host = { bytes: hostFree, source: "available on this host" };
    const { text } = formatPlan(cfg, o, worldSize, free, "free on this device", host);
    const where = needed > free ? "this device's memory" : "this host's memory";
    throw new Error(`the run does not fit in ${where}\n${text}`);
  }
  attention?.allocate();
  model.allocate();
  let removeInterrupt = () => {};
  let closeReport = (): string | null => null;
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
    closeReport = () => report.close();
    const saveDtype = o.bf16 ? "bfloat16" : "float32";

    // Replicated: rank 0 writes everything. Sharded: every rank takes part in gathering the
    // weights (rank 0 writes them) and writes its own optimizer shard.
    const writeModel = (dir: string) =>
      saveModel(model, dir, {
        dtype: saveDtype,
        tokenizerFrom: source.dir,
        writer: isMain,
        byteTokenizer: tokenizer instanceof ByteTokenizer,
      });
    const checkpoints = new CheckpointSaver({
      outputDir: o.outputDir,
      runId,
      rank: envRank,
      worldSize,
      sharded: fullShard,
      barrier,
    });
    const save = async (step: number): Promise<string> => {
      await model.params.settle(); // the offloaded optimizer's last update has landed
      const dir = await checkpoints.save(step, async (dir) => {
        if (!isMain && !fullShard) return;
        await writeModel(dir);
        await saveOptimizer(model, join(dir, optimizerFile));
        if (!isMain) return;
        const numbers = {
          globalStep: step,
          maxSteps: totalSteps,
          stepsPerEpoch,
          tokensSeen: step * tokensPerStep,
        };
        const state = trainerState(o, numbers, logHistory(history, evals));
        await writeTextSynced(join(dir, TRAINER_STATE_FILE), JSON.stringify(state, null, 2));
      });
      if (isMain) {
        for (const name of await pruneCheckpoints(o.outputDir, runId, o.saveTotalLimit)) {
          log(`--save-total-limit ${o.saveTotalLimit}: deleted ${name}`);
        }
      }
      return dir;
    };

    // Ctrl-C or SIGTERM (what Slurm and Kubernetes send before a kill): finish the step, save a
    // checkpoint on every rank, stop; a second signal quits at once. The ranks decide together
    // at each step boundary, so a signal to one rank stops them all at the same step. Ranks
    // under the launcher leave SIGINT (the terminal's Ctrl-C reaches them too) to the launcher,
    // which forwards it as SIGTERM.
    let stopSignal: "SIGINT" | "SIGTERM" | null = null;
    const launched = Deno.env.get("DISTFLASH_LAUNCHED") === "1";
    const listeners = new Map<Deno.Signal, () => void>();
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const quitCode = signal === "SIGINT" ? 130 : 143;
      const handler = launched && signal === "SIGINT" ? () => {} : () => {
        if (stopSignal) Deno.exit(quitCode);
        stopSignal = signal;
        log(
          `\n${signal}: finishing this step and saving a checkpoint (another ${signal} quits at once)`,
        );
      };
      Deno.addSignalListener(signal, handler);
      listeners.set(signal, handler);
    }
    removeInterrupt = () => {
      for (const [signal, handler] of listeners) Deno.removeSignalListener(signal, handler);
    };

    const progress = new Progress(totalSteps, startStep, log);
    const evalPlacement = {
      device,
      model,
      world,
      scratch: stats,
      batch: B,
      parallel,
    };
    const within = new StepProgress(
      cfg.numLayers,
      hooks.withinStepSeconds ?? 30,
      (line) => progress.line(line),
    );
    if (isMain) model.onLayer = (phase, layer) => within.layer(phase, layer);
    // Per-unit gradient norms each step (embedding, layers, head), for diagnosing divergence.
    const debugGrads = Deno.env.get("DISTFLASH_DEBUG_GRADS") === "1";
    let order: Uint32Array | null = null, orderEpoch = -1;
    const tokensPerStep = windowsPerStep * L * dp; // all data-parallel groups together
    let windowStart = performance.now(), windowTokens = 0, lastLoss = NaN;
    const t0 = performance.now();

    for (let step = startStep; step < totalSteps; step++) {
      // The step's micro-batches, in the epoch's shuffled order.
      const epoch = Math.floor(step / stepsPerEpoch);
      if (epoch !== orderEpoch) {
        order = dataset.indices({ epoch, seed: o.seed, rank: parallel.dpRank, worldSize: dp });
        orderEpoch = epoch;
      }
      const first = (step % stepsPerEpoch) * windowsPerStep;
      const micro = [];
      let labelled = 0;
      for (let a = 0; a < accum; a++) {
        const batch = parallel.sliceBatch(
          dataset.batch(order!.subarray(first + a * B, first + (a + 1) * B)),
          B,
          L,
        );
        for (const label of batch.labels) if (label >= 0) labelled++;
        micro.push(batch);
      }
      // The loss is the mean over every labelled token of the step on all ranks.
      if (world) labelled = await allReduceNumber(world, stats, device, labelled);
      if (labelled === 0) throw new Error(`step ${step + 1}: the batch has no labelled token`);

      model.zeroGrads();
      let lossSum = 0;
      for (const [i, batch] of micro.entries()) {
        within.begin(step + 1, totalSteps, i, micro.length);
        model.setBatch(batch.inputs, batch.labels, batch.positions);
        await model.forward();
        lossSum += model.lossSum();
        await model.backward(1 / labelled);
      }
      // The parameter store's collectives (its own stream, on `world`) land before this one.
      await model.params.finishGrads();
      if (world) {
        lossSum = await allReduceNumber(world, stats, device, lossSum);
      }
      const loss = lossSum / labelled;
      if (!Number.isFinite(loss)) {
        throw new Error(
          `step ${step + 1}: the loss is ${loss}; stopping (last saved checkpoint is intact)`,
        );
      }
      const gradNorm = await model.gradNorm();
      if (debugGrads) {
        const norms = await model.params.unitGradNorms();
        log(
          `step ${step + 1} unit gradient norms: ${norms.map((n) => n.toExponential(2)).join(" ")}`,
        );
      }
      const clip = o.maxGradNorm > 0 ? Math.min(1, o.maxGradNorm / (gradNorm + 1e-6)) : 1;
      const lr = o.learningRate * lrMultiplier(o.lrSchedulerType, step, totalSteps, warmup);
      model.adamwStep({
        lr,
        beta1: o.adamBeta1,
        beta2: o.adamBeta2,
        eps: o.adamEpsilon,
        weightDecay: o.weightDecay,
        step: step + 1,
        gradScale: clip,
      });
      device.synchronize();
      lastLoss = loss;
      if (step === startStep && device.backend === "cuda") {
        // The plan against what the device really lost: the check of the memory planner.
        const used = free - device.memInfo().free;
        log(
          `device memory in use after the first step: ${formatBytes(used)} (plan ${
            formatBytes(planned)
          } + library workspaces)`,
        );
      }
      windowTokens += tokensPerStep;
      const done = step + 1;

      if (done % o.loggingSteps === 0 || done === totalSteps || done === startStep + 1) {
        const now = performance.now();
        const m: StepMetrics = {
          step: done,
          epoch: done / stepsPerEpoch,
          loss,
          learning_rate: lr,
          grad_norm: gradNorm,
          tokens_per_s: windowTokens / ((now - windowStart) / 1000),
          memory_bytes: model.plan.totalBytes,
          elapsed_s: (now - t0) / 1000,
        };
        windowStart = now;
        windowTokens = 0;
        history.push(m);
        await report.step(m);
        if (isMain) progress.log(m);
        hooks.onLog?.(m);
      }
      if (evaluation && evaluationDue(o, done, totalSteps, stepsPerEpoch)) {
        const e = await evaluate(evaluation, evalPlacement, done, done / stepsPerEpoch);
        evals.push(e);
        await report.eval(e);
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
      // The stop decision, taken together: 1 per rank that saw SIGINT, 1000 per SIGTERM.
      let stop = stopSignal === null ? 0 : stopSignal === "SIGINT" ? 1 : 1000;
      if (world) stop = await allReduceNumber(world, stats, device, stop);
      if (stop > 0 && done < totalSteps) {
        progress.finish();
        const dir = saved ?? await save(done);
        throw new TrainingInterrupted(dir, done, stop >= 1000 ? "SIGTERM" : "SIGINT");
      }
    }
    progress.finish();
    if (o.saveStrategy !== "no") await save(totalSteps);
    if (o.saveFinalModel) {
      await model.params.settle();
      if (isMain || fullShard) await writeModel(o.outputDir);
      log(`saved the final model to ${o.outputDir}`);
    }
    const chart = closeReport();
    closeReport = () => null;
    if (chart) log(chart);
    return {
      steps: totalSteps,
      finalLoss: lastLoss,
      metrics: history,
      evalMetrics: evals,
      outputDir: o.outputDir,
    };
  } catch (error) {
    world?.abort(); // peers learn at once instead of waiting for a timeout
    world = null;
    throw error;
  } finally {
    removeInterrupt();
    closeReport();
    lock?.release();
    stats.free();
    await model.params.settle().catch(() => {}); // no host thread may outlive the buffers
    model.free();
    attention?.free();
    await world?.close();
    device.close();
  }
}

/**
 * Progress of tokenising large text data: a line every 5 seconds with the share done and the
 * rate (silent for data read in under 5 seconds).
 */
export function tokenizingProgress(
  log: (line: string) => void,
): (done: number, total: number) => void {
  const start = performance.now();
  let last = start;
  return (done, total) => {
    const now = performance.now();
    if (now - last < 5000 || total === 0) return;
    last = now;
    const mbPerS = done / 1e6 / ((now - start) / 1000);
    const left = mbPerS > 0 ? (total - done) / 1e6 / mbPerS : NaN;
    log(
      `tokenizing: ${(100 * done / total).toFixed(0)}% of ${(total / 1e6).toFixed(0)} MB, ` +
        `${mbPerS.toFixed(2)} MB/s, about ${Math.round(left)} s left`,
    );
  };
}

/** log_history as HF orders it: by step, a step's training entry before its evaluation. */
function logHistory(steps: StepMetrics[], evals: EvalMetrics[]): (StepMetrics | EvalMetrics)[] {
  const all: (StepMetrics | EvalMetrics)[] = [...steps, ...evals];
  return all.sort((a, b) => a.step - b.step || Number("eval_loss" in a) - Number("eval_loss" in b));
}
