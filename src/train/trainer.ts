/**
 * The training loop on one device: options in, checkpoints and metrics.jsonl out.
 *
 * One optimizer step = gradientAccumulationSteps micro-batches of perDeviceTrainBatchSize
 * sequences; the loss is the mean over every labelled token of the step, so the gradient is the
 * same whatever the split into micro-batches.
 */
import { existsSync, readdirSync } from "node:fs";
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
import { resolveTrainOptions, type TrainOptions } from "./options.ts";
import { Progress } from "./progress.ts";

/** One line of metrics.jsonl. */
export interface StepMetrics {
  step: number;
  epoch: number;
  /** Mean loss over the step's labelled tokens, before the step's update. */
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  /** Device memory held by the memory plan, bytes. */
  memory_bytes: number;
  elapsed_s: number;
}

export interface TrainResult {
  steps: number;
  finalLoss: number;
  metrics: StepMetrics[];
  outputDir: string;
}

export interface TrainHooks {
  /** Called with every logged step (after it is written to metrics.jsonl). */
  onLog?: (m: StepMetrics) => void;
  /** Where human-readable lines go (default: stderr). */
  log?: (line: string) => void;
}

interface TrainerState {
  global_step: number;
  epoch: number;
  seed: number;
  model: string;
  log_history: StepMetrics[];
}

function latestCheckpoint(outputDir: string): string | null {
  if (!existsSync(outputDir)) return null;
  const steps = readdirSync(outputDir)
    .map((name) => /^checkpoint-(\d+)$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  return steps.length ? join(outputDir, `checkpoint-${steps.at(-1)}`) : null;
}

async function pruneCheckpoints(outputDir: string, keep: number): Promise<void> {
  if (keep <= 0) return;
  const steps = readdirSync(outputDir)
    .map((name) => /^checkpoint-(\d+)$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  for (const step of steps.slice(0, Math.max(0, steps.length - keep))) {
    await Deno.remove(join(outputDir, `checkpoint-${step}`), { recursive: true });
  }
}

/** Trains as `distflash train` does. Throws on bad options before any device work. */
export async function train(
  input: Partial<Record<keyof TrainOptions, unknown>>,
  hooks: TrainHooks = {},
): Promise<TrainResult> {
  const { options: o, noEffect } = resolveTrainOptions(input);
  const log = hooks.log ?? ((line: string) => console.error(line));
  for (const flag of noEffect) log(`note: ${flag} is accepted for compatibility and has no effect`);
  if (o.fsdp) log(`note: --fsdp "${o.fsdp}" has no effect on a single device`);

  // Everything that can be checked without a device comes first.
  const source = await resolveModel(o.model);
  const cfg = source.config;
  const L = o.modelMaxLength;
  if (L > cfg.maxPositionEmbeddings) {
    log(
      `note: --model-max-length ${L} exceeds the model's max_position_embeddings ` +
        `(${cfg.maxPositionEmbeddings}); RoPE extrapolates beyond it`,
    );
  }
  if (o.dataPath && !existsSync(o.dataPath)) {
    throw new Error(`--data-path ${o.dataPath}: no such file or folder`);
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
  const dataset: Dataset = await openDataset({
    dataPath: o.dataPath,
    synthetic: o.synthetic,
    tokenizer,
    vocabSize: cfg.vocabSize,
    seqLen: L,
    textField: o.textField,
    seed: o.seed,
  });
  if (dataset.stats.maxTokenId >= cfg.vocabSize) {
    throw new Error(
      `--data-path: token id ${dataset.stats.maxTokenId} is outside the model's vocabulary (${cfg.vocabSize})`,
    );
  }
  const B = o.perDeviceTrainBatchSize, accum = o.gradientAccumulationSteps;
  const windowsPerStep = B * accum;
  const stepsPerEpoch = Math.floor(dataset.numWindows / windowsPerStep);
  if (stepsPerEpoch < 1) {
    throw new Error(
      `--data-path holds ${dataset.numWindows} sequences of ${L + 1} tokens, fewer than one step ` +
        `needs (${windowsPerStep} = batch ${B} x accumulation ${accum})`,
    );
  }
  const totalSteps = o.maxSteps > 0 ? o.maxSteps : Math.ceil(o.numTrainEpochs * stepsPerEpoch);
  const warmup = warmupStepsFor(totalSteps, o.warmupSteps, o.warmupRatio);

  let resumeDir: string | null = null;
  if (o.resumeFromCheckpoint) {
    resumeDir = o.resumeFromCheckpoint === "last"
      ? latestCheckpoint(o.outputDir)
      : o.resumeFromCheckpoint;
    if (!resumeDir || !existsSync(join(resumeDir, "trainer_state.json"))) {
      throw new Error(
        `--resume-from-checkpoint ${o.resumeFromCheckpoint}: no checkpoint with trainer_state.json found`,
      );
    }
  }

  // The device and the memory plan.
  const device = openBackend(o.device);
  const dtype = o.bf16 ? DType.bf16 : DType.f32;
  const model = new LlamaModel(device, cfg, {
    dtype,
    batch: B,
    seqLen: L,
    vocabChunk: o.vocabChunk,
  });
  const props = device.props(0);
  log(
    `distflash train: ${source.name} (${(model.layout.count / 1e6).toFixed(1)}M parameters) on ` +
      `${device.backend} (${props.name}), ${
        o.bf16 ? "bf16" : "fp32"
      }, ${B}x${L} tokens x ${accum} ` +
      `accumulation, ${totalSteps} steps (${stepsPerEpoch} per epoch), ${dataset.describe()}`,
  );
  const totals = model.plan.totals();
  log(
    `memory plan: ${totals.map((t) => `${t.kind} ${formatBytes(t.bytes)}`).join(", ")}; total ` +
      formatBytes(model.plan.totalBytes),
  );
  const free = device.memInfo().free;
  if (model.plan.totalBytes > free) {
    throw new Error(
      `the run needs ${formatBytes(model.plan.totalBytes)} but the device has ${
        formatBytes(free)
      } free; ` +
        `lower --model-max-length or --per-device-train-batch-size`,
    );
  }
  model.allocate();

  try {
    let startStep = 0;
    let history: StepMetrics[] = [];
    if (resumeDir) {
      await loadWeights(model, resumeDir);
      await loadOptimizer(model, join(resumeDir, "optimizer.safetensors"));
      const state = JSON.parse(
        await Deno.readTextFile(join(resumeDir, "trainer_state.json")),
      ) as TrainerState;
      startStep = state.global_step;
      history = state.log_history;
      log(`resumed from ${resumeDir} at step ${startStep}`);
    } else if (source.dir) {
      await loadWeights(model, source.dir);
    } else {
      initRandom(model, o.seed);
    }

    await Deno.mkdir(o.outputDir, { recursive: true });
    const metricsPath = join(o.outputDir, "metrics.jsonl");
    if (!resumeDir) await Deno.writeTextFile(metricsPath, "");
    const saveDtype = o.bf16 ? "bfloat16" : "float32";

    const save = async (dir: string, step: number, withOptimizer: boolean) => {
      await saveModel(model, dir, { dtype: saveDtype, tokenizerFrom: source.dir });
      if (withOptimizer) {
        await saveOptimizer(model, join(dir, "optimizer.safetensors"));
        const state: TrainerState = {
          global_step: step,
          epoch: step / stepsPerEpoch,
          seed: o.seed,
          model: o.model,
          log_history: history,
        };
        await Deno.writeTextFile(join(dir, "trainer_state.json"), JSON.stringify(state, null, 2));
      }
    };

    const progress = new Progress(totalSteps, startStep, log);
    let order: Uint32Array | null = null, orderEpoch = -1;
    const tokensPerStep = windowsPerStep * L;
    let windowStart = performance.now(), windowTokens = 0, lastLoss = NaN;
    const t0 = performance.now();

    for (let step = startStep; step < totalSteps; step++) {
      // The step's micro-batches, in the epoch's shuffled order.
      const epoch = Math.floor(step / stepsPerEpoch);
      if (epoch !== orderEpoch) {
        order = dataset.indices({ epoch, seed: o.seed });
        orderEpoch = epoch;
      }
      const first = (step % stepsPerEpoch) * windowsPerStep;
      const micro = [];
      let labelled = 0;
      for (let a = 0; a < accum; a++) {
        const batch = dataset.batch(order!.subarray(first + a * B, first + (a + 1) * B));
        for (const label of batch.labels) if (label >= 0) labelled++;
        micro.push(batch);
      }
      if (labelled === 0) throw new Error(`step ${step + 1}: the batch has no labelled token`);

      model.zeroGrads();
      let lossSum = 0;
      for (const batch of micro) {
        model.setBatch(batch.inputs, batch.labels);
        await model.forward();
        lossSum += model.lossSum();
        await model.backward(1 / labelled);
      }
      const loss = lossSum / labelled;
      if (!Number.isFinite(loss)) {
        throw new Error(
          `step ${step + 1}: the loss is ${loss}; stopping (last saved checkpoint is intact)`,
        );
      }
      const gradNorm = model.gradNorm();
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
      windowTokens += tokensPerStep;
      const done = step + 1;

      if (done % o.loggingSteps === 0 || done === totalSteps || done === startStep + 1) {
        const now = performance.now();
        const m: StepMetrics = {
          step: done,
          epoch: done / stepsPerEpoch,
          loss,
          lr,
          grad_norm: gradNorm,
          tokens_per_s: windowTokens / ((now - windowStart) / 1000),
          memory_bytes: model.plan.totalBytes,
          elapsed_s: (now - t0) / 1000,
        };
        windowStart = now;
        windowTokens = 0;
        history.push(m);
        await Deno.writeTextFile(metricsPath, JSON.stringify(m) + "\n", { append: true });
        progress.log(m);
        hooks.onLog?.(m);
      }
      progress.tick(done, loss);

      const epochEnd = done % stepsPerEpoch === 0;
      const dueSave = (o.saveStrategy === "steps" && done % o.saveSteps === 0) ||
        (o.saveStrategy === "epoch" && epochEnd);
      if (dueSave && done < totalSteps) {
        await save(join(o.outputDir, `checkpoint-${done}`), done, true);
        await pruneCheckpoints(o.outputDir, o.saveTotalLimit);
      }
    }
    progress.finish();
    if (o.saveStrategy !== "no") {
      await save(join(o.outputDir, `checkpoint-${totalSteps}`), totalSteps, true);
      await pruneCheckpoints(o.outputDir, o.saveTotalLimit);
    }
    await save(o.outputDir, totalSteps, false);
    log(`saved the final model to ${o.outputDir}`);
    return { steps: totalSteps, finalLoss: lastLoss, metrics: history, outputDir: o.outputDir };
  } finally {
    model.free();
    device.close();
  }
}
