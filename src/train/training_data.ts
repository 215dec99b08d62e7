/**
 * A run's training data: the tokenizer (text data only), the training and evaluation windows
 * checked against the model's vocabulary, and the step counts they give.
 */
import { modelTokenizer, openDataset, type Tokenizer } from "../data/mod.ts";
import type { Dataset } from "../data/mod.ts";
import type { ModelSource } from "../model/hf.ts";
import type { ParallelLayout } from "../parallel/layout.ts";
import { warmupStepsFor } from "./lr.ts";
import type { TrainOptions } from "./options.ts";
import { tokenizingProgress } from "./progress.ts";
import { splitEvalData } from "./eval.ts";

/** The training and evaluation data of a run, and the step counts they give. */
export interface TrainingData {
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
export async function openTrainingData(
  o: TrainOptions,
  source: ModelSource,
  parallel: ParallelLayout,
  log: (line: string) => void,
): Promise<TrainingData> {
  const cfg = source.config, L = o.modelMaxLength, dp = parallel.dp;
  let tokenizer: Tokenizer | undefined;
  if (!o.synthetic && !o.dataPath!.endsWith(".npy")) {
    tokenizer = await modelTokenizer(source.dir);
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
